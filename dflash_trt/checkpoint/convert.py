"""Streaming conversion of a target + drafter pair into the TensorRT-LLM checkpoint layout.

Safety: everything is validated (configs, pair, splits, every source header) before anything is
written; the output is written atomically (`dflash_trt.atomic`: a partial directory renamed into place
when complete, removed on any failure or caught signal, cleaned by the next run after a SIGKILL).

Memory: source tensors are memory-mapped one entry at a time (q, k, v together for a fused qkv) and
each rank's piece is cast and written at once, so the peak is about one source tensor plus its cast
copy (<= 2x the largest tensor) on top of the interpreter + torch baseline. That figure assumes glibc
returns each freed buffer to the OS at once: `dflash-trt convert` runs inside `large_frees_unmapped()`
(process-wide, so the library function `convert` does not set it itself).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dflash_trt import __version__
from dflash_trt.atomic import atomic_directory
from dflash_trt.checkpoint.plan import ModelPlan, Plan, human_bytes
from dflash_trt.checkpoint.safetensors_io import RankWriter, SourceCheckpoint, sha256_file, tensor_bytes
from dflash_trt.checkpoint.sharding import shard
from dflash_trt.checkpoint.trtllm_config import FORMAT_VERSION, drafter_config, target_config
from dflash_trt.checkpoint.validate import check_sources
from dflash_trt.errors import UserError

MANIFEST = "dflash_trt_manifest.json"
EMBEDDING = "transformer.vocab_embedding.weight"
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
GLIBC_DEFAULT_MMAP_THRESHOLD = 128 * 1024  # its initial value (malloc.c: DEFAULT_MMAP_THRESHOLD)
CONVERT_MMAP_THRESHOLD = 1 << 20


def _glibc() -> Any:
    """The C library if it is glibc (M_MMAP_THRESHOLD is a glibc mallopt parameter), else None."""
    with suppress(OSError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt"):
            return libc
    return None


@contextmanager
def large_frees_unmapped() -> Iterator[None]:
    """While active, glibc serves every buffer >= 1 MiB with its own mmap and returns it to the OS when freed.

    By default glibc raises its mmap threshold after the first large free; later 10-100 MB buffers
    (each fused qkv piece, each cast) then come from a heap that fragments, and RSS grew by about one
    qkv per layer. A fixed threshold keeps peak memory at the tensor in flight.

    The setting is process-wide, so only the `convert` command sets it, around its conversion. On exit the
    threshold goes back to 128 KiB, glibc's initial value. glibc can neither report the threshold in force
    nor turn its dynamic raising back on once mallopt set one, so the process keeps a fixed 128 KiB
    threshold afterwards (allocations above it stay mmap-served). No-op off glibc.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, CONVERT_MMAP_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT_MMAP_THRESHOLD)


def _is_within(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def check_output(plan: Plan, output: Path, *, overwrite: bool) -> None:
    """Refuse outputs that exist (without --overwrite), overlap a source, lack a parent or the disk space."""
    if not output.parent.is_dir():
        raise UserError(f"--output {output}: parent directory {output.parent} does not exist; create it first")
    resolved = output.resolve()
    for source in (plan.target_dir.resolve(), plan.drafter_dir.resolve()):
        if _is_within(resolved, source) or _is_within(source, resolved):
            raise UserError(f"--output {output}: overlaps the source directory {source}; choose another output")
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise UserError(f"--output {output}: already exists; pass --overwrite to replace it")
    free = shutil.disk_usage(output.parent).free
    if free < plan.total_bytes:
        raise UserError(
            f"--output {output}: needs {human_bytes(plan.total_bytes)} but only {human_bytes(free)} is free there"
        )


def _fingerprint(name: str, dtype: str, tensor: torch.Tensor) -> dict[str, Any]:
    """Identity of the target's embedding: sha256 of its raw source bytes, plus dtype and shape."""
    return {
        "tensor": name,
        "dtype": dtype,
        "shape": list(tensor.shape),
        "sha256": hashlib.sha256(tensor_bytes(tensor)).hexdigest(),
    }


def _write_model(
    model: ModelPlan, source: SourceCheckpoint, plan: Plan, directory: Path, bar: tqdm
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Write every rank file of one model; return {relative path: {sha256, bytes}} and the embedding fingerprint."""
    directory.mkdir()
    writers = [RankWriter(directory / f"rank{r}.safetensors", model.specs[r]) for r in range(plan.tp)]
    fingerprint = None
    try:
        for entry in model.entries:
            parts = [source.load(name) for name in entry.sources]
            if entry.name == EMBEDDING:
                fingerprint = _fingerprint(entry.sources[0], source.entry(entry.sources[0]).dtype, parts[0])
            for rank, writer in enumerate(writers):
                writer.write(entry.name, shard(entry.rule, parts, plan.tp, rank).to(plan.dtype.torch))
            del parts
            bar.update()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    files = {}
    for rank, writer in enumerate(writers):
        files[f"{model.role}/rank{rank}.safetensors"] = {"sha256": writer.close(), "bytes": writer.path.stat().st_size}
    return files, fingerprint


def _write_json(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    path.write_text(json.dumps(data, indent=2) + "\n")
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _write_all(plan: Plan, sources: tuple[SourceCheckpoint, SourceCheckpoint], tmp: Path) -> None:
    total = sum(len(m.entries) for m in plan.models)
    with tqdm(total=total, unit="tensor", desc="convert", disable=not sys.stderr.isatty()) as bar:
        files, embedding = _write_model(plan.models[0], sources[0], plan, tmp / "target", bar)
        drafter_files, _ = _write_model(plan.models[1], sources[1], plan, tmp / "drafter", bar)
    files.update(drafter_files)
    t_cfg = target_config(plan.target, plan.target_hf, tp=plan.tp, dtype=plan.dtype, embedding=embedding)
    d_cfg = drafter_config(
        plan.drafter, plan.drafter_hf, plan.target, tp=plan.tp, dtype=plan.dtype, embedding=embedding
    )
    files["target/config.json"] = _write_json(tmp / "target" / "config.json", t_cfg)
    files["drafter/config.json"] = _write_json(tmp / "drafter" / "config.json", d_cfg)
    manifest = {
        "format": "dflash-trt-checkpoint",
        "format_version": FORMAT_VERSION,
        "tool": {"name": "dflash-trt", "version": __version__},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": {
            role: {
                "dir": str(src.directory.resolve()),
                "config_sha256": sha256_file(src.directory / "config.json"),
                "weight_files": {p.name: p.stat().st_size for p in src.headers},
            }
            for role, src in zip(("target", "drafter"), sources, strict=True)
        },
        "mapping": {"world_size": plan.tp, "tp_size": plan.tp, "pp_size": 1},
        "dtype": plan.dtype.trtllm,
        "files": dict(sorted(files.items())),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def convert(plan: Plan, output: Path, *, overwrite: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Validate the sources, write the converted pair to `output` atomically, and return `output`."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    output = Path(os.path.abspath(output))
    check_output(plan, output, overwrite=overwrite)
    sources = (SourceCheckpoint(plan.target_dir), SourceCheckpoint(plan.drafter_dir))
    for source, model in zip(sources, plan.models, strict=True):
        check_sources(source, model.entries)
    start = time.monotonic()
    with atomic_directory(output, log) as tmp:
        log(f"converting tp {plan.tp} {plan.dtype.trtllm} ({human_bytes(plan.total_bytes)}): writing {tmp}")
        _write_all(plan, sources, tmp)
    log(f"wrote {output} in {time.monotonic() - start:.1f} s")
    return output
