"""Session fixtures that build the `plugins/` CMake project once and hand out its artifacts.

Builds go to ``plugins/build/host`` (DFLASH_TRT_CUDA=OFF), ``plugins/build/cuda`` (ON) and
``plugins/build/sanitize`` (DFLASH_TRT_SANITIZE=ON, the CTA harnesses and their ctest tests) and are reused
across sessions: configuring again is cheap and ``cmake --build`` only recompiles what changed. A file lock
serialises concurrent pytest processes building the same directory.
"""

from __future__ import annotations

import fcntl
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


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")


def cmake_build(variant: str, *options: str, targets: tuple[str, ...] = ()) -> PluginBuild:
    """Configure and build plugins/ into plugins/build/<variant> (incremental after the first time);
    only ``targets`` when given."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    build_dir = BUILD_ROOT / variant
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BUILD_ROOT / f".{variant}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _run(
            [  # re-running it on a configured directory is cheap and keeps the options current
                cmake,
                "-S",
                str(PLUGINS),
                "-B",
                str(build_dir),
                f"-DPython3_EXECUTABLE={sys.executable}",
                f"-DDFLASH_TRT_HEADERS_CACHE={BUILD_ROOT / '_deps' / 'kernel-lens'}",
                "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
                *options,
            ]
        )
        target_args = [arg for t in targets for arg in ("--target", t)]
        _run([cmake, "--build", str(build_dir), "-j", str(min(2, os.cpu_count() or 1)), *target_args])
    return PluginBuild(build_dir)


@pytest.fixture(scope="session")
def host_build() -> PluginBuild:
    """Host-only build: no CUDA needed; enqueue runs the kernels' math on host memory."""
    return cmake_build("host")


@pytest.fixture(scope="session")
def cuda_build() -> PluginBuild:
    """CUDA build (nvcc, sm_80/90/100/120 SASS + compute_80 PTX, warnings as errors); skipped without nvcc."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA build of plugins/ needs the CUDA toolkit")
    return cmake_build("cuda", "-DDFLASH_TRT_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}")


SANITIZER_TARGETS = ("dflash_trt_cta_tsan", "dflash_trt_cta_asan_ubsan")


@pytest.fixture(scope="session")
def sanitize_build() -> PluginBuild:
    """The CTA harnesses (plugins/tests/cta) built under ThreadSanitizer and ASan + UBSan, with their ctest
    tests; only the targets the compiler's sanitizers allow are built (see plugins/CMakeLists.txt)."""
    build = cmake_build("sanitize", "-DDFLASH_TRT_SANITIZE=ON", targets=("help",))  # configure only
    cache = (build.dir / "CMakeCache.txt").read_text()
    available = tuple(
        t
        for t, flag in zip(SANITIZER_TARGETS, ("DFLASH_TRT_HAS_TSAN", "DFLASH_TRT_HAS_ASAN_UBSAN"))
        if f"{flag}:INTERNAL=1" in cache
    )
    if available:
        cmake_build("sanitize", "-DDFLASH_TRT_SANITIZE=ON", targets=available)
    return build
