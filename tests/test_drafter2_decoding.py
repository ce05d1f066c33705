"""The unchanged speculative loop with DFlash2 drafters: greedy output equals AR, sampling is lossless."""

from __future__ import annotations

import pytest
import torch

from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.decoding.speculative import Request, generate
from dflash_trt.models.drafter2 import DFlash2Drafter
from dflash_trt.pipeline import torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from distribution import chi_square_pvalue, exact_joint, sample_counts
from tiny import hf_config, save_hf_target
from tiny_dflash2 import save_zlab_drafter2

KEYS = {
    "llama": dict(kernel=2, group=16, top_k=8, rank=8),
    "qwen3": dict(kernel=3, group=8, top_k=16, rank=8, is_causal=True, softcap=5.0, output_multiplier=0.7),
}


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def pair(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"dflash2-{request.param}")
    target = load_target(save_hf_target(root / "t", request.param))
    drafter = load_drafter(
        save_zlab_drafter2(
            root / "d", hf_config(request.param), block_size=16, layer_ids=(0, 2), **KEYS[request.param]
        ),
        target.cfg,
    )
    assert isinstance(drafter, DFlash2Drafter)
    return torch_runners(target, drafter)


def _requests(batch: int, seed: int, max_new: int = 30) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 20, (batch,), generator=g)
    return [Request(torch.randint(0, 97, (int(n),), generator=g).tolist(), max_new) for n in lens]


@pytest.mark.parametrize("block", [2, 5, 16])
@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_equals_autoregressive(pair, block, batch):
    target, drafter = pair
    requests = _requests(batch, seed=block * 10 + batch)
    ar = generate(target, None, requests)
    spec = generate(target, drafter, requests, block_size=block)
    assert [g.tokens for g in spec] == [g.tokens for g in ar]
    assert all(len(g.tokens) == 30 and g.finish_reason == "length" for g in spec)


VOCAB, ALPHA, N, PROMPT = 8, 1e-4, 6000, [1, 4, 6]


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """An 8-token vocab target and a DFlash2 drafter whose top-4 candidates cut half the vocab."""
    root = tmp_path_factory.mktemp("dflash2-sampling")
    target = load_target(save_hf_target(root / "t", "llama", vocab=VOCAB, hidden=32, layers=2))
    drafter = load_drafter(
        save_zlab_drafter2(
            root / "d",
            hf_config("llama", vocab=VOCAB, hidden=32, layers=2),
            block_size=4,
            layer_ids=(0, 1),
            mask_token_id=7,
            kernel=2,
            group=8,
            top_k=4,
            rank=4,
            codebook_std=1.0,
        ),
        target.cfg,
    )
    with torch.no_grad():  # sharpen the random target so that top-k/top-p actually cut tokens
        target.lm_head.weight.mul_(4.0)
    return torch_runners(target, drafter)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, seed=11),
        SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=12),
    ],
    ids=["t1", "topk_topp"],
)
def test_dflash2_sampling_matches_target_distribution(small_pair, params):
    target, drafter = small_pair
    counts, gens = sample_counts(target, drafter, params, PROMPT, VOCAB, N)
    first_steps = torch.tensor([g.step_lengths[0] for g in gens])
    assert 0.05 < (first_steps > 1).float().mean() < 0.95  # both accept and reject paths are exercised
    assert chi_square_pvalue(counts, exact_joint(target, params, PROMPT, VOCAB)) > ALPHA


def test_dflash2_proposals_stay_on_the_candidates(small_pair):
    """q is zero off the selector's top-k: sampled drafts are always candidates (and the loop copes with it)."""
    target, drafter = small_pair
    target.reset(1, 16)
    drafter.reset(1, 16)
    _, features = target.prefill([PROMPT])
    drafter.append_context(features, torch.tensor([len(PROMPT)]))
    out = drafter.draft(torch.tensor([[3, 7, 7, 7]]))
    assert (torch.isfinite(out).sum(-1) == 4).all()
