"""Target LLM (Llama / Qwen2 / Qwen3), functional over its KV cache.

The module holds weights only. A forward takes the cache tensors, each row's committed length and the
RoPE tables as arguments and returns the K/V of its new tokens instead of writing them anywhere: the
caller (a runtime backend) owns the buffers, stores the new K/V at positions `lens[b] + i` and decides
how many of them to commit, so rolling back a rejected draft costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dflash_trt.config import TargetConfig
from dflash_trt.models.layers import Keys, RMSNorm, Rope, SwiGLU, apply_rope, attend

KV = tuple[Tensor, Tensor]  # (k, v)


class Attention(nn.Module):
    def __init__(self, cfg: TargetConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv_out = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, qkv_out, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None

    def forward(self, x: Tensor, past: Keys, positions: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, KV]:
        """x [b, t, H] at `positions` [b, t] after the `past` keys. Returns the output and the new k/v
        [b, t, kv_heads, d]."""
        b, t, _ = x.shape
        kv_dim = self.n_kv * self.head_dim
        q, k, v = self.wqkv(x).split([self.n_heads * self.head_dim, kv_dim, kv_dim], dim=-1)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv, self.head_dim)
        v = v.view(b, t, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attend(q.transpose(1, 2), positions, past + Keys.new(k, v, positions), causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1)), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: TargetConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor, past: Keys, positions: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, KV]:
        h, kv = self.attn(self.attn_norm(x), past, positions, cos, sin)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), kv


class Transformer(nn.Module):
    """Decoder-only LM: `embed`, decoder `layers`, final `norm`, `lm_head` (weights only)."""

    def __init__(self, cfg: TargetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(
        self, tokens: Tensor, cache: Sequence[KV], lens: Tensor, rope: Rope, capture: Sequence[int] = ()
    ) -> tuple[Tensor, Tensor | None, list[KV]]:
        """tokens [b, t] at positions lens[b] + i, after each row's `lens[b]` cached positions.

        cache: per layer (k, v) [b, kv_heads, S, d] with S >= max(lens). Returns final-normed hidden
        [b, t, H], the outputs of the `capture` layers concatenated [b, t, len(capture)*H] (None when
        empty) and per layer the new (k, v) [b, t, kv_heads, d].
        """
        positions = lens[:, None] + torch.arange(tokens.shape[1], device=tokens.device)
        cos, sin = rope.at(positions)
        x = self.embed(tokens)
        captured, new_kv = {}, []
        for i, (layer, layer_cache) in enumerate(zip(self.layers, cache)):
            x, kv = layer(x, Keys.cached(*layer_cache, lens), positions, cos, sin)
            new_kv.append(kv)
            if i in capture:
                captured[i] = x
        features = torch.cat([captured[i] for i in capture], dim=-1) if capture else None
        return self.norm(x), features, new_kv
