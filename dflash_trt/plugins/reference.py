"""PyTorch reference of the plugin ops, registered as torch custom ops so they export to ONNX.

``dflash_block_attention`` is ``torch.ops.dflash_trt.block_attention``: its eager body is the models'
own attention core (`models.layers.attend`) behind the plugin's fused-qkv interface, the CPU reference
the CUDA plugin is checked against; its fake kernel gives shapes for export.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from dflash_trt.models import layers
from dflash_trt.plugins.contracts import BLOCK_ATTENTION


def _bind(tensors: tuple[Tensor, ...], attrs: Mapping[str, int | float]) -> dict[str, int]:
    shapes = [tuple(t.shape) for t in tensors]
    dtypes = [str(t.dtype).removeprefix("torch.") for t in tensors]  # float32, bfloat16, int32, ...: the contract names
    symbols, _ = BLOCK_ATTENTION.bind_inputs(shapes, dtypes, attrs)
    return symbols


@torch.library.custom_op("dflash_trt::block_attention", mutates_args=())
def dflash_block_attention(
    qkv: Tensor,
    q_norm_weight: Tensor,
    k_norm_weight: Tensor,
    rope_cos: Tensor,
    rope_sin: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    ctx_lens: Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    window: int,
    qk_norm: int,
    eps: float,
) -> Tensor:
    """DFlash block attention: normed+roped block queries over [valid context | block] keys.

    Every attribute is explicit (the exported graph carries all of them); ``BLOCK_ATTENTION.resolve_attrs``
    supplies the contract's defaults.
    """
    attrs = BLOCK_ATTENTION.resolve_attrs(
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, window=window, qk_norm=qk_norm, eps=eps
    )
    sym = _bind((qkv, q_norm_weight, k_norm_weight, rope_cos, rope_sin, k_cache, v_cache, ctx_lens), attrs)
    b, blk, ctx, max_pos = sym["b"], sym["B"], sym["S"], sym["max_pos"]
    nh, nkv, d = num_heads, num_kv_heads, head_dim
    lens = ctx_lens.long()
    if bool((lens < 0).any()) or bool((lens > ctx).any()):
        raise ValueError(f"ctx_lens {lens.tolist()} must lie in [0, S={ctx}]")
    if bool((lens + blk > max_pos).any()):
        raise ValueError(f"block positions up to {int(lens.max()) + blk - 1} exceed the RoPE table (max_pos={max_pos})")

    q, k, v = qkv.float().unflatten(-1, (nh + 2 * nkv, d)).split([nh, nkv, nkv], dim=2)  # [b, B, heads, d]
    if qk_norm:
        q, k = layers.rms_norm(q, q_norm_weight.float(), eps), layers.rms_norm(k, k_norm_weight.float(), eps)
    pos = lens[:, None] + torch.arange(blk)
    cos, sin = layers.Rope(rope_cos, rope_sin).at(pos)
    q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
    padding = (torch.arange(ctx) >= lens[:, None])[:, None, :, None]  # the plugin's padding may hold anything
    k_ctx, v_ctx = k_cache.float().masked_fill(padding, 0), v_cache.float().masked_fill(padding, 0)
    keys = layers.Keys.cached(k_ctx, v_ctx, lens) + layers.Keys.new(k, v, pos)
    out = layers.attend(q.transpose(1, 2), pos, keys, causal=False, window=window)
    return out.transpose(1, 2).reshape(b, blk, nh * d).to(qkv.dtype)


@dflash_block_attention.register_fake
def _(
    qkv: Tensor,
    q_norm_weight: Tensor,
    k_norm_weight: Tensor,
    rope_cos: Tensor,
    rope_sin: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    ctx_lens: Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    window: int,
    qk_norm: int,
    eps: float,
) -> Tensor:
    attrs = BLOCK_ATTENTION.resolve_attrs(
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, window=window, qk_norm=qk_norm, eps=eps
    )
    sym = _bind((qkv, q_norm_weight, k_norm_weight, rope_cos, rope_sin, k_cache, v_cache, ctx_lens), attrs)
    (shape,) = BLOCK_ATTENTION.output_shapes(sym, attrs)
    return qkv.new_empty(shape)
