"""The models `build` exports per TP rank: sharded in memory from HF directories, or read from a `convert` checkpoint,
they are the same tensors (the checkpoint's sharding rules serve both)."""

from __future__ import annotations

import importlib.util
import sys

import torch
from engine_paths import ROOT

from dflash_trt.checkpoint.convert import convert
from dflash_trt.checkpoint.plan import make_plan
from dflash_trt.engine.build import _rank_models
from dflash_trt.engine.plan import make_build_plan, read_checkpoint, read_pair
from dflash_trt.engine.recipe import load_recipe


def _checkpoint_helpers():
    spec = importlib.util.spec_from_file_location("checkpoint_conftest", ROOT / "tests" / "checkpoint" / "conftest.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


def test_tp2_rank_models_from_hf_equal_those_of_a_converted_checkpoint(tmp_path):
    helpers = _checkpoint_helpers()
    target = helpers.build_target(tmp_path / "target", "qwen3", head_dim=16)
    drafter = helpers.build_drafter(tmp_path / "drafter")
    convert(make_plan(target, drafter, tp=2, pp=1, dtype="bf16"), tmp_path / "ckpt", log=lambda m: None)
    recipe = load_recipe(None, {"tp_size": 2, "dtype": "bf16", "max_seq_len": 1024})
    from_hf = make_build_plan(read_pair(target, drafter), recipe)
    from_ckpt = make_build_plan(read_checkpoint(tmp_path / "ckpt"), recipe)
    assert from_ckpt.pair.checkpoint_tp == 2 and from_hf.memory == from_ckpt.memory
    for rank in range(2):
        for a, b in zip(_rank_models(from_hf, rank), _rank_models(from_ckpt, rank)):
            sa, sb = a.state_dict(), b.state_dict()
            assert sa.keys() == sb.keys()
            for name in sa:
                assert sa[name].dtype == torch.bfloat16 and torch.equal(sa[name], sb[name]), (rank, name)
        # rank-local shapes: 8 heads / 2 KV heads of 16 -> 4 + 2*1 heads per rank
        assert _rank_models(from_hf, rank)[0].layers[0].attn.wqkv.weight.shape[0] == (4 + 2) * 16
