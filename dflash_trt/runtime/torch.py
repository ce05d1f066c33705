"""The PyTorch backend (the reference, on any torch device): runners over the functional models.

Each runner owns its buffers: per-layer K/V caches [batch, kv_heads, max_len, head_dim], the committed
length of every row and the RoPE tables. A forward stores the K/V it returns for every input token at
positions lens[b] + i; only `commit` advances lens.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dflash_trt.config import DrafterConfig, TargetConfig
from dflash_trt.decoding.runners import Capacity, DrafterRunner, TargetRunner
from dflash_trt.models.drafter import DFlashDrafter, VocabHead
from dflash_trt.models.layers import Keys, Rope
from dflash_trt.models.target import KV, Transformer
from dflash_trt.runtime import prepacked

DEFAULT_MAX_BATCH = 1 << 16  # buffers are allocated per batch: memory is the only limit


class KVCaches:
    """Per-layer K/V buffers [batch, kv_heads, max_len, head_dim] and each row's committed length."""

    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, weight: Tensor) -> None:
        shape = (batch, kv_heads, max_len, head_dim)
        self.kv = [(weight.new_zeros(shape), weight.new_zeros(shape)) for _ in range(layers)]
        self.lens = torch.zeros(batch, dtype=torch.long, device=weight.device)

    def visible(self) -> list[KV]:
        """Each layer's cache cut to the longest committed row (what a forward attends to)."""
        s = int(self.lens.max())
        return [(k[:, :, :s], v[:, :, :s]) for k, v in self.kv]

    def empty(self, rows: int) -> list[KV]:
        """Zero-length caches for `rows` rows that start from scratch."""
        return [(k[:rows, :, :0], v[:rows, :, :0]) for k, v in self.kv]

    def store(self, new_kv: Sequence[KV], rows: Tensor | None = None) -> None:
        """Write each layer's new k/v [n, t, kv_heads, d] of `rows` (default: all) at lens[row] + i, uncommitted."""
        t = new_kv[0][0].shape[1]
        rows = torch.arange(len(self.lens), device=self.lens.device) if rows is None else rows
        positions = self.lens[rows, None] + torch.arange(t, device=self.lens.device)
        for (k_cache, v_cache), (k, v) in zip(self.kv, new_kv):
            k_cache[rows[:, None], :, positions] = k
            v_cache[rows[:, None], :, positions] = v


def buffers(cfg: TargetConfig | DrafterConfig, batch: int, max_len: int, weight: Tensor) -> tuple[KVCaches, Rope]:
    """Empty KV caches and RoPE tables of a model for `batch` rows of `max_len` positions (weight: dtype, device)."""
    caches = KVCaches(cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim, weight)
    return caches, Rope.build(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, max_len, weight.device)


class TorchTarget(TargetRunner):
    """Reference target runner. `capture` = the drafter's target_layer_ids (features it returns)."""

    def __init__(
        self,
        model: Transformer,
        capture: Sequence[int] = (),
        vocab_size: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.model, self.capture = model, tuple(capture)
        weight = model.embed.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.vocab_size = vocab_size or model.cfg.vocab_size  # a vocab-parallel shard's head gathers it all
        self.capacity = Capacity(max_batch, model.cfg.max_position_embeddings)
        self.caches: KVCaches | None = None
        self.rope: Rope | None = None

    def reset(self, batch: int, max_len: int) -> None:
        self.caches, self.rope = buffers(self.model.cfg, batch, max_len, self.model.embed.weight)

    def _forward(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        hidden, features, new_kv = self.model(tokens, self.caches.visible(), self.caches.lens, self.rope, self.capture)
        self.caches.store(new_kv)
        return hidden, features

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], rows: list[int] | None = None) -> tuple[Tensor, Tensor | None]:
        n = len(prompts)
        rows = torch.arange(n, device=self.device) if rows is None else torch.tensor(rows, device=self.device)
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        tokens = torch.zeros(n, int(lens.max()), dtype=torch.long, device=self.device)
        for i, prompt in enumerate(prompts):
            tokens[i, : len(prompt)] = torch.tensor(prompt)
        self.caches.lens[rows] = 0
        hidden, features, new_kv = self.model(
            tokens, self.caches.empty(n), self.caches.lens[rows], self.rope, self.capture
        )
        self.caches.store(new_kv, rows)
        self.caches.lens[rows] = lens
        last = hidden[torch.arange(n, device=self.device), lens - 1]
        return self.model.lm_head(last), features

    @torch.inference_mode()
    def verify(self, block: Tensor) -> tuple[Tensor, Tensor | None]:
        hidden, features = self._forward(block)
        return self.model.lm_head(hidden), features

    def commit(self, n: Tensor) -> None:
        self.caches.lens += n


