"""fp32 linear layers for the CPU torch runners: oneDNN with a weight reordered once at load, and below
`ONEDNN_FROM_ROWS` rows MKL's sgemm (`F.linear`) where this machine runs one row faster on MKL.

Why: on the Intel Xeons this project ran on, MKL's fp32 GEMM keeps its bandwidth up to 3 rows and loses it from 4
(a B-token verify of the embedded target's 30 layers costs 1.5-1.9x a decode at B = 4..8), while oneDNN's prepacked
GEMM stays nearly flat from 1 to 8 rows but is slower than MKL at 1 row (`scripts/bench_small_m_gemm.py`,
results/small_m_gemm.md). On an AMD EPYC, MKL is slower at every row count (its 1-row stack 45.5 ms against
oneDNN's 26.3 ms, results/small_m_gemm_epyc.md). So `prepack_linears` times both at one row on the model's largest
layer shape when it loads (~0.1 s) and sends 1-3 rows (decoding) to the faster; verify and drafter blocks take
oneDNN. Both are fp32 GEMMs with their own summation orders, as MKL's 1-row and 4-row kernels already are; outputs
stay equal to plain decoding (tests). Costs memory: the reordered copy doubles each linear weight.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ONEDNN_FROM_ROWS = 4


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
        self.from_rows = ONEDNN_FROM_ROWS  # rows from which oneDNN runs (`prepack_linears` measures it)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = self.mkl(rows) if rows.shape[0] < self.from_rows else self.onednn(rows)
        return out.view(*x.shape[:-1], self.out_features)

    def mkl(self, rows: Tensor) -> Tensor:
        return F.linear(rows, self.weight, self.bias)

    def onednn(self, rows: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")


@torch.inference_mode()
def onednn_from_rows(linears: list[PrepackedLinear], rounds: int = 3) -> int:
    """1 when oneDNN runs one row through `linears` faster than MKL on this machine (fastest of `rounds`, the two
    interleaved; distinct weights, streamed from memory as in a forward pass), else `ONEDNN_FROM_ROWS`."""
    x = torch.zeros(1, linears[0].in_features)
    best = {"mkl": float("inf"), "onednn": float("inf")}
    for i in range(rounds + 1):
        for path in best:
            start = time.perf_counter()
            for linear in linears:
                getattr(linear, path)(x)
            if i:  # the first round warms up
                best[path] = min(best[path], time.perf_counter() - start)
    return 1 if best["onednn"] < best["mkl"] else ONEDNN_FROM_ROWS


def prepack_linears(model: nn.Module) -> nn.Module:
    """Replace every plain fp32 CPU `nn.Linear` of `model` (in place) by a `PrepackedLinear` that runs 1-3 rows on
    the faster of MKL and oneDNN, timed on the model's largest layer shape; subclasses (the vocab-parallel head) and
    other dtypes are left as they are. For inference only: no gradients flow through."""
    packed = []
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu":
                packed.append(PrepackedLinear(child))
                setattr(module, name, packed[-1])
    if packed:
        largest = max(p.weight.shape for p in packed)
        from_rows = onednn_from_rows([p for p in packed if p.weight.shape == largest])
        for p in packed:
            p.from_rows = from_rows
    return model
