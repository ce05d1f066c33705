"""Locate, load and register ``libdflash_trt_plugins.so``, the IPluginV3 library built from ``plugins/``."""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from types import ModuleType

from dflash_trt.errors import UserError
from dflash_trt.plugins.contracts import CONTRACTS

LIB_NAME = "libdflash_trt_plugins.so"
ENV_VAR = "DFLASH_TRT_PLUGIN_LIB"
SOURCE_ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = SOURCE_ROOT / "plugins" / "build"
BUILD_COMMANDS = {  # run from SOURCE_ROOT; see plugins/CMakeLists.txt
    "host": "cmake -S plugins -B plugins/build/host && cmake --build plugins/build/host -j",
    "cuda": "cmake -S plugins -B plugins/build/cuda -DDFLASH_TRT_CUDA=ON && cmake --build plugins/build/cuda -j",
}
BUILD_COMMAND = BUILD_COMMANDS["cuda"]


def find_plugin_library(backend: str | None = None) -> Path:
    """``$DFLASH_TRT_PLUGIN_LIB`` if set, else the newest ``plugins/build/**/libdflash_trt_plugins.so``.

    ``backend`` ("cuda" or "host") keeps only libraries built that way: a host build runs enqueue on
    host memory and is for CPU-only tests, never for a GPU engine.
    """
    if env := os.environ.get(ENV_VAR):
        path = Path(env)
        if not path.is_file():
            raise UserError(f"{ENV_VAR}={env}: no such file; point it at {LIB_NAME} or unset it")
        if backend and plugin_backend(path) != backend:
            raise UserError(f"{ENV_VAR}={env} is a {plugin_backend(path)} build; point it at a {backend} build")
        return path
    found = sorted(BUILD_DIR.rglob(LIB_NAME), key=lambda p: p.stat().st_mtime) if BUILD_DIR.is_dir() else []
    found = [p for p in found if backend is None or plugin_backend(p) == backend]
    if not found:
        kind = f"{backend} build of " if backend else ""
        raise UserError(
            f"no {kind}{LIB_NAME} under {BUILD_DIR}; build it from {SOURCE_ROOT} with "
            f"'{BUILD_COMMANDS.get(backend or 'cuda', BUILD_COMMAND)}' or set {ENV_VAR}"
        )
    return found[-1]


def plugin_backend(path: Path) -> str:
    """ "cuda" if the library's enqueue launches CUDA kernels, "host" if it runs the math on host memory."""
    fn = getattr(load_plugin_library(path), "dflashTrtPluginsBackend", None)
    if fn is None:
        raise UserError(f"{path}: exports no 'dflashTrtPluginsBackend'; rebuild it with '{BUILD_COMMAND}'")
    fn.restype = ctypes.c_char_p
    return fn().decode()


def load_plugin_library(path: Path | None = None) -> ctypes.CDLL:
    """dlopen the library (once per path) and check it exports TensorRT's ``getCreators`` entry point."""
    return _dlopen(path or find_plugin_library())


@functools.cache
def _dlopen(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise UserError(f"{path}: cannot be loaded ({exc}); rebuild it with '{BUILD_COMMAND}'") from exc
    if not hasattr(lib, "getCreators"):
        raise UserError(f"{path}: exports no 'getCreators'; it is not a TensorRT IPluginV3 plugin library")
    return lib


def register_plugins(trt: ModuleType, path: Path | None = None) -> Path:
    """Load the library into ``trt``'s plugin registry (``tensorrt`` or ``tensorrt_rtx``) unless its
    creators are already registered, and check every contracted op is there under its name, version and
    namespace. Returns the library path."""
    path = path or find_plugin_library()
    registry = trt.get_plugin_registry()

    def missing() -> list[str]:
        return [
            f"{op.namespace}::{op.name} v{op.version}"
            for op in CONTRACTS.values()
            if registry.get_creator(op.name, op.version, op.namespace) is None
        ]

    if missing() and registry.load_library(str(path)) is None:
        raise UserError(f"{path}: TensorRT's plugin registry could not load it; rebuild it with '{BUILD_COMMAND}'")
    if absent := missing():
        raise UserError(f"{path}: does not provide {', '.join(absent)}; rebuild it with '{BUILD_COMMAND}'")
    return path


def configure_builder(trt: ModuleType, config, *, aliased_plugin_io: bool = True) -> None:
    """What every TensorRT builder config holding these plugins needs: ``PreviewFeature.ALIASED_PLUGIN_IO_10_03``,
    so that the KV-append plugins' outputs alias their cache inputs (IPluginV3OneBuildV2::getAliasedInput) and
    the cache is updated in place. Without it TensorRT-RTX refuses to build such a network, and a TensorRT that
    built it anyway would hand the plugin separate output buffers, which its enqueue refuses (the plugin never
    copies the cache). ``aliased_plugin_io=False`` exists only to test that refusal."""
    config.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, aliased_plugin_io)
