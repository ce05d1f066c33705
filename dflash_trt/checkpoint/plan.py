"""The conversion plan from config.json files alone: checks, per-rank tensors and sizes (--dry-run and convert)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dflash_trt.checkpoint.layout import Entry, drafter_entries, rank_specs, target_entries
from dflash_trt.checkpoint.safetensors_io import RankTensor
from dflash_trt.checkpoint.sharding import check_parallel
from dflash_trt.config import DrafterConfig, TargetConfig, check_pair, read_json
from dflash_trt.dtypes import DType, dtype_named
from dflash_trt.errors import UserError


@dataclass(frozen=True)
class ModelPlan:
    """One model of the pair: its entries and each rank's tensors."""

    role: str  # "target" or "drafter": also the subdirectory name
    entries: list[Entry]
    specs: list[list[RankTensor]]

    def rank_bytes(self, rank: int) -> int:
        return sum(s.nbytes for s in self.specs[rank])


@dataclass(frozen=True)
class ConfigPair:
    """The target and drafter of a pair: directories, typed configs and the config.json dicts they came from."""

    target_dir: Path
    drafter_dir: Path
    target: TargetConfig
    drafter: DrafterConfig
    target_hf: dict[str, Any]
    drafter_hf: dict[str, Any]


@dataclass(frozen=True)
class Plan(ConfigPair):
    """Everything `convert` will write, known before reading any weights."""

    tp: int
    dtype: DType
    models: tuple[ModelPlan, ModelPlan]

    @property
    def total_bytes(self) -> int:
        return sum(m.rank_bytes(r) for m in self.models for r in range(self.tp))


def resolve_dtype(name: str, target_hf: dict[str, Any], source: str) -> DType:
    """`--dtype`; 'auto' means the target config's `torch_dtype` (transformers 5: `dtype`), bf16 if absent."""
    declared = name if name != "auto" else str(target_hf.get("torch_dtype") or target_hf.get("dtype") or "bfloat16")
    dtype = dtype_named(declared)
    if dtype is None:
        raise UserError(
            f"{source}: field 'torch_dtype' is '{declared}', which cannot be written; pass --dtype bf16|fp16|fp32"
        )
    return dtype


def make_plan(target_dir: Path, drafter_dir: Path, *, tp: int, pp: int, dtype: str) -> Plan:
    """Read both config.json files, refuse incompatible pairs or impossible splits, and plan every rank."""
    target_path, drafter_path = Path(target_dir) / "config.json", Path(drafter_dir) / "config.json"
    target_hf, drafter_hf = read_json(target_path), read_json(drafter_path)
    target = TargetConfig.from_hf(target_hf, str(target_path))
    drafter = DrafterConfig.from_hf(drafter_hf, str(drafter_path))
    check_pair(target, drafter, str(drafter_path))
    for cfg, path in ((target, target_path), (drafter, drafter_path)):
        check_parallel(
            num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads,
            intermediate_size=cfg.intermediate_size,
            tp=tp,
            pp=pp,
            source=str(path),
        )
    out_dtype = resolve_dtype(dtype, target_hf, str(target_path))
    models = tuple(
        ModelPlan(role, entries, rank_specs(entries, tp, out_dtype))
        for role, entries in (("target", target_entries(target)), ("drafter", drafter_entries(drafter)))
    )
    return Plan(Path(target_dir), Path(drafter_dir), target, drafter, target_hf, drafter_hf, tp, out_dtype, models)


def human_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}"
    raise AssertionError("unreachable")


def format_plan(plan: Plan) -> str:
    """The per-rank plan: every tensor with shape, dtype and bytes, and each rank's total."""
    lines = [
        f"plan: tp {plan.tp}, pp 1, dtype {plan.dtype.trtllm}; target {plan.target_dir}, drafter {plan.drafter_dir}"
    ]
    for model in plan.models:
        for rank, specs in enumerate(model.specs):
            lines.append(
                f"{model.role}/rank{rank}.safetensors: {len(specs)} tensors, {human_bytes(model.rank_bytes(rank))}"
            )
            width = max(len(s.name) for s in specs)
            lines += [f"  {s.name:<{width}}  {list(s.shape)!s:<16} {s.dtype:<4} {s.nbytes:>14,}" for s in specs]
            lines.append(f"  total {model.rank_bytes(rank):,} bytes")
    lines.append(f"total: {plan.total_bytes:,} bytes ({human_bytes(plan.total_bytes)}) over {2 * plan.tp} rank files")
    return "\n".join(lines)
