"""Test doubles for the runtime contract (named as such: they are not models)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dflash_trt.decoding.runners import Capacity, DrafterRunner, TargetRunner


class OracleDrafter(DrafterRunner):
    """A fake drafter that knows each row's reference continuation and proposes it.

    With `error_rate` > 0 it proposes a wrong token at that rate, so rows accept ragged prefixes.
    """

    def __init__(
        self,
        sequences: list[list[int]],
        vocab: int,
        block_size: int,
        mask_token_id: int = 0,
        error_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
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


class NumpyTarget(TargetRunner):
    """A fake target computed in numpy, not torch: proves the loop needs no torch backend or model.

    The "model" is a random bigram scorer: logits after token t at position p = W[t] + U[p % 7]. It keeps
    each row's committed tokens; verify scores a block after them and commit keeps a prefix (rollback is
    free). Features are the block's tokens as a numpy array: opaque to the loop, read by `NumpyDrafter`.
    """

    device = torch.device("cpu")

    def __init__(self, vocab: int, seed: int = 0, max_len: int = 4096) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(vocab, vocab)).astype(np.float32)
        self.u = rng.normal(size=(7, vocab)).astype(np.float32)
        self.vocab_size = vocab
        self.capacity = Capacity(max_batch=64, max_len=max_len)
        self.verify_calls = 0

    def reset(self, batch: int, max_len: int) -> None:
        self.rows: list[list[int]] = [[] for _ in range(batch)]
        self.pending: np.ndarray | None = None

    def scores(self, tokens: np.ndarray, start: np.ndarray) -> np.ndarray:
        """logits [b, t, V] after tokens [b, t] placed at positions start[b] + i."""
        positions = start[:, None] + np.arange(tokens.shape[1])
        return self.w[tokens] + self.u[positions % 7]

    def prefill(self, prompts: list[list[int]]) -> tuple[Tensor, np.ndarray]:
        for row, prompt in enumerate(prompts):
            self.rows[row] = list(prompt)
        last = np.array([p[-1] for p in prompts])[:, None]
        logits = self.scores(last, np.array([len(p) - 1 for p in prompts]))[:, 0]
        width = max(len(p) for p in prompts)
        return torch.from_numpy(logits), np.array([p + [0] * (width - len(p)) for p in prompts])

    def verify(self, block: Tensor) -> tuple[Tensor, np.ndarray]:
        self.verify_calls += 1
        self.pending = block.numpy().copy()
        start = np.array([len(r) for r in self.rows])
        return torch.from_numpy(self.scores(self.pending, start)), self.pending

    def commit(self, n: Tensor) -> None:
        for row, k in enumerate(n.tolist()):
            self.rows[row] += self.pending[row, :k].tolist()


class FusedNumpyTarget(NumpyTarget):
    """Greedy acceptance fused "on the device" (numpy): only lengths and next tokens come back."""

    def verify_and_accept(self, block, q, params, generator):
        assert params.greedy, "this fake fuses greedy acceptance only"
        self.pending = tokens = block.numpy().copy()
        start = np.array([len(r) for r in self.rows])
        best = self.scores(tokens, start).argmax(-1)  # [b, B]
        match = (tokens[:, 1:] == best[:, :-1]).astype(np.int64).cumprod(-1).sum(-1)
        next_token = best[np.arange(len(best)), match]
        return torch.from_numpy(match), torch.from_numpy(next_token), tokens


class NumpyDrafter(DrafterRunner):
    """A fake drafter over `NumpyTarget` features: proposes the continuation it was told, from the committed
    tokens it rebuilt out of the features (so the features really flow target -> drafter)."""

    def __init__(self, sequences: list[list[int]], vocab: int, block_size: int, error_rate: float = 0.0) -> None:
        self.oracle = OracleDrafter(sequences, vocab, block_size, error_rate=error_rate)
        self.block_size, self.mask_token_id = block_size, 0

    def reset(self, batch: int, max_len: int) -> None:
        self.oracle.reset(batch, max_len)
        self.seen: list[list[int]] = [[] for _ in range(batch)]

    def append_context(self, features: np.ndarray, n: Tensor) -> None:
        assert isinstance(features, np.ndarray)
        for row, k in enumerate(n.tolist()):
            self.seen[row] += features[row, :k].tolist()
        self.oracle.append_context(None, n)

    def draft(self, block: Tensor) -> Tensor:
        for row, seen in enumerate(self.seen):
            assert seen == self.oracle.sequences[row][: len(seen)], "features did not carry the committed tokens"
        return self.oracle.draft(block)
