"""fp32 linear layers for the CPU torch runners: MKL's sgemm (`F.linear`) below `ONEDNN_FROM_ROWS` rows, oneDNN
with a weight reordered once at load from there on.

Why: on this project's CPUs MKL's fp32 GEMM keeps its bandwidth up to 3 rows and loses it from 4 (a B-token verify
of the embedded target's 30 layers costs 1.5-1.9x a decode at B = 4..8), while oneDNN's prepacked GEMM stays nearly
flat from 1 to 8 rows but is slower than MKL at 1 row (`scripts/bench_small_m_gemm.py`, results/small_m_gemm.md).
Decoding (1 row per sequence) keeps MKL; verify and drafter blocks take oneDNN. Both are fp32 GEMMs with their own
summation orders, as MKL's 1-row and 4-row kernels already are; outputs stay equal to plain decoding (tests).
Costs memory: the reordered copy doubles each linear weight.
"""

from __future__ import annotations

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

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] < ONEDNN_FROM_ROWS:
            out = F.linear(rows, self.weight, self.bias)
        else:
            out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)


def prepack_linears(model: nn.Module) -> nn.Module:
    """Replace every plain fp32 CPU `nn.Linear` of `model` (in place) by a `PrepackedLinear`; subclasses (the
    vocab-parallel head) and other dtypes are left as they are. For inference only: no gradients flow through."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu":
                setattr(module, name, PrepackedLinear(child))
    return model
