"""Fixtures of the `build` tests: the plugin library, published configs, and the embedded pair built once per session
in fp16 and in bf16 (export + TensorRT-RTX CPU build of both graphs: about a minute and a half each)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine_paths import ROOT, write_recipe


def _plugin_conftest():
    """tests/plugins/conftest.py, whose cmake_build makes (or reuses) plugins/build/host."""
    spec = importlib.util.spec_from_file_location("plugins_conftest", ROOT / "tests" / "plugins" / "conftest.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def plugin_lib() -> Path:
    """The host build of libdflash_trt_plugins.so (what TensorRT-RTX loads on a CPU-only host)."""
    return _plugin_conftest().cmake_build("host").plugin_library


@dataclass(frozen=True)
class Built:
    """One `dflash-trt build` run: its ENGINE_DIR and what it printed."""

    dtype: str
    engine_dir: Path
    returncode: int
    stderr: str


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dflash_trt.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=1800,
    )


def build_pair(
    target: Path, drafter: Path, recipe: Path, out: Path, plugin_lib: Path, tokenizer: Path | None = None
) -> subprocess.CompletedProcess:
    """`dflash-trt build` of an HF pair through the real CLI, tokenizer from `tokenizer` (default: the embedded
    target's)."""
    from dflash_trt.embedded import ensure_default_target

    return run_cli(
        "build",
        "--target",
        str(target),
        "--drafter",
        str(drafter),
        "--config",
        str(recipe),
        "--tokenizer",
        str(tokenizer or ensure_default_target(progress=False)),
        "--output",
        str(out),
        "--plugin-lib",
        str(plugin_lib),
    )


@pytest.fixture(scope="session")
def built(tmp_path_factory, plugin_lib) -> dict[str, Built]:
    """The embedded recipe built in fp16 and in bf16 through the real CLI (no datacenter TensorRT here)."""
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for dtype in ("fp16", "bf16"):
        recipe = write_recipe(root / f"smollm2_{dtype}.yaml", dtype=dtype)
        engine_dir = root / f"smollm2-{dtype}"
        proc = run_cli("build", "--config", str(recipe), "--output", str(engine_dir), "--plugin-lib", str(plugin_lib))
        out[dtype] = Built(dtype, engine_dir, proc.returncode, proc.stderr)
    return out
