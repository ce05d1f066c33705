"""Independent numpy (float64) implementations of plugin ops, written from the op contracts' text.

Nothing here imports ``dflash_trt``: these are the expected values that the PyTorch reference, the
onnxruntime custom op and the plugins are compared with, so they must not share code with them.
"""

from __future__ import annotations

import numpy as np


def rope_tables(max_pos: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [max_pos, head_dim // 2]: angle(p, i) = p * theta ** (-2i / head_dim)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(max_pos, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles), np.sin(angles)


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis of x [..., d], then times w [d]."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE of x [t, d] with cos/sin [t, d/2]: first half pairs with second half."""
    half = x.shape[-1] // 2
    x1, x2 = x[:, :half], x[:, half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _block_positions(ctx_len: int, blk: int) -> np.ndarray:
    """Block token i of a sequence with ctx_len valid context tokens sits at position ctx_len + i."""
    return ctx_len + np.arange(blk)


def _valid_context(cache_row: np.ndarray, ctx_len: int) -> np.ndarray:
    """The first ctx_len rows of one kv head's cache [S, d]; the rest is padding."""
    return cache_row[:ctx_len]


def _in_window(q_pos: np.ndarray, k_pos: np.ndarray, window: int) -> np.ndarray:
    """[len(q_pos), len(k_pos)] visibility: all keys when window == 0, else |p_q - p_k| < window."""
    if window == 0:
        return np.ones((len(q_pos), len(k_pos)), dtype=bool)
    return np.abs(q_pos[:, None] - k_pos[None, :]) < window


def block_attention(
    qkv,
    q_norm_weight,
    k_norm_weight,
    rope_cos,
    rope_sin,
    k_cache,
    v_cache,
    ctx_lens,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    window: int,
    qk_norm: int,
    eps: float,
) -> np.ndarray:
    """DFlashBlockAttention in float64, looping over sequences and query heads.

    Inputs are array-likes in contract order (torch tensors work through ``np.asarray``); the result is
    float64 [b, B, num_heads * head_dim].
    """
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731  (bf16 torch tensors: pass .float())
    qkv, qw, kw = f64(qkv), f64(q_norm_weight), f64(k_norm_weight)
    cos_t, sin_t, k_cache, v_cache = f64(rope_cos), f64(rope_sin), f64(k_cache), f64(v_cache)
    lens = np.asarray(ctx_lens).astype(np.int64)
    nh, nkv, d = num_heads, num_kv_heads, head_dim
    b, blk, width = qkv.shape
    assert width == (nh + 2 * nkv) * d, (width, nh, nkv, d)
    group = nh // nkv
    out = np.zeros((b, blk, nh * d), dtype=np.float64)
    for s in range(b):
        n = int(lens[s])
        pos = _block_positions(n, blk)  # block query/key positions
        cos, sin = cos_t[pos], sin_t[pos]
        for h in range(nh):
            kvh = h // group
            q = qkv[s, :, h * d : (h + 1) * d]  # [B, d]
            k_off = (nh + kvh) * d
            v_off = (nh + nkv + kvh) * d
            k_blk = qkv[s, :, k_off : k_off + d]
            v_blk = qkv[s, :, v_off : v_off + d]
            if qk_norm:
                q, k_blk = _rms_norm(q, qw, eps), _rms_norm(k_blk, kw, eps)
            q, k_blk = _rope(q, cos, sin), _rope(k_blk, cos, sin)
            k_ctx, v_ctx = _valid_context(k_cache[s, kvh], n), _valid_context(v_cache[s, kvh], n)
            keys = np.concatenate([k_ctx, k_blk])  # valid context, then the block (fully bidirectional)
            vals = np.concatenate([v_ctx, v_blk])
            key_pos = np.concatenate([np.arange(len(k_ctx)), pos])
            scores = q @ keys.T / np.sqrt(d)  # [B, n + B]
            scores = np.where(_in_window(pos, key_pos, window), scores, -np.inf)
            scores = scores - scores.max(axis=-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(axis=-1, keepdims=True)
            out[s, :, h * d : (h + 1) * d] = p @ vals
    return out
