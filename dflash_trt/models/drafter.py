"""DFlash drafter (z-lab v1): a Qwen3-style stack whose K/V are injected with fused target features.

Per draft layer, the fused context c = hidden_norm(fc(features)) goes through that layer's own
k_proj/v_proj (+ k_norm, RoPE at the context's absolute positions) and is cached; context positions are
never queries. A block `[x_start, MASK x (B-1)]` at positions ctx_len .. ctx_len+B-1 attends to
[cached context | its own K/V] with no mask inside the block. Embeddings and LM head are the target's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dflash_trt.config import DrafterConfig
from dflash_trt.models.layers import RMSNorm, SwiGLU, apply_rope, attention
from dflash_trt.models.target import KVCache, allocate_caches


def block_attention(
    q: Tensor, k_ctx: Tensor, v_ctx: Tensor, ctx_lens: Tensor, k_blk: Tensor, v_blk: Tensor, window: int | None
) -> Tensor:
    """Attention of block queries over [valid context | block]; the block is fully bidirectional.

    q [b, hq, B, d] and k_blk/v_blk [b, hkv, B, d] at positions ctx_lens[b] + i; k_ctx/v_ctx
    [b, hkv, S, d] with entry j at position j, valid for j < ctx_lens[b]. With a window, a key at p_k is
    visible to a query at p_q iff |p_q - p_k| < window. Returns [b, hq, B, d].
    """
    block = q.shape[2]
    s = int(ctx_lens.max()) if ctx_lens.numel() else 0
    j = torch.arange(s, device=q.device)
    q_pos = ctx_lens[:, None] + torch.arange(block, device=q.device)  # [b, B]
    ctx_visible = (j < ctx_lens[:, None])[:, None, :].expand(-1, block, -1)  # [b, B, s]
    blk_visible = torch.ones(q.shape[0], block, block, dtype=torch.bool, device=q.device)
    if window:
        ctx_visible = ctx_visible & (q_pos[:, :, None] - j < window)
        offsets = torch.arange(block, device=q.device)
        blk_visible = blk_visible & ((offsets[:, None] - offsets[None, :]).abs() < window)
    visible = torch.cat([ctx_visible, blk_visible], dim=-1)[:, None]
    k = torch.cat([k_ctx[:, :, :s], k_blk], dim=2)
    v = torch.cat([v_ctx[:, :, :s], v_blk], dim=2)
    return attention(q, k, v, visible)


class DraftAttention(nn.Module):
    def __init__(self, cfg: DrafterConfig, window: int | None) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim, self.window = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, window
        qkv_out = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, qkv_out, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.cache: KVCache | None = None

    def _heads(self, x: Tensor, n: int) -> Tensor:
        return x.view(*x.shape[:2], n, self.head_dim)

    def context_kv(self, c: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """K/V [b, t, kv_heads, d] of fused context c [b, t, H] through this layer's k/v (k normed, roped)."""
        q_dim = self.n_heads * self.head_dim
        bias = self.wqkv.bias[q_dim:] if self.wqkv.bias is not None else None
        k, v = nn.functional.linear(c, self.wqkv.weight[q_dim:], bias).chunk(2, dim=-1)
        return apply_rope(self.k_norm(self._heads(k, self.n_kv)), cos, sin), self._heads(v, self.n_kv)

    def block_qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Q [b, t, heads, d] and K/V [b, t, kv_heads, d] of normed block states x (q and k normed, roped)."""
        kv_dim = self.n_kv * self.head_dim
        q, k, v = self.wqkv(x).split([self.n_heads * self.head_dim, kv_dim, kv_dim], dim=-1)
        q = apply_rope(self.q_norm(self._heads(q, self.n_heads)), cos, sin)
        k = apply_rope(self.k_norm(self._heads(k, self.n_kv)), cos, sin)
        return q, k, self._heads(v, self.n_kv)

    def append_context(self, c: Tensor, cos: Tensor, sin: Tensor, positions: Tensor) -> None:
        """Cache the K/V of fused context c [b, t, H] at `positions` [b, t]."""
        self.cache.write(positions, *self.context_kv(c, cos, sin))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ctx_lens: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.block_qkv(x, cos, sin)
        out = block_attention(q.transpose(1, 2), self.cache.k, self.cache.v, ctx_lens,
                              k.transpose(1, 2), v.transpose(1, 2), self.window)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class DraftBlock(nn.Module):
    def __init__(self, cfg: DrafterConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = DraftAttention(cfg, cfg.window(layer))
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ctx_lens: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, ctx_lens)
        return x + self.mlp(self.mlp_norm(x))


class DFlashDrafter(nn.Module):
    """The drafter. `bind` borrows the target's embedding and LM head (shared, never copied)."""

    def __init__(self, cfg: DrafterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(len(cfg.target_layer_ids) * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.layers = nn.ModuleList(DraftBlock(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.embed: nn.Embedding | None = None
        self.lm_head: nn.Linear | None = None
        self.lens = torch.zeros(0, dtype=torch.long)

    def bind(self, embed: nn.Embedding, lm_head: nn.Linear) -> None:
        # Plain attributes, not submodules: the target owns these weights.
        object.__setattr__(self, "embed", embed)
        object.__setattr__(self, "lm_head", lm_head)

    def setup_caches(self, batch: int, max_len: int) -> None:
        """Allocate empty context caches for `batch` rows of up to `max_len` positions each."""
        allocate_caches(self, batch, max_len, self.fc.weight)

    def append_context(self, features: Tensor, n: Tensor) -> None:
        """Cache context K/V for target features [b, t, n_feat*H]; keep the first n[b] of each row."""
        positions = self.lens[:, None] + torch.arange(features.shape[1], device=features.device)
        c = self.hidden_norm(self.fc(features))
        cos, sin = self.cos[positions], self.sin[positions]
        for layer in self.layers:
            layer.attn.append_context(c, cos, sin, positions)
        self.lens += n

    def forward(self, block_ids: Tensor) -> Tensor:
        """Hidden states [b, B, H] for blocks [b, B] placed right after each row's context."""
        positions = self.lens[:, None] + torch.arange(block_ids.shape[1], device=block_ids.device)
        cos, sin = self.cos[positions], self.sin[positions]
        x = self.embed(block_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, self.lens)
        return self.norm(x)

    def draft_logits(self, block_ids: Tensor, head: nn.Module | None = None) -> Tensor:
        """Logits [b, B-1, V] predicting the tokens at the block's mask positions 1..B-1, through `head`
        (default: the target's LM head; hidden states are cast to the head's dtype)."""
        head = self.lm_head if head is None else head
        return head(self(block_ids)[:, 1:].to(head.weight.dtype))
