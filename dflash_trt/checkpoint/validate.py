"""Header-only checks of source and converted checkpoints against the plan in `layout` (no tensor data read)."""

from __future__ import annotations

from pathlib import Path

from dflash_trt.checkpoint.layout import Entry
from dflash_trt.checkpoint.safetensors_io import FLOAT_CODES, RankTensor, SourceCheckpoint, read_header
from dflash_trt.errors import UserError


def _raise_first(problems: list[str]) -> None:
    problems = list(dict.fromkeys(problems))
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


def check_sources(ckpt: SourceCheckpoint, entries: list[Entry]) -> None:
    """Every HF tensor the entries need is present, with the config-implied shape and a float dtype."""
    problems = []
    config = ckpt.directory / "config.json"
    for entry in entries:
        for name, shape in zip(entry.sources, entry.source_shapes, strict=True):
            found = ckpt.entry(name)
            if found is None:
                problems.append(f"{ckpt.directory}: missing tensor '{name}' (shape {list(shape)} per {config})")
            elif found.shape != shape:
                problems.append(
                    f"{ckpt.file_of[name]}: tensor '{name}' has shape {list(found.shape)} but {config} implies "
                    f"{list(shape)}; use the config.json that belongs to these weights"
                )
            elif found.dtype not in FLOAT_CODES:
                problems.append(
                    f"{ckpt.file_of[name]}: tensor '{name}' has dtype {found.dtype}; only {'/'.join(FLOAT_CODES)} "
                    "checkpoints can be converted (dequantize first)"
                )
    _raise_first(problems)


def check_rank_files(model_dir: Path, specs: list[list[RankTensor]]) -> None:
    """Each `rank{r}.safetensors` holds exactly the planned tensors with the planned shapes and dtypes."""
    problems = []
    for rank, planned in enumerate(specs):
        path = model_dir / f"rank{rank}.safetensors"
        if not path.is_file():
            problems.append(f"{path}: missing (config.json maps {len(specs)} ranks); re-run convert")
            continue
        header = read_header(path)
        for spec in planned:
            found = header.get(spec.name)
            if found is None:
                problems.append(f"{path}: missing tensor '{spec.name}'")
            elif (found.shape, found.dtype) != (spec.shape, spec.dtype):
                problems.append(
                    f"{path}: tensor '{spec.name}' is {found.dtype} {list(found.shape)}, "
                    f"config.json implies {spec.dtype} {list(spec.shape)}"
                )
        extra = sorted(set(header) - {s.name for s in planned})
        if extra:
            problems.append(f"{path}: unexpected tensors {extra[:3]}{' ...' if len(extra) > 3 else ''}")
    _raise_first(problems)
