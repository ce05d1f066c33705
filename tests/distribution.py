"""Exact sampling distributions of a tiny-vocab target and a chi-square goodness-of-fit test, shared by the
speculative-sampling tests (v1 and DFlash2 drafters)."""

from __future__ import annotations

import itertools

import torch

from dflash_trt.decoding.sampling import SamplingParams, probabilities
from dflash_trt.decoding.speculative import Request, generate
from dflash_trt.runtime.torch import TorchTarget


def exact_joint(target: TorchTarget, params: SamplingParams, prompt: list[int], vocab: int) -> torch.Tensor:
    """P(t1, t2, t3 | prompt) under AR sampling, shape [V, V, V]."""
    seqs = torch.tensor([prompt + [a, b] for a, b in itertools.product(range(vocab), repeat=2)])
    runner = TorchTarget(target.model)
    runner.reset(len(seqs), seqs.shape[1])
    with torch.no_grad():
        logits, _ = runner.verify(seqs)
        p = probabilities(logits[:, -3:], params)  # [V*V, 3, V]
    p1 = p[0, 0]
    p2 = p[::vocab, 1]  # rows with t1 = a (any t2): the t2 distribution given t1
    p3 = p[:, 2].view(vocab, vocab, vocab)
    return p1[:, None, None] * p2[:, :, None] * p3


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    counts, probs = counts.flatten().double(), probs.flatten().double()
    assert counts[probs == 0].sum() == 0, "sampled a token the target gives zero probability"
    expected = probs * counts.sum()
    big = expected >= 5  # pool sparse cells so the chi-square approximation holds
    obs = torch.cat([counts[big], counts[~big & (probs > 0)].sum()[None]])
    exp = torch.cat([expected[big], expected[~big & (probs > 0)].sum()[None]])
    obs, exp = obs[exp > 0], exp[exp > 0]
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.double), stat / 2))


def sample_counts(
    target, drafter, params: SamplingParams, prompt: list[int], vocab: int, n: int
) -> tuple[torch.Tensor, list]:
    """Counts [V, V, V] of the first three tokens of n generations of `prompt` (one batch), and the generations."""
    gens = generate(target, drafter, [Request(prompt, 3)] * n, params)
    counts = torch.zeros(vocab, vocab, vocab)
    for g in gens:
        counts[tuple(g.tokens)] += 1
    return counts, gens
