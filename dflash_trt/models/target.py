"""Target LLM (Llama / Qwen2 / Qwen3) with a static, per-sequence KV cache.

The cache holds `lens[b]` committed positions per row. A forward writes K/V for every input token at
positions `lens[b] + i` but does not advance `lens`: the caller commits how many of them to keep
(`commit`), so rolling back a rejected draft costs nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dflash_trt.config import TargetConfig
from dflash_trt.models.layers import RMSNorm, SwiGLU, apply_rope, attention, rope_inv_freq, rope_tables


class KVCache(nn.Module):
    """Static K/V buffers [batch, kv_heads, max_len, head_dim] for one layer."""

    def __init__(self, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        shape = (batch, kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    def write(self, positions: Tensor, k: Tensor, v: Tensor) -> None:
        """Store k/v [b, t, kv_heads, d] at `positions` [b, t]."""
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        self.k[rows, :, positions] = k
        self.v[rows, :, positions] = v


def allocate_caches(model: nn.Module, batch: int, max_len: int, weight: Tensor) -> None:
    """Give a target or drafter empty per-layer KV caches, RoPE tables and per-row lengths (all zero)."""
    cfg = model.cfg
    for layer in model.layers:
        layer.attn.cache = KVCache(batch, cfg.num_kv_heads, max_len, cfg.head_dim, weight.dtype).to(weight.device)
    inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    model.cos, model.sin = (t.to(weight.device) for t in rope_tables(inv_freq, max_len))
    model.lens = torch.zeros(batch, dtype=torch.long, device=weight.device)


class Attention(nn.Module):
    def __init__(self, cfg: TargetConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv_out = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, qkv_out, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, visible: Tensor) -> Tensor:
        b, t, _ = x.shape
        kv_dim = self.n_kv * self.head_dim
        q, k, v = self.wqkv(x).split([self.n_heads * self.head_dim, kv_dim, kv_dim], dim=-1)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv, self.head_dim)
        v = v.view(b, t, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        assert self.cache is not None, "call Transformer.setup_caches() first"
        self.cache.write(positions, k, v)
        kv_len = visible.shape[-1]
        out = attention(q.transpose(1, 2), self.cache.k[:, :, :kv_len], self.cache.v[:, :, :kv_len], visible)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, cfg: TargetConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, visible: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, positions, visible)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Decoder-only LM. `forward` returns final-normed hidden states and the tapped layer outputs."""

    def __init__(self, cfg: TargetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.capture_layers: tuple[int, ...] = ()
        self.lens = torch.zeros(0, dtype=torch.long)

    def setup_caches(self, batch: int, max_len: int) -> None:
        """Allocate empty caches for `batch` rows of up to `max_len` positions each."""
        allocate_caches(self, batch, max_len, self.embed.weight)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """tokens [b, t] placed after each row's committed cache. Returns (hidden [b, t, H], features).

        features: concatenated outputs of `capture_layers` [b, t, n*H] (None when nothing is captured).
        """
        t = tokens.shape[1]
        positions = self.lens[:, None] + torch.arange(t, device=tokens.device)
        kv_len = int(self.lens.max()) + t
        visible = (torch.arange(kv_len, device=tokens.device) <= positions[:, :, None])[:, None]
        cos, sin = self.cos[positions], self.sin[positions]
        x = self.embed(tokens)
        captured = {}
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, positions, visible)
            if i in self.capture_layers:
                captured[i] = x
        features = torch.cat([captured[i] for i in self.capture_layers], dim=-1) if captured else None
        return self.norm(x), features

    def commit(self, n: Tensor) -> None:
        """Keep the first `n[b]` tokens of the last forward in row b's cache."""
        self.lens += n
