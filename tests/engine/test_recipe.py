"""Recipes: defaults, the shipped recipes, and every bad recipe or input exiting 2 with one line and no output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from engine_paths import CONFIGS, RECIPES

from dflash_trt.cli import main
from dflash_trt.engine.recipe import FIELDS, BuildRecipe, load_recipe
from dflash_trt.errors import UserError

QWEN = ["--target", str(CONFIGS / "qwen3-8b"), "--drafter", str(CONFIGS / "qwen3-8b-dflash-b16")]
TRTLLM_NAMES = {"max_batch_size", "max_input_len", "max_seq_len", "tp_size"}  # TensorRT-LLM build/mapping names


def test_defaults_need_no_recipe():
    recipe = load_recipe(None)
    assert recipe == BuildRecipe()
    assert set(FIELDS) == {
        "max_batch_size",
        "max_input_len",
        "max_seq_len",
        "block_size",
        "dtype",
        "profiles",
        "gpu_archs",
        "tp_size",
        "attention",
    }
    assert TRTLLM_NAMES <= set(FIELDS)
    assert (recipe.attention, recipe.block_size, recipe.tp_size) == ("native", 0, 1)
    assert set(recipe.profiles) == {"prefill", "step"}


@pytest.mark.parametrize("path", sorted(RECIPES.glob("build_*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_load(path):
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == set(FIELDS), "shipped recipes spell out every field"
    assert load_recipe(path).to_dict() == {**BuildRecipe().to_dict(), **load_recipe(path).to_dict()}


def test_override_replaces_recipe_field(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("tp_size: 2\ndtype: fp16\n")
    assert load_recipe(path, {"tp_size": 4, "dtype": None}).tp_size == 4
    assert load_recipe(path, {"tp_size": None}).dtype == "fp16"


BAD = {  # name: (recipe text, extra CLI args, words the one-line error must contain)
    "unknown key": ("max_batch: 4\n", [], ["unknown field 'max_batch'", "known fields"]),
    "dtype fp8": ("dtype: fp8\n", [], ["field 'dtype'", "fp8", "fp32, bf16, fp16"]),
    "batch zero": ("max_batch_size: 0\n", [], ["field 'max_batch_size'", "1 or more"]),
    "batch string": ("max_batch_size: four\n", [], ["field 'max_batch_size'", "integer"]),
    "batch bool": ("max_batch_size: true\n", [], ["field 'max_batch_size'", "integer"]),
    "unknown profile": ("profiles: [prefill, decode]\n", [], ["unknown profile 'decode'"]),
    "profile key": ("profiles: {step: {opt_batch: 2}}\n", [], ["profiles.step", "unknown key 'opt_batch'"]),
    "no step profile": ("profiles: [prefill]\n", [], ["lacks 'step'"]),
    "opt above max": (
        "max_batch_size: 2\nprofiles: {step: {opt_batch_size: 3}}\n",
        [],
        ["profiles.step.opt_batch_size", "above its maximum 2"],
    ),
    "gpu arch": ("gpu_archs: [sm91]\n", [], ["field 'gpu_archs'", "sm90"]),
    "attention": ("attention: flash\n", [], ["field 'attention'", "native, plugin"]),
    "block one": ("block_size: 1\n", [], ["field 'block_size' is 1"]),
    "block above drafter": ("block_size: 17\n", [], ["field 'block_size' is 17", "trained with block_size 16"]),
    "tp not dividing heads": ("tp_size: 3\n", [], ["field 'tp_size'", "'num_attention_heads' 32", "not divisible"]),
    "--tp not dividing heads": ("", ["--tp", "5"], ["field 'tp_size'", "not divisible"]),
    "seq above model": ("max_seq_len: 65536\n", [], ["field 'max_seq_len' 65536", "max_position_embeddings 40960"]),
    "input above seq": ("max_input_len: 2048\nmax_seq_len: 2048\n", [], ["'max_input_len' 2048", "'max_seq_len'"]),
    "no room for a block": ("max_input_len: 1020\nmax_seq_len: 1024\n", [], ["no room for one block of 16"]),
    "not yaml": ("dtype: [fp16\n", [], ["not valid YAML"]),
    "not a mapping": ("- dtype\n", [], ["expected a mapping"]),
    "plugin head_dim": ("attention: plugin\n", ["--target", str(CONFIGS / "gpt-oss-120b")], None),
}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("name", BAD)
def test_bad_recipe_exits_2_and_leaves_nothing(name, tmp_path, capsys):
    text, extra, words = BAD[name]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    out = tmp_path / "engine"
    argv = ["build", *QWEN, "--config", str(recipe), "--output", str(out), *extra]
    if name == "plugin head_dim":  # gpt-oss + its drafter: head_dim 64 is allowed; make the drafter's 96
        drafter = tmp_path / "drafter"
        drafter.mkdir()
        cfg = (CONFIGS / "qwen3-8b-dflash-b16" / "config.json").read_text().replace('"head_dim": 128', '"head_dim": 96')
        (drafter / "config.json").write_text(cfg)
        argv = ["build", *QWEN[:2], "--drafter", str(drafter), "--config", str(recipe), "--output", str(out)]
        words = ["field 'attention' is plugin", "head_dim (64, 128)", "the drafter's is 96"]
    code, err = _run(argv, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("dflash-trt: error: "), err
    assert str(recipe) in err or name in ("--tp not dividing heads", "plugin head_dim") or "drafter" in err, err
    for word in words:
        assert word in err, (word, err)
    _assert_nothing_left(out)


def test_missing_recipe_file(tmp_path, capsys):
    code, err = _run(["build", *QWEN, "--config", str(tmp_path / "none.yaml"), "--output", str(tmp_path / "e")], capsys)
    assert code == 2 and "recipe file not found" in err
    _assert_nothing_left(tmp_path / "e")


def test_plugin_dtype_the_contract_lacks(tmp_path, capsys, monkeypatch):
    """Every contracted dtype is fp32/fp16/bf16 today; a contract without bf16 must refuse a bf16 plugin build."""
    import dataclasses

    from dflash_trt.plugins import contracts

    narrowed = dataclasses.replace(contracts.BLOCK_ATTENTION, type_params={"T": ("float16",)})
    monkeypatch.setattr(contracts, "BLOCK_ATTENTION", narrowed)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("attention: plugin\ndtype: bf16\n")
    code, err = _run(["build", *QWEN, "--config", str(recipe), "--output", str(tmp_path / "e")], capsys)
    assert code == 2 and "field 'dtype' is bf16 but DFlashBlockAttention supports float16" in err, err
    _assert_nothing_left(tmp_path / "e")


def test_plugin_library_missing_or_not_a_plugin(tmp_path, capsys):
    import torch

    cases = {
        tmp_path / "missing.so": "no such file",
        Path(torch.__file__).parent / "lib" / "libc10.so": "exports no 'getCreators'",
    }
    for lib, words in cases.items():
        code, err = _run(["build", *QWEN, "--output", str(tmp_path / "e"), "--plugin-lib", str(lib)], capsys)
        assert code == 2 and words in err and len(err.splitlines()) == 1, err
        _assert_nothing_left(tmp_path / "e")


def test_plugin_library_of_the_wrong_backend(tmp_path, capsys, monkeypatch, plugin_lib):
    """With datacenter TensorRT present, a host build of the plugins is refused (engines need the cuda build)."""
    from dflash_trt.engine import build

    monkeypatch.setattr(build, "datacenter_tensorrt", lambda: type("tensorrt", (), {"__version__": "10.14"}))
    code, err = _run(["build", *QWEN, "--output", str(tmp_path / "e"), "--plugin-lib", str(plugin_lib)], capsys)
    assert code == 2 and "a host build" in err and "need the cuda build" in err, err
    _assert_nothing_left(tmp_path / "e")


def test_output_exists_and_both_sources(tmp_path, capsys):
    (tmp_path / "e").mkdir()
    code, err = _run(["build", *QWEN, "--output", str(tmp_path / "e")], capsys)
    assert code == 2 and "already exists; pass --overwrite" in err
    code, err = _run(["build", "--checkpoint", str(tmp_path), *QWEN, "--output", str(tmp_path / "x")], capsys)
    assert code == 2 and "--checkpoint replaces" in err
    code, err = _run(["build", QWEN[0], QWEN[1], "--output", str(tmp_path / "x")], capsys)
    assert code == 2 and "both --target and --drafter" in err


def test_gpt_oss_is_planned_but_not_built(tmp_path, capsys):
    out = tmp_path / "e"
    code, err = _run(
        [
            "build",
            "--target",
            str(CONFIGS / "gpt-oss-120b"),
            "--drafter",
            str(CONFIGS / "gpt-oss-120b-dflash"),
            "--config",
            str(RECIPES / "build_gpt_oss_120b_tp8_b300.yaml"),
            "--output",
            str(out),
        ],
        capsys,
    )
    assert code == 2 and "planned from config.json only" in err and "--dry-run" in err, err
    _assert_nothing_left(out)


def test_recipe_errors_are_user_errors():
    with pytest.raises(UserError, match="unknown field 'nope'"):
        from dflash_trt.engine.recipe import recipe_from_dict

        recipe_from_dict({"nope": 1})
