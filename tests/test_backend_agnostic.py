"""The speculative loop runs on any backend: a numpy target (no torch model, no torch backend) through
the runner contract, with ragged acceptance and a backend-fused acceptance step."""

from __future__ import annotations

import numpy as np
import pytest

from dflash_trt.decoding.speculative import Request, generate
from fakes import FusedNumpyTarget, NumpyDrafter, NumpyTarget

VOCAB = 23


def _requests(batch: int, max_new: int = 25) -> list[Request]:
    rng = np.random.default_rng(batch)
    return [Request(rng.integers(0, VOCAB, size=int(n)).tolist(), max_new) for n in rng.integers(1, 9, size=batch)]


def _numpy_greedy(target: NumpyTarget, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding written directly against the numpy scorer (independent of the loop)."""
    seq = list(prompt)
    for _ in range(n):
        logits = target.w[seq[-1]] + target.u[(len(seq) - 1) % 7]
        seq.append(int(np.argmax(logits)))
    return seq[len(prompt) :]


@pytest.mark.parametrize("batch", [1, 3])
def test_autoregressive_loop_on_a_numpy_target(batch):
    target = NumpyTarget(VOCAB)
    requests = _requests(batch)
    gens = generate(target, None, requests)
    assert [g.tokens for g in gens] == [_numpy_greedy(target, r.prompt, r.max_new_tokens) for r in requests]


@pytest.mark.parametrize("target_cls", [NumpyTarget, FusedNumpyTarget])
@pytest.mark.parametrize("block", [2, 5, 8])
def test_speculative_loop_on_a_numpy_target_equals_greedy(target_cls, block):
    target = target_cls(VOCAB)
    requests = _requests(4)
    expected = [_numpy_greedy(target, r.prompt, r.max_new_tokens) for r in requests]
    drafter = NumpyDrafter([r.prompt + e for r, e in zip(requests, expected)], VOCAB, block, error_rate=0.3)
    target.verify_calls = 0
    gens = generate(target, drafter, requests)
    assert [g.tokens for g in gens] == expected
    assert len({tuple(g.step_lengths) for g in gens}) > 1  # rows accepted different prefixes
    if target_cls is FusedNumpyTarget:
        assert target.verify_calls == 0  # the loop used the backend's fused acceptance, not verify + accept
