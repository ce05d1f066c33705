"""Test doubles for the drafter side of the runtime contract (named as such: they are not models)."""

from __future__ import annotations

import torch
from torch import Tensor


class OracleDrafter:
    """A fake drafter that knows each row's reference continuation and proposes it.

    With `error_rate` > 0 it proposes a wrong token at that rate, so rows accept ragged prefixes.
    """

    def __init__(self, sequences: list[list[int]], vocab: int, block_size: int, mask_token_id: int = 0,
                 error_rate: float = 0.0, seed: int = 0) -> None:
        self.sequences, self.vocab, self.block_size, self.mask_token_id = sequences, vocab, block_size, mask_token_id
        self.error_rate = error_rate
        self.generator = torch.Generator().manual_seed(seed)

    def reset(self, batch: int, max_len: int) -> None:
        self.lens = torch.zeros(batch, dtype=torch.long)

    def append_context(self, features: Tensor, n: Tensor) -> None:
        self.lens += n

    def draft(self, block: Tensor) -> Tensor:
        b, size = block.shape
        logits = torch.zeros(b, size - 1, self.vocab)
        for row in range(b):
            for k in range(1, size):
                pos = int(self.lens[row]) + k
                seq = self.sequences[row]
                token = seq[pos] if pos < len(seq) else 0
                if torch.rand(1, generator=self.generator).item() < self.error_rate:
                    token = (token + 1) % self.vocab
                logits[row, k - 1, token] = 10.0
        return logits
