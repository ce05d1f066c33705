"""Speculative sampling is lossless: emitted tokens follow the target's own sampling distribution.

We enumerate the exact joint distribution of the first three generated tokens of a tiny-vocab target
(8 tokens -> 512 outcomes) and run a chi-square goodness-of-fit test on N speculative samples drawn
with a random drafter (so drafts are both accepted and rejected). A correct sampler fails this test with
probability ALPHA = 1e-4 for a random seed; the seeds are fixed, so the outcome is deterministic. A
negative control (accept every draft) shows the test has power.
"""

from __future__ import annotations

import pytest
import torch

import distribution
from dflash_trt.decoding import runners
from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.pipeline import torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from dflash_trt.runtime.torch import TorchDrafter, TorchTarget
from distribution import chi_square_pvalue
from tiny import hf_config, save_hf_target, save_zlab_drafter

VOCAB, ALPHA, N, PROMPT = 8, 1e-4, 6000, [1, 4, 6]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampling")
    target = load_target(save_hf_target(root / "t", "llama", vocab=VOCAB, hidden=32, layers=2))
    drafter = load_drafter(
        save_zlab_drafter(
            root / "d",
            hf_config("llama", vocab=VOCAB, hidden=32, layers=2),
            block_size=4,
            layer_ids=(0, 1),
            mask_token_id=7,
        ),
        target.cfg,
    )
    with torch.no_grad():  # sharpen the random target so that top-k/top-p actually cut tokens
        target.lm_head.weight.mul_(4.0)
    return torch_runners(target, drafter)  # fp32 draft head: the bf16 copy is tested on its own


def exact_joint(target: TorchTarget, params: SamplingParams) -> torch.Tensor:
    """P(t1, t2, t3 | PROMPT) under AR sampling, shape [V, V, V]."""
    return distribution.exact_joint(target, params, PROMPT, VOCAB)


def sample_counts(target, drafter, params: SamplingParams) -> tuple[torch.Tensor, list]:
    return distribution.sample_counts(target, drafter, params, PROMPT, VOCAB, N)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=0.7, top_k=5, seed=2),
        SamplingParams(temperature=1.3, top_p=0.8, seed=3),
        SamplingParams(temperature=1.0, top_k=6, top_p=0.9, seed=4),
    ],
    ids=["t1", "topk", "topp", "topk_topp"],
)
def test_speculative_sampling_matches_target_distribution(pair, params):
    target, drafter = pair
    counts, gens = sample_counts(target, drafter, params)
    first_steps = torch.tensor([g.step_lengths[0] for g in gens])
    assert 0.05 < (first_steps > 1).float().mean() < 0.95  # both accept and reject paths are exercised
    assert chi_square_pvalue(counts, exact_joint(target, params)) > ALPHA


def test_bf16_draft_head_keeps_the_target_distribution(pair):
    """Drafts proposed through a bf16 LM head (q differs from the fp32 drafter's) are still corrected to p."""
    target, drafter = pair
    bf16 = TorchDrafter(drafter.model, drafter.embed, drafter.head, head_dtype=torch.bfloat16)
    params = SamplingParams(temperature=1.0, top_k=6, seed=7)
    counts, _ = sample_counts(target, bf16, params)
    assert chi_square_pvalue(counts, exact_joint(target, params)) > ALPHA


def test_autoregressive_sampling_matches_target_distribution(pair):
    target, _ = pair
    params = SamplingParams(temperature=1.0, seed=5)
    counts, _ = sample_counts(target, None, params)
    assert chi_square_pvalue(counts, exact_joint(target, params)) > ALPHA


def test_biased_acceptance_is_detected(pair, monkeypatch):
    """Negative control: a sampler that accepts every draft is not lossless, and the test says so."""
    target, drafter = pair
    real_accept = runners.accept

    def accept_all(drafts, q, logits, params, generator):
        _, bonus = real_accept(drafts, q, logits, params, generator)
        return torch.full_like(bonus, drafts.shape[1]), bonus

    monkeypatch.setattr(runners, "accept", accept_all)
    params = SamplingParams(temperature=1.0, seed=6)
    counts, _ = sample_counts(target, drafter, params)
    assert chi_square_pvalue(counts, exact_joint(target, params)) < ALPHA
