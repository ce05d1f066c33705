"""Every validation failure: exit code 2, one line naming the file and tensor/field, and no output left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dflash_trt.cli import main

from .conftest import read_source


def edit_config(directory: Path, **changes) -> Path:
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if key in ("target_layer_ids", "mask_token_id"):
            cfg["dflash_config"][key] = value
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
    return path


def edit_weights(directory: Path, **changes) -> Path:
    """Rewrite model.safetensors with tensors replaced (or dropped when the value is None); '__' stands for '.'."""
    path = directory / "model.safetensors"
    tensors = read_source(directory)
    for key, value in changes.items():
        name = key.replace("__", ".")
        assert name in tensors
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    save_file(tensors, path)
    return path


def run(tmp_path: Path, target: Path, drafter: Path, *extra: str, capsys) -> str:
    out = tmp_path / "ckpt"
    code = main(["convert", "--target", str(target), "--drafter", str(drafter), "--output", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("dflash-trt: error: ") and "\n" not in err and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")]  # no partial directory either
    return err


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(hidden_size=128), "'hidden_size' is 128 but the target's is 64"),
        (dict(vocab_size=300), "'vocab_size' is 300 but the target's is 250"),
        (dict(target_layer_ids=[0, 3]), "'dflash_config.target_layer_ids' has [3]"),
        (dict(mask_token_id=250), "'dflash_config.mask_token_id' 250 is outside the target vocab"),
        (dict(block_size=1), "'block_size' 1 is not usable"),
        (dict(num_target_layers=36), "'num_target_layers' is 36 but the target has 3"),
    ],
)
def test_incompatible_pair(pair, tmp_path, capsys, changes, field):
    target, drafter = pair
    path = edit_config(drafter, **changes)
    err = run(tmp_path, target, drafter, capsys=capsys)
    assert str(path) in err and field in err


def test_missing_tensor(pair, tmp_path, capsys):
    target, drafter = pair
    edit_weights(target, model__layers__1__mlp__up_proj__weight=None)
    err = run(tmp_path, target, drafter, capsys=capsys)
    assert f"{target}: missing tensor 'model.layers.1.mlp.up_proj.weight'" in err


def test_wrong_shape(pair, tmp_path, capsys):
    target, drafter = pair
    path = edit_weights(drafter, layers__0__self_attn__k_proj__weight=torch.zeros(16, 64))
    err = run(tmp_path, target, drafter, capsys=capsys)
    assert f"{path}: tensor 'layers.0.self_attn.k_proj.weight' has shape [16, 64]" in err and "[32, 64]" in err


def test_wrong_dtype(pair, tmp_path, capsys):
    target, drafter = pair
    path = edit_weights(target, model__norm__weight=torch.zeros(64, dtype=torch.int8))
    err = run(tmp_path, target, drafter, capsys=capsys)
    assert f"{path}: tensor 'model.norm.weight' has dtype I8" in err


def test_truncated_safetensors(pair, tmp_path, capsys):
    target, drafter = pair
    path = drafter / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    err = run(tmp_path, target, drafter, capsys=capsys)
    assert f"{path}: truncated" in err


def test_bad_json_header(pair, tmp_path, capsys):
    target, drafter = pair
    path = target / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[9:12] = b"\xff\xfe{"
    path.write_bytes(bytes(data))
    err = run(tmp_path, target, drafter, capsys=capsys)
    assert f"{path}: header is not valid JSON" in err


def test_bad_config_json(pair, tmp_path, capsys):
    target, drafter = pair
    (target / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"],')
    err = run(tmp_path, target, drafter, capsys=capsys)
    assert f"{target / 'config.json'}: not valid JSON" in err


def test_missing_shard_named_in_index(tiny_sources, tmp_path, capsys):
    target = shutil.copytree(tiny_sources["qwen3-sharded"], tmp_path / "target")
    shard = sorted(target.glob("model-*.safetensors"))[2]
    shard.unlink()
    err = run(tmp_path, target, tiny_sources["drafter"], capsys=capsys)
    assert f"{target / 'model.safetensors.index.json'}: names shard '{shard.name}', which is missing" in err


def test_no_weights_at_all(pair, tmp_path, capsys):
    target, drafter = pair
    (drafter / "model.safetensors").unlink()
    err = run(tmp_path, target, drafter, capsys=capsys)
    assert f"{drafter}: no model.safetensors" in err


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("--tp", "3"), "'num_attention_heads' 8 is not divisible"),
        (("--tp", "16"), "larger than"),
        (("--pp", "2"), "--pp 2: pipeline parallelism is not supported"),
    ],
)
def test_impossible_parallelism(pair, tmp_path, capsys, args, field):
    err = run(tmp_path, *pair, *args, capsys=capsys)
    assert field in err and ("config.json" in err or "--pp" in err)


def test_drafter_split_checked_too(pair, tmp_path, capsys):
    target, drafter = pair
    path = edit_config(drafter, intermediate_size=100)
    err = run(tmp_path, target, drafter, "--tp", "8", capsys=capsys)
    assert f"{path} 'intermediate_size' 100" in err


def test_existing_output_needs_overwrite(pair, tmp_path, capsys):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code = main(["convert", "--target", str(pair[0]), "--drafter", str(pair[1]), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"--output {out}: already exists; pass --overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_output_inside_a_source_is_refused(pair, tmp_path, capsys):
    target, drafter = pair
    code = main(
        ["convert", "--target", str(target), "--drafter", str(drafter), "--output", str(target / "trt"), "--overwrite"]
    )
    assert code == 2 and "overlaps the source directory" in capsys.readouterr().err
    code = main(
        ["convert", "--target", str(target), "--drafter", str(drafter), "--output", str(tmp_path), "--overwrite"]
    )
    assert code == 2 and "overlaps the source directory" in capsys.readouterr().err
    assert (target / "config.json").is_file() and not (target / "trt").exists()


def test_output_parent_must_exist_and_output_is_required(pair, tmp_path, capsys):
    target, drafter = pair
    out = tmp_path / "no" / "ckpt"
    assert main(["convert", "--target", str(target), "--drafter", str(drafter), "--output", str(out)]) == 2
    assert "parent directory" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert main(["convert", "--target", str(target), "--drafter", str(drafter)]) == 2
    assert "--output DIR is required" in capsys.readouterr().err
