"""The build recipe: one YAML file of flat keys (TensorRT-LLM build-config names where one exists), read into a
typed, validated dataclass. Every field has a default, so a build needs no recipe at all. Unknown keys are
errors naming the key and the file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dflash_trt.config import read_yaml_recipe
from dflash_trt.dtypes import CLI_NAMES
from dflash_trt.errors import UserError

ATTENTION = ("native", "plugin")  # native: ONNX Attention -> TensorRT's fused IAttention; plugin: DFlashBlockAttention
PHASES = ("prefill", "step")  # optimization profiles of both graphs (see plan.graph_profiles)
PROFILE_KEYS = ("opt_batch_size", "opt_num_tokens", "opt_past_len")
# Compute capabilities a recipe may name. TensorRT-RTX (the CPU verification build) targets only the SM75-SM89 and
# SM120/SM121 ones; datacenter TensorRT builds for the GPU it runs on (sm90 H100/H200, sm100 B200, sm103 B300).
GPU_ARCHS = ("sm75", "sm80", "sm86", "sm89", "sm90", "sm100", "sm103", "sm120", "sm121")
RTX_ARCHS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")


@dataclass(frozen=True)
class BuildRecipe:
    """Every knob of `dflash-trt build`. 0 for `block_size` means the drafter's trained block size."""

    max_batch_size: int = 4  # rows decoded together
    max_input_len: int = 512  # longest prompt
    max_seq_len: int = 1024  # prompt + output (+ one block of headroom), per row
    block_size: int = 0  # DFlash block B (max_draft_len = B - 1); <= the drafter's; 0 = the drafter's
    dtype: str = "bf16"  # fp16 / bf16 / fp32 (fp32 attention has no fused TensorRT kernel: built decomposed)
    profiles: dict[str, dict[str, int]] = field(default_factory=lambda: {p: {} for p in PHASES})
    gpu_archs: list[str] = field(default_factory=list)  # [] = the GPU of the build host
    tp_size: int = 1
    attention: str = "native"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(BuildRecipe)}


def _int(source: str, name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{source}: field '{name}' is {value!r}; expected an integer >= {low}")
    if value < low:
        raise UserError(f"{source}: field '{name}' is {value}; use {low} or more")
    return value


def _profiles(source: str, value: Any) -> dict[str, dict[str, int]]:
    """`profiles`: a list of phase names, or a mapping phase -> {opt_batch_size, opt_num_tokens, opt_past_len}."""
    if isinstance(value, list):
        value = {name: {} for name in value}
    if not isinstance(value, dict) or not value:
        raise UserError(f"{source}: field 'profiles' is {value!r}; expected a list or mapping of {list(PHASES)}")
    out: dict[str, dict[str, int]] = {}
    for name, opts in value.items():
        if name not in PHASES:
            raise UserError(
                f"{source}: field 'profiles' has unknown profile '{name}'; known profiles: {', '.join(PHASES)}"
            )
        opts = opts or {}
        if not isinstance(opts, dict):
            raise UserError(f"{source}: field 'profiles.{name}' is {opts!r}; expected a mapping of {PROFILE_KEYS}")
        for key in opts:
            if key not in PROFILE_KEYS:
                raise UserError(
                    f"{source}: field 'profiles.{name}' has unknown key '{key}'; known keys: {', '.join(PROFILE_KEYS)}"
                )
        out[name] = {k: _int(source, f"profiles.{name}.{k}", v, 1) for k, v in opts.items()}
    if "step" not in out:
        raise UserError(f"{source}: field 'profiles' lacks 'step'; every engine needs the draft/verify step profile")
    return out


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> BuildRecipe:
    """Validate each field on its own (cross-model checks live in plan.make_build_plan)."""
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise UserError(f"{source}: unknown field '{unknown[0]}'; known fields: {', '.join(FIELDS)}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in ("max_batch_size", "max_input_len", "max_seq_len", "tp_size"):
            values[name] = _int(source, name, value, 1)
        elif name == "block_size":
            values[name] = _int(source, name, value, 0)
            if values[name] == 1:
                raise UserError(
                    f"{source}: field 'block_size' is 1; a block needs the anchor and at least one mask "
                    "position (use 2 or more, or 0 for the drafter's)"
                )
        elif name == "dtype":
            if value not in CLI_NAMES:
                raise UserError(f"{source}: field 'dtype' is {value!r}; use one of {', '.join(CLI_NAMES)}")
            values[name] = value
        elif name == "attention":
            if value not in ATTENTION:
                raise UserError(f"{source}: field 'attention' is {value!r}; use one of {', '.join(ATTENTION)}")
            values[name] = value
        elif name == "gpu_archs":
            archs = [value] if isinstance(value, str) else value
            if not isinstance(archs, list) or any(a not in GPU_ARCHS for a in archs):
                raise UserError(f"{source}: field 'gpu_archs' is {value!r}; use a list of {', '.join(GPU_ARCHS)}")
            values[name] = list(archs)
        elif name == "profiles":
            values[name] = _profiles(source, value)
    recipe = BuildRecipe(**values)
    if recipe.max_input_len >= recipe.max_seq_len:
        raise UserError(
            f"{source}: field 'max_input_len' {recipe.max_input_len} must be below 'max_seq_len' "
            f"{recipe.max_seq_len} (room for the output and one block)"
        )
    return recipe


def load_recipe(path: Path | None, overrides: dict[str, Any] | None = None) -> BuildRecipe:
    """Read a YAML recipe (None = all defaults); `overrides` (non-None values, e.g. --tp) replace its fields."""
    raw: dict[str, Any] = {}
    source = "recipe defaults"
    if path is not None:
        path, source = Path(path), str(path)
        raw = read_yaml_recipe(path)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return recipe_from_dict(raw, source)
