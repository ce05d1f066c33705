"""The training recipe: one YAML file (flat keys) read into a typed, validated dataclass."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dflash_trt.config import read_yaml_recipe
from dflash_trt.errors import UserError

DEFAULT_GAMMA = {16: 7.0, 10: 5.0, 8: 4.0}


@dataclass
class Recipe:
    """Every knob of a training run. Relative paths are relative to the current directory."""

    output: Path
    data: list[Path]
    target: str = "embedded"  # HF target directory, or "embedded" for SmolLM2-135M-Instruct
    # drafter architecture (hidden size, vocab and rope come from the target)
    num_layers: int = 2
    intermediate_size: int = 1536
    num_heads: int = 0  # 0 = the target's
    num_kv_heads: int = 0
    head_dim: int = 0
    block_size: int = 8
    mask_token_id: int = -1  # -1 = required unless the target is embedded (then 16, `<empty_output>`)
    target_layer_ids: list[int] = field(default_factory=list)  # empty = z-lab spread of 5 features
    init_from_target_layers: list[int] = field(default_factory=list)  # warm start draft layer i from these
    # or fine-tune: start from this z-lab drafter directory (same layers and heads; a v1 drafter can start a
    # dflash2 one, whose extras then start as no-ops)
    init_from: str = ""
    # "dflash" (z-lab v1) or "dflash2" (grouped dynamic causal convs + candidate selector; keys below)
    architecture: str = "dflash"
    conv_kernel_size: int = 2
    conv_group_size: int = 16
    selector_rank: int = 64
    selector_top_k: int = 16
    # loss and batches
    gamma: float = 0.0  # 0 = 7 for B=16, 5 for B=10, 4 for B=8 (else B/2)
    anchors_per_seq: int = 64
    max_seq_len: int = 512
    batch_size: int = 4  # sequences per optimiser step
    generated_repeat: int = 1  # times each target-generated sequence appears per epoch (real text: once)
    # optimiser
    steps: int = 1000
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    autocast_bf16: bool = True
    # bookkeeping
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 100
    eval_every: int = 100
    eval_sequences: int = 48
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        if self.block_size < 2:
            raise UserError(f"recipe field 'block_size' is {self.block_size}; use 2 or more")
        if min(self.steps, self.batch_size, self.anchors_per_seq, self.generated_repeat) < 1:
            raise UserError(
                "recipe fields 'steps', 'batch_size', 'anchors_per_seq' and 'generated_repeat' must be positive"
            )
        if self.architecture not in ("dflash", "dflash2"):
            raise UserError(f"recipe field 'architecture' is {self.architecture!r}; use 'dflash' or 'dflash2'")
        for name in ("conv_kernel_size", "conv_group_size", "selector_rank", "selector_top_k"):
            if getattr(self, name) < 1:
                raise UserError(f"recipe field '{name}' is {getattr(self, name)}; use a positive integer")
        if self.init_from and self.init_from_target_layers:
            raise UserError("recipe fields 'init_from' and 'init_from_target_layers' exclude each other; keep one")
        if self.init_from_target_layers and len(self.init_from_target_layers) != self.num_layers:
            raise UserError(
                f"recipe field 'init_from_target_layers' has {len(self.init_from_target_layers)} ids; "
                f"give one per draft layer ({self.num_layers}) or none"
            )

    @property
    def decay_gamma(self) -> float:
        return self.gamma or DEFAULT_GAMMA.get(self.block_size, self.block_size / 2)

    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine decay from `lr` to `min_lr` at `steps`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        t = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["output"] = str(self.output)
        d["data"] = [str(p) for p in self.data]
        return d


def load_recipe(path: Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a YAML recipe; `overrides` (non-None values) replace its fields. Errors name the field."""
    path = Path(path)
    raw = read_yaml_recipe(path)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return recipe_from_dict(raw, str(path))


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(f"{source}: unknown field '{unknown[0]}'; known fields: {', '.join(fields)}")
    for name in ("output", "data"):
        if name not in raw:
            raise UserError(f"{source}: missing field '{name}'")
    data = raw["data"] if isinstance(raw["data"], list) else [raw["data"]]
    values: dict[str, Any] = {"output": Path(raw["output"]).expanduser(), "data": [Path(p).expanduser() for p in data]}
    for name, value in raw.items():
        if name in values:
            continue
        default = fields[name].default
        kind = type(default) if default is not dataclasses.MISSING else list
        try:
            if kind is list:
                if not isinstance(value, list):
                    raise TypeError
                values[name] = [int(v) for v in value]
            elif kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
                values[name] = value
            else:
                values[name] = kind(value)
        except (TypeError, ValueError):
            raise UserError(f"{source}: field '{name}' is {value!r}; expected {kind.__name__}") from None
    return Recipe(**values)


def resolve_target(target: str) -> Path:
    """'embedded' -> the embedded SmolLM2 directory (converted on first use); else a directory that must exist."""
    if target == "embedded":
        from dflash_trt.embedded import ensure_default_target

        return ensure_default_target()
    path = Path(target)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; 'target' must be a Hugging Face model directory or 'embedded'")
    return path
