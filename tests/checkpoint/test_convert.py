"""Full conversions of tiny random pairs: unsharded rank files equal the HF originals; manifest and inspect verify."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from dflash_trt.checkpoint.layout import drafter_entries, target_entries
from dflash_trt.checkpoint.safetensors_io import sha256_file
from dflash_trt.cli import main
from dflash_trt.config import DrafterConfig, TargetConfig

from .conftest import expected_tensors, read_source, read_unsharded


def convert(target, drafter, out, *extra) -> int:
    return main(["convert", "--target", str(target), "--drafter", str(drafter), "--output", str(out), *extra])


def check_output(out, target_dir, drafter_dir, dtype):
    target = TargetConfig.from_dir(target_dir)
    drafter = DrafterConfig.from_dir(drafter_dir)
    for role, src, entries in (
        ("target", target_dir, target_entries(target)),
        ("drafter", drafter_dir, drafter_entries(drafter)),
    ):
        got = read_unsharded(out, role)
        want = expected_tensors(src, entries, dtype)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].dtype == dtype, name
            assert torch.equal(got[name], want[name]), name
    manifest = json.loads((out / "dflash_trt_manifest.json").read_text())
    listed = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"dflash_trt_manifest.json"}
    assert set(manifest["files"]) == listed
    for rel, info in manifest["files"].items():
        assert sha256_file(out / rel) == info["sha256"]


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "llama-tied", "qwen3-sharded"])
def test_convert_roundtrip(tiny_sources, tmp_path, family, tp, capsys):
    out = tmp_path / "ckpt"
    assert convert(tiny_sources[family], tiny_sources["drafter"], out, "--tp", str(tp)) == 0
    check_output(
        out, tiny_sources[family], tiny_sources["drafter"], torch.float32
    )  # auto dtype: the target config's float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp directory left beside it

    t_cfg = json.loads((out / "target" / "config.json").read_text())
    d_cfg = json.loads((out / "drafter" / "config.json").read_text())
    hf = json.loads((tiny_sources[family] / "config.json").read_text())
    assert t_cfg["architecture"] == hf["architectures"][0]
    assert t_cfg["mapping"] == {"world_size": tp, "tp_size": tp, "pp_size": 1}
    assert (t_cfg["vocab_size"], t_cfg["dflash_trt"]["vocab_size_padded"]) == (250, {1: 250, 2: 250, 4: 252}[tp])
    assert t_cfg["qk_layernorm"] == family.startswith("qwen3")
    assert t_cfg["attn_bias"] == (family == "qwen2")
    assert t_cfg["tie_word_embeddings"] == family.endswith("tied")
    assert t_cfg["quantization"] == {"quant_algo": None, "kv_cache_quant_algo": None}
    assert d_cfg["architecture"] == "DFlashDraftModel"
    assert d_cfg["dflash"] | {"target": None} == {
        "block_size": 4,
        "mask_token_id": 249,
        "target_layer_ids": [0, 2],
        "num_target_layers": 3,
        "target": None,
    }
    embed = read_source(tiny_sources[family])["model.embed_tokens.weight"]
    fingerprint = d_cfg["dflash"]["target"]["embedding"]
    assert fingerprint == t_cfg["dflash_trt"]["embedding"]
    assert fingerprint["sha256"] == hashlib.sha256(embed.numpy().tobytes()).hexdigest()

    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    summary = capsys.readouterr().out
    assert f"tp {tp}" in summary and "block_size 4" in summary and "matches the target" in summary


def test_convert_tp8_with_dtype_cast(tiny_sources, tmp_path):
    """tp 8 over 2 KV heads (each duplicated 4x), vocab padded 250 -> 256, float32/bf16 sources cast to bf16."""
    out = tmp_path / "ckpt"
    assert convert(tiny_sources["qwen3"], tiny_sources["drafter"], out, "--tp", "8", "--dtype", "bf16") == 0
    check_output(out, tiny_sources["qwen3"], tiny_sources["drafter"], torch.bfloat16)
    assert json.loads((out / "target" / "config.json").read_text())["dflash_trt"]["vocab_size_padded"] == 256


def test_overwrite_replaces_only_after_success(tiny_sources, tmp_path):
    out = tmp_path / "ckpt"
    assert convert(tiny_sources["qwen3"], tiny_sources["drafter"], out, "--tp", "2") == 0
    (out / "stale-file").write_text("x")
    assert convert(tiny_sources["llama"], tiny_sources["drafter"], out, "--tp", "1", "--overwrite") == 0
    assert not (out / "stale-file").exists()
    check_output(out, tiny_sources["llama"], tiny_sources["drafter"], torch.float32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.fixture
def converted(tiny_sources, tmp_path):
    out = tmp_path / "ckpt"
    assert convert(tiny_sources["qwen3"], tiny_sources["drafter"], out, "--tp", "2") == 0
    return out


def test_inspect_names_a_corrupted_file(converted, capsys):
    path = converted / "target" / "rank1.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["inspect", str(converted)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "sha256" in err


def test_inspect_names_a_missing_or_unlisted_file(converted, capsys):
    (converted / "drafter" / "notes.txt").write_text("hi")
    assert main(["inspect", str(converted)]) == 2
    assert "notes.txt: not listed" in capsys.readouterr().err
    (converted / "drafter" / "notes.txt").unlink()
    (converted / "drafter" / "rank0.safetensors").unlink()
    assert main(["inspect", str(converted)]) == 2
    assert "rank0.safetensors: listed in dflash_trt_manifest.json but missing" in capsys.readouterr().err


def test_inspect_detects_a_drafter_converted_for_another_target(converted, tiny_sources, tmp_path, capsys):
    other = tmp_path / "other"
    assert convert(tiny_sources["qwen3-sharded"], tiny_sources["drafter"], other, "--tp", "2") == 0
    shutil.rmtree(converted / "drafter")
    shutil.copytree(other / "drafter", converted / "drafter")
    manifest_path = converted / "dflash_trt_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for rel in manifest["files"]:  # a user "fixing" the checksums does not make the pair match
        manifest["files"][rel] = {"sha256": sha256_file(converted / rel), "bytes": (converted / rel).stat().st_size}
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["inspect", str(converted)]) == 2
    assert "'dflash.target.embedding' does not match" in capsys.readouterr().err
