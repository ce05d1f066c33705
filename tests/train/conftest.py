"""Fixtures for training tests: a tiny random Llama target and cached training data made from it."""

from __future__ import annotations

import pytest
import torch

from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.runtime.loading import load_target
from dflash_trt.runtime.torch import TorchTarget
from dflash_trt.train import datagen
from dflash_trt.train.recipe import recipe_from_dict
from tiny import save_hf_target

LAYER_IDS = (0, 2)
MASK = 5


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory):
    return save_hf_target(
        tmp_path_factory.mktemp("target"), "llama", vocab=97, hidden=64, layers=4, heads=4, kv_heads=2
    )


@pytest.fixture(scope="session")
def tiny_data(tiny_target, tmp_path_factory):
    """Teacher-forced random windows plus target-generated responses, split into train/ and val/."""
    out = tmp_path_factory.mktemp("data")
    target = load_target(tiny_target)
    gen = torch.Generator().manual_seed(0)
    windows = [
        torch.randint(6, 97, (int(n),), generator=gen).tolist() for n in torch.randint(24, 48, (12,), generator=gen)
    ]
    prompts = [
        torch.randint(6, 97, (int(n),), generator=gen).tolist() for n in torch.randint(3, 9, (6,), generator=gen)
    ]
    with torch.inference_mode():
        tf = lambda chunk: datagen.teacher_force(target, LAYER_IDS, chunk, batch_size=4, first_anchor=2)  # noqa: E731
        runner = TorchTarget(target, LAYER_IDS)
        gen_fn = lambda chunk: datagen.generate_shard(runner, chunk, 24, (), SamplingParams(), 4)  # noqa: E731
        datagen.write_shards(out / "train", "tf", windows[:8], 4, LAYER_IDS, tf)
        datagen.write_shards(out / "val", "tf", windows[8:], 4, LAYER_IDS, tf)
        datagen.write_shards(out / "train", "gen", prompts, 3, LAYER_IDS, gen_fn)
    return out


@pytest.fixture
def tiny_recipe():
    """make(target, data, output, **overrides) -> a fast tiny training Recipe."""
    return _tiny_recipe


def _tiny_recipe(target, data, output, **overrides):
    raw = dict(
        output=str(output),
        data=[str(data)],
        target=str(target),
        num_layers=2,
        intermediate_size=136,
        block_size=4,
        mask_token_id=MASK,
        target_layer_ids=list(LAYER_IDS),
        init_from_target_layers=[2, 3],
        anchors_per_seq=8,
        max_seq_len=40,
        batch_size=4,
        steps=6,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        autocast_bf16=False,
        threads=1,
        checkpoint_every=3,
        eval_every=3,
        seed=7,
    )
    return recipe_from_dict({**raw, **overrides})