class TorchDrafter(DrafterRunner):
    """Reference drafter runner: the drafter's weights plus the target's embedding and LM head (shared).

    The LM head is the largest part of a drafter pass (SmolLM2: 49152 x 576), so the drafts may run a private,
    cheaper copy of it: in `head_dtype` (on a CPU with bf16 matmul, bf16 halves its weight traffic) and/or with
    only the rows of the drafter's `draft_vocab` (FR-Spec's frequency-ranked draft vocabulary; EAGLE-3's
    `draft_vocab_size`), the other tokens' logits -inf. Drafts are only proposals (acceptance is decided on the
    target's logits, and sampling corrects with the q these logits give), so both are lossless: greedy output and
    the sampled distribution are unchanged; only acceptance can fall.
    """

    def __init__(
        self, model: DFlashDrafter, embed: nn.Module, lm_head: nn.Module, head_dtype: torch.dtype | None = None
    ) -> None:
        self.model, self.embed = model, embed
        self.block_size = model.cfg.block_size
        self.mask_token_id = model.cfg.mask_token_id
        self.device = model.fc.weight.device
        self.vocab = model.draft_vocab
        self.head = private_head(lm_head, self.vocab, head_dtype)
        self.head_dtype = head_dtype or lm_head.weight.dtype
        self.caches: KVCaches | None = None
        self.rope: Rope | None = None

    def reset(self, batch: int, max_len: int) -> None:
        self.caches, self.rope = buffers(self.model.cfg, batch, max_len, self.model.fc.weight)

    def restart(self, rows: list[int]) -> None:
        self.caches.lens[torch.tensor(rows, device=self.device)] = 0

    @torch.inference_mode()
    def append_context(self, features: Tensor, n: Tensor, rows: list[int] | None = None) -> None:
        rows = (
            torch.arange(len(self.caches.lens), device=self.device)
            if rows is None
            else torch.tensor(rows, device=self.device)
        )
        positions = self.caches.lens[rows, None] + torch.arange(features.shape[1], device=self.device)
        self.caches.store(self.model.context_kv(features, positions, self.rope), rows)
        self.caches.lens[rows] += n

    @torch.inference_mode()
    def draft(self, block: Tensor) -> Tensor:
        lens = self.caches.lens
        positions = lens[:, None] + torch.arange(block.shape[1], device=self.device)
        context = [Keys.cached(k, v, lens) for k, v in self.caches.visible()]
        x = self.embed(block)
        if self.model.cfg.input_embedding_scale != 1.0:
            x = x * self.model.cfg.input_embedding_scale
        hidden = self.model(x, positions, context, self.rope)[:, 1:]
        logits = self.head(hidden.to(self.head_dtype))
        # v1: the LM-head logits; DFlash2: its candidate selector's scores (see models.drafter2)
        return self.model.proposal_logits(hidden, logits, block[:, 0])


def private_head(lm_head: nn.Module, vocab: Tensor | None, dtype: torch.dtype | None) -> nn.Module:
    """The drafts' LM head: the target's own when neither `vocab` nor another `dtype` is asked for, else a
    private copy in `dtype`, of the `vocab` rows only (a `VocabHead`) when given; fp32 copies are prepacked like
    the target's linears."""
    if vocab is None and dtype in (None, lm_head.weight.dtype):
        return lm_head
    plain = lm_head.unpacked() if isinstance(lm_head, prepacked.PrepackedLinear) else lm_head
    head = copy.deepcopy(plain) if vocab is None else VocabHead.rows_of(plain, vocab)
    head = head.to(dtype or plain.weight.dtype)
    if prepacked.available():
        if isinstance(head, VocabHead):
            prepacked.prepack_linears(head)
        elif head.weight.dtype == torch.float32:
            head = prepacked.PrepackedLinear(head)
    return head
