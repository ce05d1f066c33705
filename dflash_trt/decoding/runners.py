"""The runtime contract the speculative loop talks to. Backends (torch, onnxruntime, TensorRT) implement it.

Rows of a batch may have different prompt lengths and accept different numbers of drafts. A forward
writes K/V for every input token, but only `commit(n)` advances a row's cache: rollback is free.
`Features` (the concatenated outputs of the drafter's `target_layer_ids`) are opaque to the loop: it
hands what the target returned to the drafter, so they may stay on the device in the backend's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from dflash_trt.decoding.sampling import SamplingParams, accept, propose

Features = Any


@dataclass(frozen=True)
class Capacity:
    """What a runner can hold: rows decoded together, positions per row (prompt + output + one block)."""

    max_batch: int
    max_len: int
    max_len_field: str = "max_position_embeddings"  # the config field that sets max_len, for error messages


class TargetRunner(Protocol):
    device: torch.device
    capacity: Capacity

    def reset(self, batch: int, max_len: int) -> None:
        """Empty caches for `batch` rows of up to `max_len` positions each."""

    def prefill(self, prompts: list[list[int]], rows: list[int] | None = None) -> tuple[Tensor, Features]:
        """Start new sequences: rows[i] (default i) restarts with prompts[i], committed. Other rows keep their
        state (in-flight batching). Returns (logits after each prompt [n, V], the prompts' features)."""

    def verify(self, block: Tensor) -> tuple[Tensor, Features]:
        """Run block [b, B] after every row's committed tokens. Returns (logits [b, B, V], the B tokens' features)."""

    def verify_and_accept(
        self, block: Tensor, q: Tensor | None, params: SamplingParams, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Features]:
        """Verify the block and decide acceptance: (accepted drafts [b], next token [b], features).

        The default is `verify` + `sampling.accept`; a backend may fuse acceptance on its device so that
        only the accepted lengths and next tokens leave it.
        """
        logits, features = self.verify(block)
        accepted, next_token = accept(block[:, 1:], q, logits, params, generator)
        return accepted, next_token, features

    def commit(self, n: Tensor) -> None:
        """Keep the first n[b] tokens of the last verified block (the rest is rolled back)."""


class DrafterRunner(Protocol):
    block_size: int
    mask_token_id: int
    vocab: Tensor | None  # the token ids drafts may take (a reduced draft vocabulary), None: all of them

    def reset(self, batch: int, max_len: int) -> None:
        """Empty context caches for `batch` rows of up to `max_len` positions each."""

    def restart(self, rows: list[int]) -> None:
        """Empty the context of `rows` (a new sequence starts there)."""

    def append_context(self, features: Features, n: Tensor, rows: list[int] | None = None) -> None:
        """Inject the first n[i] positions of feature row i into row rows[i]'s (default i) context K/V."""

    def draft(self, block: Tensor) -> Tensor:
        """Logits [b, B-1, V] for the mask positions of blocks [b, B] placed after each row's context."""

    def draft_and_propose(
        self, block: Tensor, params: SamplingParams, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None]:
        """Draft tokens [b, B-1] and their proposal distribution q (None when greedy).

        The default is `draft` + `sampling.propose`; a backend may take greedy tokens from its graph so that
        only token ids leave its device.
        """
        return propose(self.draft(block), params, generator)
