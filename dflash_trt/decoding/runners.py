"""The runtime contract the speculative loop talks to, and its PyTorch (reference) backend.

Every backend (torch, onnxruntime, TensorRT) implements `TargetRunner` and `DrafterRunner`. Rows of a
batch may have different prompt lengths and accept different numbers of drafts.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import Tensor

from dflash_trt.models.drafter import DFlashDrafter
from dflash_trt.models.target import Transformer


class TargetRunner(Protocol):
    vocab_size: int
    max_positions: int

    def reset(self, batch: int, max_len: int) -> None: ...

    def prefill(self, prompts: list[list[int]]) -> tuple[Tensor, Tensor | None]:
        """Run the prompts; commit them. Returns (logits after each prompt [b, V], features [b, T, F])."""

    def verify(self, block: Tensor) -> tuple[Tensor, Tensor | None]:
        """Run block [b, B] after the committed tokens. Returns (logits [b, B, V], features [b, B, F])."""

    def commit(self, n: Tensor) -> None:
        """Keep the first n[b] tokens of the last verified block (the rest is rolled back)."""


class DrafterRunner(Protocol):
    block_size: int
    mask_token_id: int

    def reset(self, batch: int, max_len: int) -> None: ...

    def append_context(self, features: Tensor, n: Tensor) -> None:
        """Add the first n[b] positions of target features [b, t, F] to row b's context K/V."""

    def draft(self, block: Tensor) -> Tensor:
        """Logits [b, B-1, V] for the mask positions of blocks [b, B] placed after each row's context."""


class TorchTarget:
    """Reference target backend on any torch device."""

    def __init__(self, model: Transformer) -> None:
        self.model = model
        self.vocab_size = model.vocab_size
        self.max_positions = model.cfg.max_position_embeddings
        self.device = model.embed.weight.device

    def reset(self, batch: int, max_len: int) -> None:
        self.model.setup_caches(batch, max_len)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> tuple[Tensor, Tensor | None]:
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        tokens = torch.zeros(len(prompts), int(lens.max()), dtype=torch.long, device=self.device)
        for row, prompt in enumerate(prompts):
            tokens[row, : len(prompt)] = torch.tensor(prompt)
        hidden, features = self.model(tokens)
        self.model.commit(lens)
        last = hidden[torch.arange(len(prompts)), lens - 1]
        return self.model.lm_head(last), features

    @torch.inference_mode()
    def verify(self, block: Tensor) -> tuple[Tensor, Tensor | None]:
        hidden, features = self.model(block)
        return self.model.lm_head(hidden), features

    def commit(self, n: Tensor) -> None:
        self.model.commit(n)


class TorchDrafter:
    """Reference drafter backend; its model is bound to the target's embedding and LM head.

    `head_dtype` runs the drafts' LM head in that dtype, on a private cast copy of the target's head. Drafts
    are only proposals (acceptance is decided on the target's logits), so this is lossless: greedy output and
    the sampled distribution are unchanged. On a CPU with bf16 matmul, bf16 halves the head's weight traffic,
    the largest part of a drafter pass (SmolLM2: 49152 x 576).
    """

    def __init__(self, model: DFlashDrafter, head_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.block_size = model.cfg.block_size
        self.mask_token_id = model.cfg.mask_token_id
        self.head = None
        if head_dtype is not None and head_dtype != model.lm_head.weight.dtype:
            self.head = copy.deepcopy(model.lm_head).to(head_dtype)

    def reset(self, batch: int, max_len: int) -> None:
        self.model.setup_caches(batch, max_len)

    @torch.inference_mode()
    def append_context(self, features: Tensor, n: Tensor) -> None:
        self.model.append_context(features, n)

    @torch.inference_mode()
    def draft(self, block: Tensor) -> Tensor:
        return self.model.draft_logits(block, self.head)
