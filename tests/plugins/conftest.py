"""Session fixtures that build the `plugins/` CMake project once and hand out its artifacts.

Builds go to ``plugins/build/host`` (DFLASH_TRT_CUDA=OFF), ``plugins/build/cuda`` (ON) and
``plugins/build/sanitize`` (DFLASH_TRT_SANITIZE=ON, the CTA harnesses and their ctest tests) and are reused
across sessions: configuring again is cheap and ``cmake --build`` only recompiles what changed. A file lock
(in scripts/build_plugins.sh, which scripts/setup.sh runs too) serialises concurrent builds of one directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
BUILD_ROOT = PLUGINS / "build"


@dataclass(frozen=True)
class PluginBuild:
    """Artifacts of one configured build directory."""

    dir: Path

    @property
    def plugin_library(self) -> Path:
        return self.dir / "libdflash_trt_plugins.so"

    @property
    def harness(self) -> Path:
        return self.dir / "dflash_trt_plugin_harness"

    @property
    def math_host(self) -> Path:
        return self.dir / "libdflash_trt_math_host.so"

    @property
    def math_cuda(self) -> Path:
        return self.dir / "libdflash_trt_math_cuda.so"


def find_nvcc() -> str | None:
    return shutil.which("nvcc") or next(
        (p for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc") if os.access(p, os.X_OK)), None
    )


def cmake_build(variant: str, targets: tuple[str, ...] = ()) -> PluginBuild:
    """Configure and build plugins/ into plugins/build/<variant> with scripts/build_plugins.sh, as
    scripts/setup.sh does (incremental after the first time); only ``targets`` when given."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    target_args = [arg for t in targets for arg in ("--target", t)]
    env = {**os.environ, "PYTHON": sys.executable, "JOBS": str(min(2, os.cpu_count() or 1))}
    cmd = [str(ROOT / "scripts" / "build_plugins.sh"), variant, *target_args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return PluginBuild(BUILD_ROOT / variant)


@pytest.fixture(scope="session")
def host_build() -> PluginBuild:
    """Host-only build: no CUDA needed; enqueue runs the kernels' math on host memory."""
    return cmake_build("host")


@pytest.fixture(scope="session")
def cuda_build() -> PluginBuild:
    """CUDA build (nvcc, sm_80/90/100/120 SASS + compute_80 PTX, warnings as errors); skipped without nvcc."""
    if find_nvcc() is None:
        pytest.skip("nvcc not found: the CUDA build of plugins/ needs the CUDA toolkit")
    return cmake_build("cuda")


SANITIZER_TARGETS = ("dflash_trt_cta_tsan", "dflash_trt_cta_asan_ubsan")


@pytest.fixture(scope="session")
def sanitize_build() -> PluginBuild:
    """The CTA harnesses (plugins/tests/cta) built under ThreadSanitizer and ASan + UBSan, with their ctest
    tests; only the targets the compiler's sanitizers allow are built (see plugins/CMakeLists.txt)."""
    build = cmake_build("sanitize", targets=("help",))  # configure only
    cache = (build.dir / "CMakeCache.txt").read_text()
    available = tuple(
        t
        for t, flag in zip(SANITIZER_TARGETS, ("DFLASH_TRT_HAS_TSAN", "DFLASH_TRT_HAS_ASAN_UBSAN"))
        if f"{flag}:INTERNAL=1" in cache
    )
    if available:
        cmake_build("sanitize", targets=available)
    return build
