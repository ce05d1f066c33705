"""Fixtures of the `build` tests: the plugin library, published configs and a tiny pair with the embedded pair's
attention shapes built once per session in fp16 and in bf16 (export + TensorRT-RTX CPU build of both graphs)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine_paths import ROOT, TINY_PAIR_SHAPES, write_recipe

from tiny import hf_config, save_hf_target, save_tiny_tokenizer, save_zlab_drafter


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
    """Through the real CLI (no datacenter TensorRT here), in fp16 and in bf16: a tiny pair with the embedded pair's
    head_dim (64) and GQA (ratio 3 in the target, 2 in the drafter), with the embedded recipe's profiles and
    plugin. (The embedded pair's own engine directory: tests/runtime/test_onnxruntime_embedded.py.)"""
    root = tmp_path_factory.mktemp("engines")
    shape = {"hidden": 192, "heads": 3, "kv_heads": 1, "head_dim": 64}
    target = save_hf_target(root / "target", "llama", **shape)
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter(
        root / "drafter", hf_config("llama", **shape), block_size=4, layer_ids=(0, 2), heads=4, kv_heads=2, head_dim=64
    )
    out = {}
    for dtype in ("fp16", "bf16"):
        recipe = write_recipe(root / f"tiny_{dtype}.yaml", dtype=dtype, **TINY_PAIR_SHAPES)
        proc = build_pair(target, drafter, recipe, root / f"tiny-{dtype}", plugin_lib, tokenizer=target)
        out[dtype] = Built(dtype, root / f"tiny-{dtype}", proc.returncode, proc.stderr)
    return out
