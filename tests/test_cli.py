"""The `dflash-trt generate` command: output, JSON, and one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from dflash_trt.cli import main
from tiny import hf_config, save_hf_target, save_tiny_tokenizer, save_zlab_drafter


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    target = save_hf_target(root / "target", "qwen3")
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter(root / "drafter", hf_config("qwen3"), block_size=8, layer_ids=(0, 2))
    return target, drafter


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_json_matches_autoregressive(pair, capsys):
    target, drafter = pair
    common = ["generate", "--target", target, "--prompt", "w1 w2 w3", "--max-new-tokens", 20, "--json"]
    code, out, _ = run(capsys, *common, "--drafter", drafter, "--block-size", 4)
    assert code == 0
    spec = json.loads(out)
    code, out, _ = run(capsys, *common, "--no-drafter")
    ar = json.loads(out)
    assert spec["results"][0]["tokens"] == ar["results"][0]["tokens"]
    assert len(spec["results"][0]["tokens"]) == 20
    assert spec["summary"]["block_size"] == 4 and ar["summary"]["block_size"] == 1
    assert spec["results"][0]["text"].startswith("w")


def test_generate_streams_text_and_one_metrics_line(pair, capsys):
    target, drafter = pair
    code, out, err = run(
        capsys, "generate", "--target", target, "--drafter", drafter, "--prompt", "w5 w6", "--max-new-tokens", 12
    )
    assert code == 0
    assert len(out.split()) >= 1 and all(word.startswith("w") or word in ("<unk>",) for word in out.split())
    metrics = [line for line in err.splitlines() if "tau=" in line]
    assert len(metrics) == 1 and "dflash B=8" in metrics[0]


def test_prompts_file_batches(pair, capsys, tmp_path):
    target, drafter = pair
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"w{i} w{i + 1}", "max_new_tokens": 5 + i}) for i in range(3)))
    code, out, _ = run(
        capsys,
        "generate",
        "--target",
        target,
        "--drafter",
        drafter,
        "--prompts-file",
        prompts,
        "--batch-size",
        2,
        "--json",
    )
    assert code == 0
    assert [len(r["tokens"]) for r in json.loads(out)["results"]] == [5, 6, 7]


def _edit_config(src, dst, **changes):
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("dflash_"):
            cfg["dflash_config"][key[len("dflash_") :]] = value
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    "change,field",
    [
        ({"hidden_size": 32}, "hidden_size"),
        ({"vocab_size": 50}, "vocab_size"),
        ({"dflash_target_layer_ids": [0, 9]}, "target_layer_ids"),
        ({"dflash_mask_token_id": 97}, "mask_token_id"),
        ({"architectures": ["Qwen3ForCausalLM"]}, "architectures"),
    ],
)
def test_mismatched_drafter_is_one_line_exit_2(pair, capsys, tmp_path, change, field):
    target, drafter = pair
    bad = _edit_config(drafter, tmp_path / "bad", **change)
    code, out, err = run(capsys, "generate", "--target", target, "--drafter", bad, "--prompt", "w1")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and field in err and "config.json" in err


def test_block_size_above_trained(pair, capsys):
    target, drafter = pair
    code, _, err = run(
        capsys, "generate", "--target", target, "--drafter", drafter, "--prompt", "w1", "--block-size", 9
    )
    assert code == 2 and "--block-size" in err and "block_size 8" in err and err.count("\n") == 1


def test_prompt_longer_than_context(pair, capsys):
    target, drafter = pair
    code, _, err = run(capsys, "generate", "--target", target, "--drafter", drafter, "--prompt", " ".join(["w4"] * 600))
    assert code == 2 and "max_position_embeddings" in err and err.count("\n") == 1


def test_missing_and_truncated_safetensors(pair, capsys, tmp_path):
    import shutil

    target, drafter = pair
    missing = tmp_path / "missing"
    shutil.copytree(drafter, missing)
    (missing / "model.safetensors").unlink()
    code, _, err = run(capsys, "generate", "--target", target, "--drafter", missing, "--prompt", "w1")
    assert code == 2 and "safetensors" in err and str(missing) in err

    truncated = tmp_path / "truncated"
    shutil.copytree(drafter, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = run(capsys, "generate", "--target", target, "--drafter", truncated, "--prompt", "w1")
    assert code == 2 and "model.safetensors" in err and "truncated" in err and err.count("\n") == 1

    corrupt = tmp_path / "corrupt"
    shutil.copytree(drafter, corrupt)
    (corrupt / "model.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    code, _, err = run(capsys, "generate", "--target", target, "--drafter", corrupt, "--prompt", "w1")
    assert code == 2 and "model.safetensors" in err


def test_missing_target_directory(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "--target", tmp_path / "nope", "--prompt", "x")
    assert code == 2 and "nope" in err and err.count("\n") == 1


def test_real_process_exit_code_and_no_traceback(pair, tmp_path):
    target, _ = pair
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dflash_trt.cli",
            "generate",
            "--target",
            str(target),
            "--drafter",
            str(tmp_path / "absent"),
            "--prompt",
            "w1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "absent" in result.stderr
