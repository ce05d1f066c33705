"""fp32 linear layers for the CPU torch runners: oneDNN with a weight reordered once at load, and below
`ONEDNN_FROM_ROWS` rows MKL's sgemm (`F.linear`) where this machine runs one row faster on MKL.

Why: on the Intel Xeons this project ran on, MKL's fp32 GEMM keeps its bandwidth up to 3 rows and loses it from 4
(a B-token verify of the embedded target's 30 layers costs 1.5-1.9x a decode at B = 4..8), while oneDNN's prepacked
GEMM stays nearly flat from 1 to 8 rows but is slower than MKL at 1 row (`scripts/bench_small_m_gemm.py`,
results/small_m_gemm.md). On an AMD EPYC, MKL is slower at every row count (its 1-row stack 45.5 ms against
oneDNN's 26.3 ms, results/small_m_gemm_epyc.md). So `onednn_from_rows` times both at one row once per process
(~0.1 s) and `PrepackedLinear` sends 1-3 rows (decoding) to oneDNN when it is clearly faster; verify and drafter
blocks take oneDNN. Both are fp32 GEMMs with their own summation orders, as MKL's 1-row and 4-row kernels
already are; outputs stay equal to plain decoding (tests). Costs memory: the reordered copy doubles each linear
weight.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dflash_trt.timing import timed_rounds

ONEDNN_FROM_ROWS = 4
ONEDNN_MARGIN = 0.8  # oneDNN takes 1-3 rows when it runs one row in under this fraction of MKL's time


def available() -> bool:
    """True when this torch build has oneDNN (mkldnn) with its prepacked linear ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PrepackedLinear(nn.Module):
    """An fp32 `nn.Linear` (same weight, bias and forward hooks) with a oneDNN-reordered copy of its weight."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer(
            "packed", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), ONEDNN_FROM_ROWS), False
        )
        self._forward_hooks = linear._forward_hooks  # tensor-parallel collectives hang here
        self.from_rows = onednn_from_rows()

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] < self.from_rows:
            out = F.linear(rows, self.weight, self.bias)
        else:
            out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)

    def unpacked(self) -> nn.Linear:
        """A plain `nn.Linear` on the same weight and bias (for a copy in another dtype)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


@functools.cache
@torch.inference_mode()
def onednn_from_rows(rounds: int = 3) -> int:
    """This machine's rows from which oneDNN runs, measured once per process on a fixed workload (one row through 4
    distinct 4096 x 1024 fp32 weights, 64 MB streamed from memory as in a forward pass; fastest of `rounds`, the two
    kernels interleaved): 1 when oneDNN takes under `ONEDNN_MARGIN` of MKL's time, else `ONEDNN_FROM_ROWS`. One
    answer for every model of the process; the margin keeps a machine where both run alike on one kernel from one
    process to the next."""
    weights = [torch.full((4096, 1024), 0.01 * (i + 1)) for i in range(4)]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, ONEDNN_FROM_ROWS) for w in weights]
    x = torch.ones(1, 1024)
    paths = {
        "mkl": lambda: [F.linear(x, w) for w in weights],
        "onednn": lambda: [torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "") for w in packed],
    }
    best = {name: min(ms) for name, ms in timed_rounds(paths, rounds).items()}
    return 1 if best["onednn"] < ONEDNN_MARGIN * best["mkl"] else ONEDNN_FROM_ROWS


def prepack_linears(model: nn.Module) -> nn.Module:
    """Replace every plain fp32 CPU `nn.Linear` of `model` (in place) by a `PrepackedLinear`; subclasses (the
    vocab-parallel head) and other dtypes are left as they are. For inference only: no gradients flow through."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu":
                setattr(module, name, PrepackedLinear(child))
    return model
