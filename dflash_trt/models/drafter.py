"""DFlash drafter (z-lab v1): a Qwen3-style stack whose K/V are injected with fused target features.

KV injection: the fused context c = hidden_norm(fc(features)) goes through every draft layer's own
k_proj/v_proj (+ k_norm, RoPE at the context's absolute positions) and is cached by the caller; context
positions are never queries. A block `[x_start, MASK x (B-1)]` at positions ctx_len .. ctx_len+B-1
attends to [cached context | its own K/V] with no mask inside the block. The module holds weights only:
embeddings and LM head are the target's and are applied by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dflash_trt.config import DrafterConfig
from dflash_trt.models.layers import Keys, RMSNorm, Rope, SwiGLU, apply_rope, attend
from dflash_trt.models.target import KV


class DraftAttention(nn.Module):
    def __init__(self, cfg: DrafterConfig, window: int | None, causal: bool = False) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim, self.window = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, window
        self.causal = causal  # inside the block (DFlash2 `is_causal`); v1 blocks are bidirectional
        qkv_out = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, qkv_out, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        return x.view(*x.shape[:2], n, self.head_dim)

    def context_kv(self, c: Tensor, cos: Tensor, sin: Tensor) -> KV:
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

    def forward(self, x: Tensor, context: Keys, positions: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.block_qkv(x, cos, sin)
        out = attend(
            q.transpose(1, 2), positions, context + Keys.new(k, v, positions), causal=self.causal, window=self.window
        )
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class DraftBlock(nn.Module):
    def __init__(self, cfg: DrafterConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = DraftAttention(cfg, cfg.window(layer), cfg.causal(layer))
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor, context: Keys, positions: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), context, positions, cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class DFlashDrafter(nn.Module):
    """The drafter's own weights: `fc`, `hidden_norm`, draft `layers`, final `norm`."""

    block_class: type[nn.Module] = DraftBlock

    def __init__(self, cfg: DrafterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(len(cfg.target_layer_ids) * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.layers = nn.ModuleList(self.block_class(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # the target token ids drafts may take, ascending (`runtime.loading.read_draft_vocab`); None: all of them
        self.register_buffer("draft_vocab", None, persistent=False)

    def context_kv(self, features: Tensor, positions: Tensor, rope: Rope) -> list[KV]:
        """The KV injection: per draft layer, K/V [b, t, kv_heads, d] of target features [b, t, F] at `positions`."""
        c = self.hidden_norm(self.fc(features))
        cos, sin = rope.at(positions)
        return [layer.attn.context_kv(c, cos, sin) for layer in self.layers]

    def forward(self, x: Tensor, positions: Tensor, context: Sequence[Keys], rope: Rope) -> Tensor:
        """Final-normed hidden states [b, B, H] of embedded blocks x [b, B, H] at `positions` [b, B].

        context: per layer the injected context keys (`Keys.cached` over the context cache); the block
        sits right after the context and sees all of it and its whole self.
        """
        cos, sin = rope.at(positions)
        for layer, layer_context in zip(self.layers, context):
            x = layer(x, layer_context, positions, cos, sin)
        return self.norm(x)

    def proposal_logits(self, hidden: Tensor, head_logits: Tensor, anchors: Tensor) -> Tensor:
        """What the drafter proposes from, [b, B-1, V]: the LM-head logits of the mask positions (hidden
        [b, B-1, H]) after z-lab's `output_multiplier` and `final_logit_softcapping` (identity by default).
        `anchors` [b] (the blocks' x_start) is unused here; DFlash2's selector conditions on it."""
        return output_logits(self.cfg, head_logits)


def output_logits(cfg: DrafterConfig, logits: Tensor) -> Tensor:
    """z-lab `compute_logits`: logits * output_multiplier, then cap * tanh(logits / cap) when a cap is set."""
    if cfg.output_multiplier != 1.0:
        logits = logits * cfg.output_multiplier
    if cfg.final_logit_softcapping:
        logits = torch.tanh(logits / cfg.final_logit_softcapping) * cfg.final_logit_softcapping
    return logits


class VocabHead(nn.Module):
    """The drafts' LM head over a reduced draft vocabulary (FR-Spec; EAGLE-3's `draft_vocab_size`): `head` holds
    only the `vocab` rows of the target's head (ascending token ids) and the other tokens' logits are -inf, so its
    output [..., vocab_size] is laid out as the full head's."""

    def __init__(self, head: nn.Module, vocab: Tensor, vocab_size: int) -> None:
        super().__init__()
        self.head, self.vocab_size = head, vocab_size
        self.register_buffer("vocab", vocab, persistent=False)

    @classmethod
    def rows_of(cls, lm_head: nn.Linear, vocab: Tensor) -> VocabHead:
        """A VocabHead over a plain copy of the `vocab` rows of `lm_head` (bias-free, as LM heads are)."""
        head = nn.Linear(lm_head.in_features, len(vocab), bias=False, device="meta")
        head.weight = nn.Parameter(lm_head.weight.detach()[vocab], requires_grad=False)
        return cls(head, vocab, lm_head.out_features)

    def forward(self, hidden: Tensor) -> Tensor:
        logits = self.head(hidden)
        full = logits.new_full((*logits.shape[:-1], self.vocab_size), float("-inf"))
        return full.index_copy(-1, self.vocab, logits)
