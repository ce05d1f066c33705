"""Cached training data: recorded features equal a fresh target pass; shards round-trip; bad inputs are named."""

from __future__ import annotations

import pytest
import torch

from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.errors import UserError
from dflash_trt.runtime.loading import load_target
from dflash_trt.runtime.torch import TorchTarget
from dflash_trt.train import datagen
from dflash_trt.train.recipe import load_recipe
from dflash_trt.train.shards import read_shard, shard_files


def test_cached_features_and_labels_match_the_target(tiny_target, tiny_data):
    target = TorchTarget(load_target(tiny_target), capture=(0, 2))
    for kind in ("gen", "tf"):
        seqs = read_shard(sorted((tiny_data / "train").glob(f"shard-{kind}-*"))[0], (0, 2))
        for s in seqs:
            with torch.no_grad():
                target.reset(1, len(s.tokens))
                logits, features = target.verify(s.tokens[None])
                preds = logits[0].argmax(-1)
            n = len(s.tokens) - (kind == "gen")  # a response's last token has not been through the target yet
            assert (s.features[:n].float() - features[0, :n]).abs().max() < 2e-2
            # labels are the target's greedy tokens: generated text is greedy; teacher-forced labels are predictions
            assert torch.equal(s.labels[s.start :], preds[s.start - 1 : -1])


def test_shard_layer_ids_are_checked(tiny_data):
    with pytest.raises(UserError, match="target_layer_ids"):
        read_shard(shard_files(tiny_data / "train")[0], (1, 2))


def test_recipe_errors_name_the_field(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("output: out\ndata: [d]\nblock_sizes: 8\n")
    with pytest.raises(UserError, match="unknown field 'block_sizes'"):
        load_recipe(path)
    path.write_text("output: out\ndata: [d]\nsteps: many\n")
    with pytest.raises(UserError, match="field 'steps'"):
        load_recipe(path)
    path.write_text("data: [d]\n")
    with pytest.raises(UserError, match="missing field 'output'"):
        load_recipe(path)
    with pytest.raises(UserError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_generated_sequences_are_oversampled(tiny_data):
    from dflash_trt.train.dataset import load_sequences

    once = load_sequences([tiny_data], "train", (0, 2), min_len=4)
    thrice = load_sequences([tiny_data], "train", (0, 2), min_len=4, generated_repeat=3)
    gen = sum(s.kind == "gen" for s in once)
    assert gen and len(thrice) == len(once) + 2 * gen
    assert {s.kind for s in once} == {"gen", "tf"}


def test_a_later_data_run_numbers_its_shards_after_the_earlier_ones(tiny_target, tmp_path):
    """`make_train_data.py --skip N`: the shards of the prompts after the first N are those a whole run writes
    for them, under the same numbers, so a later stage can train on only the data its predecessors never saw."""
    from dflash_trt.train import datagen

    target = load_target(tiny_target)
    gen = torch.Generator().manual_seed(1)
    windows = [torch.randint(6, 97, (24,), generator=gen).tolist() for _ in range(6)]

    def make(chunk):
        with torch.inference_mode():
            return datagen.teacher_force(target, (0, 2), chunk, batch_size=2, first_anchor=2)

    datagen.write_shards(tmp_path / "whole", "tf", windows, 2, (0, 2), make)
    assert datagen.write_shards(tmp_path / "later", "tf", windows[4:], 2, (0, 2), make, first=2) == 1
    (later,) = shard_files(tmp_path / "later")
    assert later.name == "shard-tf-00002.safetensors"
    for a, b in zip(read_shard(later, (0, 2)), read_shard(tmp_path / "whole" / later.name, (0, 2))):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.features, b.features)


def test_in_flight_refill_answers_each_prompt_as_transformers_does(tiny_target):
    """generate_shard on 3 rows for 9 prompts whose answers end at different steps (stop tokens), so rows refill
    while others decode: every answer equals transformers' greedy generate of that prompt alone, and its features
    equal transformers' hidden states of the captured layers over the whole sequence."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_target).float().eval()
    gen = torch.Generator().manual_seed(3)
    prompts = [
        torch.randint(6, 97, (int(n),), generator=gen).tolist() for n in torch.randint(3, 12, (9,), generator=gen)
    ]

    def hf_answer(prompt, stops):
        out = hf.generate(
            torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=list(stops) or None, pad_token_id=0
        )
        return out[0, len(prompt) :].tolist()

    with torch.no_grad():
        free = [hf_answer(p, ()) for p in prompts]
        stops = (free[0][2], free[1][7], free[2][12])  # tokens the answers reach at different steps
        want = [hf_answer(p, stops) for p in prompts]
        seqs = datagen.generate_shard(
            TorchTarget(load_target(tiny_target), (0, 2)), prompts, 20, stops, SamplingParams(), 3
        )
        assert len({len(w) for w in want}) >= 3  # rows end at different steps: refill happens mid-flight
        for prompt, answer, s in zip(prompts, want, seqs):
            assert s.tokens.tolist() == prompt + answer and s.start == len(prompt)
            hs = hf(s.tokens[None], output_hidden_states=True).hidden_states
            n = len(s.tokens) - 1  # the answer's last token has not been through the target
            torch.testing.assert_close(
                s.features[:n].float(), torch.cat([hs[i + 1][0, :n] for i in (0, 2)], -1), atol=1e-2, rtol=1e-2
            )
