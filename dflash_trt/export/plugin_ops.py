"""The plugins of the drafter graph's plugin flavors, as torch custom ops and modules.

`dflash_trt::context_kv_append` follows the `DFlashContextKVAppend` contract
(`dflash_trt.plugins.contracts.CONTEXT_KV_APPEND`): the new context rows' k (per-head RMSNorm, RoPE at
ctx_lens + n) and raw v are written into the layer's caches at ctx_lens[s] + n for n < new_lens[s]. The eager
body (functional: it returns updated copies) serves tracing and the CPU check; exported, it becomes the plugin
node whose outputs TensorRT aliases to the cache inputs (built with `ALIASED_PLUGIN_IO_10_03`).

`PluginAttention` puts `DFlashBlockAttention` (`torch.ops.dflash_trt.block_attention`, whose eager body is the
PyTorch reference of `dflash_trt.plugins.reference`) in place of a draft layer's attention core: the layer's
own projections and residuals stay, the plugin does q/k norm, RoPE and attention over [context cache ; block].
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from dflash_trt.models.drafter import DFlashDrafter
from dflash_trt.models.layers import Keys, apply_rope, rms_norm
from dflash_trt.plugins.reference import dflash_block_attention


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


class PluginAttention(nn.Module):
    """A draft layer's attention (same call as `DraftAttention.forward`) computed by `DFlashBlockAttention`.

    `context` must be `Keys.cached` over the layer's whole context cache, and the block must sit right after
    the valid context (positions[:, 0] = context length), as in the drafter graph."""

    def __init__(self, attn: nn.Module, rope_cos: Tensor, rope_sin: Tensor) -> None:
        super().__init__()
        self.attn, self.rope_cos, self.rope_sin = attn, rope_cos, rope_sin

    def forward(self, x: Tensor, context: Keys, positions: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        attn = self.attn
        out = dflash_block_attention(
            attn.wqkv(x),
            attn.q_norm.weight,
            attn.k_norm.weight,
            self.rope_cos,
            self.rope_sin,
            context.k,
            context.v,
            positions[:, 0].to(torch.int32),
            num_heads=attn.n_heads,
            num_kv_heads=attn.n_kv,
            head_dim=attn.head_dim,
            window=attn.window or 0,
            qk_norm=1,
            eps=attn.q_norm.eps,
        )
        return attn.wo(out)


def with_plugin_attention(drafter: DFlashDrafter, rope_cos: Tensor, rope_sin: Tensor) -> DFlashDrafter:
    """A view of `drafter` (weights shared, the model itself untouched) whose layers' attention is
    `PluginAttention`."""
    view = copy.copy(drafter)
    view._modules = dict(drafter._modules)
    layers = []
    for layer in drafter.layers:
        clone = copy.copy(layer)
        clone._modules = dict(layer._modules)
        clone.attn = PluginAttention(layer.attn, rope_cos, rope_sin)
        layers.append(clone)
    view.layers = nn.ModuleList(layers)
    return view


def onnx_translations() -> dict:
    from dflash_trt.plugins.onnx_translations import block_attention_onnx, context_kv_append_onnx

    return {
        torch.ops.dflash_trt.context_kv_append.default: context_kv_append_onnx,
        torch.ops.dflash_trt.block_attention.default: block_attention_onnx,
    }
