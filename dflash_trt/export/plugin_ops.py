"""The in-place KV-injection plugin as a torch custom op, for the `plugin_kv` flavor of the drafter graph.

`dflash_trt::context_kv_append` follows the `DFlashContextKVAppend` contract
(`dflash_trt.plugins.contracts.CONTEXT_KV_APPEND`): the new context rows' k (per-head RMSNorm, RoPE at
ctx_lens + n) and raw v are written into the layer's caches at ctx_lens[s] + n for n < new_lens[s]. The eager
body (functional: it returns updated copies) serves tracing and the CPU check; exported, it becomes the plugin
node whose outputs TensorRT aliases to the cache inputs (built with `ALIASED_PLUGIN_IO_10_03`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dflash_trt.models.layers import apply_rope, rms_norm


@torch.library.custom_op("dflash_trt::context_kv_append", mutates_args=())
def context_kv_append(
    kv: Tensor,
    k_norm_weight: Tensor,
    rope_cos: Tensor,
    rope_sin: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    ctx_lens: Tensor,
    new_lens: Tensor,
    num_kv_heads: int,
    head_dim: int,
    qk_norm: int,
    eps: float,
) -> tuple[Tensor, Tensor]:
    b, n, _ = kv.shape
    k, v = kv.view(b, n, 2, num_kv_heads, head_dim).unbind(2)
    if qk_norm:
        k = rms_norm(k, k_norm_weight, eps)
    steps = torch.arange(n, device=kv.device)
    pos = ctx_lens.long()[:, None] + steps
    limit = min(k_cache.shape[2], rope_cos.shape[0])
    valid = (steps[None, :] < new_lens.long()[:, None]) & (pos < limit)
    at = pos.clamp(max=rope_cos.shape[0] - 1)
    k = apply_rope(k, rope_cos[at], rope_sin[at])
    rows, cols = valid.nonzero(as_tuple=True)
    k_out, v_out = k_cache.clone(), v_cache.clone()
    k_out[rows, :, pos[rows, cols]] = k[rows, cols]
    v_out[rows, :, pos[rows, cols]] = v[rows, cols]
    return k_out, v_out


@context_kv_append.register_fake
def _(
    kv, k_norm_weight, rope_cos, rope_sin, k_cache, v_cache, ctx_lens, new_lens, num_kv_heads, head_dim, qk_norm, eps
):
    return torch.empty_like(k_cache), torch.empty_like(v_cache)


def onnx_translations() -> dict:
    from dflash_trt.export.plugin_onnx import context_kv_append_onnx

    return {torch.ops.dflash_trt.context_kv_append.default: context_kv_append_onnx}
