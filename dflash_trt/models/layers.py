"""Building blocks shared by the target and the drafter: RMSNorm, RoPE, SwiGLU MLP, the attention core."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim, normalised in fp32 and cast back before the weight (as HF does)."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> Tensor:
    """Inverse frequencies for RoPE, with `linear` and Llama-3 (`llama3`) scaling."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if scaling is None:
        return inv_freq.float()
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return (inv_freq / factor).float()
    # llama3: keep high frequencies, divide low ones by `factor`, blend smoothly in between.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, blended)
    return torch.where(wavelen < old_len / high, inv_freq, scaled).float()


def rope_tables(inv_freq: Tensor, max_positions: int) -> tuple[Tensor, Tensor]:
    """cos/sin tables [max_positions, head_dim/2] in fp32, indexed by absolute position."""
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


class Rope(NamedTuple):
    """cos/sin tables [max_positions, head_dim/2] (fp32) for one model's RoPE config."""

    cos: Tensor
    sin: Tensor

    @classmethod
    def build(
        cls,
        head_dim: int,
        theta: float,
        scaling: dict[str, Any] | None,
        max_positions: int,
        device: torch.device | str = "cpu",
    ) -> Rope:
        cos, sin = rope_tables(rope_inv_freq(head_dim, theta, scaling), max_positions)
        return cls(cos.to(device), sin.to(device))

    def at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos/sin [..., head_dim/2] gathered at `positions`."""
        return self.cos[positions], self.sin[positions]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE. x [b, t, h, d]; cos/sin [b, t, d/2] gathered at each token's position."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


class SwiGLU(nn.Module):
    """Llama/Qwen MLP with gate and up projections fused into one matmul (`w13`)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor) -> Tensor:
    """Grouped-query attention. q [b, hq, t, d], k/v [b, hkv, s, d], visible [b, 1, t, s] bool.

    Every query must see at least one key (callers guarantee it: each query sees itself).
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=q.shape[1] != k.shape[1])


class Keys(NamedTuple):
    """Keys/values a query may attend to: k/v [b, kv_heads, s, d] with each slot's position and validity
    [b, s]. Invalid slots get zero weight but must hold finite values (the runtimes' caches start zeroed)."""

    k: Tensor
    v: Tensor
    pos: Tensor
    valid: Tensor

    @classmethod
    def cached(cls, k: Tensor, v: Tensor, lens: Tensor) -> Keys:
        """A cache [b, kv_heads, S, d] whose slot j holds position j, valid for j < lens[b]."""
        pos = torch.arange(k.shape[2], device=k.device).expand(k.shape[0], -1)
        return cls(k, v, pos, pos < lens[:, None])

    @classmethod
    def new(cls, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor | None = None) -> Keys:
        """Freshly computed k/v [b, t, kv_heads, d] at positions [b, t] (all valid unless said otherwise)."""
        valid = torch.ones_like(pos, dtype=torch.bool) if valid is None else valid
        return cls(k.transpose(1, 2), v.transpose(1, 2), pos, valid)

    def __add__(self, other: Keys) -> Keys:  # type: ignore[override]
        """The two key sets side by side."""
        return Keys(*(torch.cat([a, b], dim=2 if a.dim() == 4 else 1) for a, b in zip(self, other)))


def attend(q: Tensor, q_pos: Tensor, keys: Keys, *, causal: bool, window: int | None = None) -> Tensor:
    """The one attention core. q [b, hq, t, d] at positions q_pos [b, t] over `keys`.

    A query sees the valid keys: with `causal`, those at or before its position (the target); without, all
    of them (the drafter's block sees its whole block and the context before it). With a window, a key at
    p_k is visible to a query at p_q iff |p_q - p_k| < window. Every query must see at least one key.
    Returns [b, hq, t, d].
    """
    visible = keys.valid[:, None, :].expand(-1, q.shape[2], -1)
    if causal:
        visible = visible & (keys.pos[:, None, :] <= q_pos[:, :, None])
    if window:
        visible = visible & ((q_pos[:, :, None] - keys.pos[:, None, :]).abs() < window)
    return attention(q, keys.k, keys.v, visible[:, None])
