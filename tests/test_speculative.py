"""Greedy speculative decoding emits exactly the target's greedy tokens, on many shapes."""

from __future__ import annotations

import pytest
import torch

from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.decoding.speculative import Request, generate
from dflash_trt.errors import UserError
from dflash_trt.pipeline import torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from dflash_trt.runtime.torch import TorchDrafter
from fakes import OracleDrafter
from tiny import hf_config, save_hf_target, save_zlab_drafter


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def pair(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    target = load_target(save_hf_target(root / "t", request.param))
    drafter = load_drafter(
        save_zlab_drafter(root / "d", hf_config(request.param), block_size=16, layer_ids=(0, 2)), target.cfg
    )
    return torch_runners(target, drafter)  # fp32 draft head: the bf16 copy is tested on its own


def _requests(batch: int, seed: int, max_new: int = 30, stop=()) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 20, (batch,), generator=g)
    return [Request(torch.randint(0, 97, (int(n),), generator=g).tolist(), max_new, tuple(stop)) for n in lens]


@pytest.mark.parametrize("block", [2, 3, 5, 8, 16])
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_greedy_equals_autoregressive(pair, block, batch):
    target, drafter = pair
    requests = _requests(batch, seed=block * 10 + batch)
    ar = generate(target, None, requests)
    spec = generate(target, drafter, requests, block_size=block)
    assert [g.tokens for g in spec] == [g.tokens for g in ar]
    assert all(len(g.tokens) == 30 and g.finish_reason == "length" for g in spec)


@pytest.mark.parametrize("block", [4, 16])
@pytest.mark.parametrize("batch", [1, 3])
def test_bf16_draft_head_keeps_greedy_output(pair, block, batch):
    """The CPU pipeline's bf16 copy of the LM head for drafts changes proposals at most, never the output."""
    target, drafter = pair
    bf16 = TorchDrafter(drafter.model, drafter.embed, drafter.head, head_dtype=torch.bfloat16)
    requests = _requests(batch, seed=block + batch)
    ar = generate(target, None, requests)
    spec = generate(target, bf16, requests, block_size=block)
    assert [g.tokens for g in spec] == [g.tokens for g in ar]
    for runner in (target, bf16, drafter):
        runner.reset(1, 64)
    _, features = target.prefill([requests[0].prompt])
    for d in (bf16, drafter):
        d.append_context(features, torch.tensor([len(requests[0].prompt)]))
    block_ids = torch.tensor([[5] + [drafter.mask_token_id] * (block - 1)])
    logits16, logits32 = bf16.draft(block_ids), drafter.draft(block_ids)
    assert logits16.dtype == torch.bfloat16 and logits32.dtype == torch.float32
    torch.testing.assert_close(logits16.float(), logits32, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("block", [4, 16])
def test_stop_tokens_hit_mid_block(pair, block):
    target, _ = pair
    requests = _requests(3, seed=7, max_new=40)
    ar = generate(target, None, requests)
    # Stop each row at a token it produces mid-way; an oracle drafter makes that token land mid-block.
    stops = [(g.tokens[17],) for g in ar]
    stopped = [Request(r.prompt, r.max_new_tokens, s) for r, s in zip(requests, stops)]
    expected = generate(target, None, stopped)
    oracle = OracleDrafter([r.prompt + g.tokens for r, g in zip(requests, ar)], 97, block)
    spec = generate(target, oracle, stopped)
    assert [g.tokens for g in spec] == [g.tokens for g in expected]
    for g, s in zip(spec, stops):
        assert g.finish_reason == "stop" and g.tokens[-1] == s[0] and s[0] not in g.tokens[:-1]


@pytest.mark.parametrize("block", [2, 4, 7, 16])
def test_oracle_drafter_reaches_full_blocks(pair, block):
    target, _ = pair
    steps = 3
    requests = _requests(2, seed=block, max_new=1 + steps * block)  # first token comes from prefill
    ar = generate(target, None, requests)
    oracle = OracleDrafter([r.prompt + g.tokens for r, g in zip(requests, ar)], 97, block)
    spec = generate(target, oracle, requests)
    assert [g.tokens for g in spec] == [g.tokens for g in ar]
    assert all(g.tau == block and g.step_lengths == [block] * steps for g in spec)


def test_ragged_acceptance_with_noisy_oracle(pair):
    target, _ = pair
    requests = _requests(4, seed=3, max_new=60)
    ar = generate(target, None, requests)
    oracle = OracleDrafter([r.prompt + g.tokens for r, g in zip(requests, ar)], 97, 8, error_rate=0.25)
    spec = generate(target, oracle, requests)
    assert [g.tokens for g in spec] == [g.tokens for g in ar]
    assert len({tuple(g.step_lengths) for g in spec}) > 1  # rows really accepted different prefixes
    assert 1 < sum(g.tau for g in spec) / 4 < 8


def test_block_size_above_trained_is_refused(pair):
    target, drafter = pair
    with pytest.raises(UserError, match="block_size 16"):
        generate(target, drafter, _requests(1, 0), block_size=17)


def test_prompt_longer_than_context_is_refused(pair):
    target, drafter = pair
    with pytest.raises(UserError, match="max_position_embeddings"):
        generate(target, drafter, [Request([1] * 500, 20)])


def test_sampling_is_reproducible_with_a_seed(pair):
    target, drafter = pair
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=123)
    a = generate(target, drafter, _requests(2, 1), params, block_size=4)
    b = generate(target, drafter, _requests(2, 1), params, block_size=4)
    assert [g.tokens for g in a] == [g.tokens for g in b]


class RecordingDrafter(TorchDrafter):
    """The real torch drafter, keeping each step's context length, block and drafts (a spy, not a mock)."""

    def __init__(self, runner: TorchDrafter) -> None:
        super().__init__(runner.model, runner.embed, runner.head)
        self.calls: list[tuple[int, list[int], list[int]]] = []

    def draft(self, block: torch.Tensor) -> torch.Tensor:
        logits = super().draft(block)
        self.calls.append((int(self.caches.lens[0]), block[0].tolist(), logits[0].argmax(-1).tolist()))
        return logits


@pytest.mark.parametrize("block", [3, 8])
def test_every_step_drafts_like_a_fresh_drafter_on_the_committed_tokens(pair, block):
    """Each step's draft is what a drafter prefilled from scratch with the committed tokens proposes for
    [last token, MASK ...]: the loop's incremental context is exact and no earlier draft leaks into a block
    (a block still holding the previous step's drafts lowered acceptance without changing the output)."""
    target, drafter = pair
    spy = RecordingDrafter(drafter)
    (request,) = _requests(1, seed=block)
    (gen,) = generate(target, spy, [request], block_size=block)
    tokens = request.prompt + gen.tokens
    assert len(spy.calls) == len(gen.step_lengths) > 3
    fresh = TorchDrafter(drafter.model, drafter.embed, drafter.head)
    for context, block_ids, drafts in spy.calls:
        assert block_ids == [tokens[context]] + [drafter.mask_token_id] * (block - 1)
        target.reset(1, context + block)
        fresh.reset(1, context + block)
        _, features = target.prefill([tokens[:context]])
        fresh.append_context(features, torch.tensor([context]))
        assert fresh.draft(torch.tensor([block_ids]))[0].argmax(-1).tolist() == drafts
