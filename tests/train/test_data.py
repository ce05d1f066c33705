"""Cached training data: recorded features equal a fresh target pass; shards round-trip; bad inputs are named."""

from __future__ import annotations

import pytest
import torch

from dflash_trt.errors import UserError
from dflash_trt.runtime.loading import load_target
from dflash_trt.runtime.torch import TorchTarget
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
