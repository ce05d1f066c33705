"""Interrupted conversions leave no partial output (SIGTERM, SIGINT); SIGKILL leaves a temp dir the next run removes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dflash_trt.cli import main
from dflash_trt.checkpoint.convert import PAUSE_ENV, remove_stale

REPO = Path(__file__).parents[2]


def start(pair, out: Path) -> subprocess.Popen:
    """Run the converter slowed to ~2 s (test hook) and return once it reported its temp directory."""
    cmd = [
        sys.executable,
        "-m",
        "dflash_trt.cli",
        "convert",
        "--target",
        str(pair[0]),
        "--drafter",
        str(pair[1]),
        "--output",
        str(out),
        "--tp",
        "2",
    ]
    env = {**os.environ, PAUSE_ENV: "0.04", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "writing" in line:
            break
    else:
        pytest.fail(f"converter exited with {proc.wait()} before writing")
    time.sleep(0.3)  # well into the tensors, far from done
    return proc


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_sigterm_removes_partial_output(pair, tmp_path):
    out = tmp_path / "ckpt"
    proc = start(pair, out)
    assert leftovers(out) == [f".ckpt.dflash-partial-{proc.pid}"]
    proc.terminate()
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM; removed the partial output" in err and "Traceback" not in err
    assert not out.exists() and leftovers(out) == []


def test_ctrl_c_removes_partial_output(pair, tmp_path, monkeypatch, capsys):
    """In-process (saves a torch start-up): SIGINT is sent only once the handlers are in place (temp dir exists)."""
    out = tmp_path / "ckpt"
    monkeypatch.setenv(PAUSE_ENV, "0.04")

    def interrupt_when_writing() -> None:
        while not leftovers(out):
            time.sleep(0.01)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when pytest runs in the background
    threading.Thread(target=interrupt_when_writing, daemon=True).start()
    code = main(["convert", "--target", str(pair[0]), "--drafter", str(pair[1]), "--output", str(out), "--tp", "2"])
    assert code == 128 + signal.SIGINT
    assert "interrupted by SIGINT; removed the partial output" in capsys.readouterr().err
    assert not out.exists() and leftovers(out) == []
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_sigkill_leaves_only_a_temp_dir_that_the_next_run_removes(pair, tmp_path, capsys):
    out = tmp_path / "ckpt"
    proc = start(pair, out)
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stderr.close()
    partial = tmp_path / f".ckpt.dflash-partial-{proc.pid}"
    assert not out.exists() and leftovers(out) == [partial.name]
    assert (partial / "target" / "rank0.safetensors").is_file()

    assert (
        main(["convert", "--target", str(pair[0]), "--drafter", str(pair[1]), "--output", str(out), "--tp", "2"]) == 0
    )
    assert f"removed stale partial output {partial}" in capsys.readouterr().err
    assert leftovers(out) == [] and (out / "dflash_trt_manifest.json").is_file()


def test_stale_cleanup_spares_running_conversions(tmp_path):
    out = tmp_path / "ckpt"
    alive = tmp_path / ".ckpt.dflash-partial-1"  # pid 1 always runs: a conversion in progress
    dead = tmp_path / ".ckpt.dflash-partial-99999999"  # above pid_max: its process is gone
    other = tmp_path / ".other.dflash-partial-99999999"  # another output's temp dir
    for path in (alive, dead, other):
        path.mkdir()
    assert remove_stale(out) == [dead]
    assert alive.is_dir() and other.is_dir() and not dead.exists()
