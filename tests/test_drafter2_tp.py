"""DFlash2 tensor parallel under mpirun (CPU, gloo): TP=2 drafts and greedy output equal TP=1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dflash_trt.cli import main
from mpi_worker import run
from test_tensor_parallel import HERE, mpi_env, mpirun
from tiny import hf_config, save_hf_target, save_tiny_tokenizer
from tiny_dflash2 import save_zlab_drafter2

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp2-dflash2")
    target = save_hf_target(root / "t", "qwen3", heads=8, kv_heads=2)
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter2(
        root / "d",
        hf_config("qwen3", heads=8, kv_heads=2),
        block_size=8,
        layer_ids=(0, 2),
        heads=4,
        kv_heads=2,
        kernel=2,
        group=16,
        top_k=8,
        rank=8,
    )
    for tp in (1, 2):
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


def test_dflash2_tp2_equals_tp1(checkpoints, tmp_path, capsys):
    expected = run(str(checkpoints / "tp1"))
    out = tmp_path / "out.pt"
    subprocess.run(
        [*mpirun(), "-n", "2", sys.executable, str(HERE / "mpi_worker.py"), str(checkpoints / "tp2"), str(out)],
        check=True,
        env=mpi_env(),
        timeout=300,
    )
    got = torch.load(out)
    finite = torch.isfinite(expected["draft"])
    assert torch.equal(torch.isfinite(got["draft"]), finite)  # same top-k candidates on every position
    assert (got["draft"][finite] - expected["draft"][finite]).abs().max() <= 1e-4
    for key in ("prefill", "verify"):
        assert (got[key] - expected[key]).abs().max() <= 1e-4, key
    args = ["generate", "--prompt", "w1 w2 w3", "--max-new-tokens", "24", "--json"]
    assert main([*args, "--target", str(checkpoints / "t"), "--drafter", str(checkpoints / "d")]) == 0
    hf_tokens = json.loads(capsys.readouterr().out)["results"][0]["tokens"]
    result = subprocess.run(
        [*mpirun(), "-n", "2", sys.executable, "-m", "dflash_trt.cli", *args, "--checkpoint", str(checkpoints / "tp2")],
        capture_output=True,
        text=True,
        env=mpi_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["results"][0]["tokens"] == hf_tokens
