"""Interrupted conversions leave no partial output (SIGTERM, SIGINT); SIGKILL leaves a temp dir the next run removes.
Process-wide state the convert command changes (SIGINT handler, glibc mmap threshold) is restored afterwards.

The converter is stopped at a known point by patching its rank writer from the test side: in process with
monkeypatch, in a child process through the wrapper paused_convert.py. The product has no test hook.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dflash_trt.atomic import remove_stale
from dflash_trt.checkpoint import convert as convert_module
from dflash_trt.checkpoint.convert import (
    CONVERT_MMAP_THRESHOLD,
    GLIBC_DEFAULT_MMAP_THRESHOLD,
    M_MMAP_THRESHOLD,
    convert,
)
from dflash_trt.checkpoint.plan import make_plan
from dflash_trt.checkpoint.safetensors_io import RankWriter
from dflash_trt.cli import main

REPO = Path(__file__).parents[2]
WRAPPER = Path(__file__).with_name("paused_convert.py")
PIECES = 6  # rank pieces written before the interruption: 3 target tensors at tp 2, far from done


def convert_args(pair, out: Path) -> list[str]:
    return ["convert", "--target", str(pair[0]), "--drafter", str(pair[1]), "--output", str(out), "--tp", "2"]


def start(pair, out: Path) -> subprocess.Popen:
    """Run `dflash-trt convert` in a child that stops after PIECES pieces; return once it has stopped there."""
    cmd = [sys.executable, str(WRAPPER), str(PIECES), *convert_args(pair, out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith(f"paused after {PIECES} pieces"):
            break
    else:
        pytest.fail(f"converter exited with {proc.wait()} before writing {PIECES} pieces")
    return proc


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


class FakeGlibc:
    """Records mallopt calls instead of changing this test process's allocator."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


@pytest.fixture
def glibc(monkeypatch) -> FakeGlibc:
    fake = FakeGlibc()
    monkeypatch.setattr(convert_module, "_glibc", lambda: fake)
    return fake


SET = (M_MMAP_THRESHOLD, CONVERT_MMAP_THRESHOLD)
RESTORED = (M_MMAP_THRESHOLD, GLIBC_DEFAULT_MMAP_THRESHOLD)


def test_sigterm_removes_partial_output(pair, tmp_path):
    out = tmp_path / "ckpt"
    proc = start(pair, out)
    partial = tmp_path / f".ckpt.dflash-partial-{proc.pid}"
    assert leftovers(out) == [partial.name]
    assert (partial / "target" / "rank1.safetensors").is_file() and not (partial / "drafter").exists()
    proc.terminate()
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM; removed the partial output" in err and "Traceback" not in err
    assert not out.exists() and leftovers(out) == []


def test_ctrl_c_removes_partial_output(pair, tmp_path, monkeypatch, capsys, glibc):
    """In-process (saves a torch start-up): Ctrl-C arrives while the temp directory is half written."""
    out = tmp_path / "ckpt"
    seen = []  # per written piece: temp dirs present and mallopt calls so far
    write = RankWriter.write

    def write_then_ctrl_c(self, name, tensor):
        write(self, name, tensor)
        seen.append((leftovers(out), list(glibc.calls)))
        if len(seen) == PIECES:
            signal.raise_signal(signal.SIGINT)  # handled before raise_signal returns

    monkeypatch.setattr(RankWriter, "write", write_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when pytest runs in the background
    code = main(convert_args(pair, out))
    assert code == 128 + signal.SIGINT
    assert len(seen) == PIECES  # stopped at once: no piece written after the signal
    assert seen[-1] == ([f".ckpt.dflash-partial-{os.getpid()}"], [SET])  # mid-write, allocator tuned
    assert "interrupted by SIGINT; removed the partial output" in capsys.readouterr().err
    assert not out.exists() and leftovers(out) == []
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert glibc.calls == [SET, RESTORED]  # mmap threshold restored


def test_sigkill_leaves_only_a_temp_dir_that_the_next_run_removes(pair, tmp_path, capsys):
    out = tmp_path / "ckpt"
    proc = start(pair, out)
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stderr.close()
    partial = tmp_path / f".ckpt.dflash-partial-{proc.pid}"
    assert not out.exists() and leftovers(out) == [partial.name]
    assert (partial / "target" / "rank0.safetensors").is_file()

    assert main(convert_args(pair, out)) == 0
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


def test_only_the_convert_command_tunes_the_allocator(pair, tmp_path, glibc):
    """The glibc mmap threshold is process-wide: the library function leaves it alone; the command sets it for
    the conversion and restores glibc's default when done."""
    convert(make_plan(pair[0], pair[1], tp=2, pp=1, dtype="auto"), tmp_path / "library", log=lambda msg: None)
    assert glibc.calls == []
    assert main(convert_args(pair, tmp_path / "command")) == 0
    assert glibc.calls == [SET, RESTORED]
    assert (tmp_path / "command" / "dflash_trt_manifest.json").is_file()
