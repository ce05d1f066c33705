"""Typed model configs read from Hugging Face `config.json` files.

`TargetConfig` covers the Llama (incl. SmolLM2 and Llama-3 rope scaling), Qwen2 and Qwen3 families.
`DrafterConfig` is a z-lab DFlash v1 drafter: a Qwen3-style stack plus the `dflash_config` keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dflash_trt.errors import UserError

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file, turning every failure into a one-line `UserError` naming the file."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; pass a directory that contains it")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); restore the file from the original checkpoint") from None


def _field(cfg: dict[str, Any], key: str, source: str) -> Any:
    if key not in cfg:
        raise UserError(f"{source}: missing field '{key}'; this does not look like a supported checkpoint")
    return cfg[key]


def _rope(cfg: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """Return (rope_theta, scaling) from transformers 4 (`rope_theta`/`rope_scaling`) or 5 (`rope_parameters`)."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or None
    theta = float(cfg.get("rope_theta", params.get("rope_theta", 10000.0)))
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = params
    if scaling is not None:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UserError(
                f"{source}: field 'rope_scaling.rope_type' is '{rope_type}'; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        scaling = None if rope_type == "default" else {**scaling, "rope_type": rope_type}
    return theta, scaling


@dataclass(frozen=True)
class TargetConfig:
    """A decoder-only target model (Llama / Qwen2 / Qwen3 families)."""

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], source: str = "config.json") -> TargetConfig:
        archs = cfg.get("architectures") or []
        arch = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
        if arch is None:
            arch = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}.get(cfg.get("model_type", ""))
        if arch is None:
            raise UserError(
                f"{source}: field 'architectures' is {archs}; supported: {', '.join(ARCHITECTURES)}"
            )
        hidden = int(_field(cfg, "hidden_size", source))
        heads = int(_field(cfg, "num_attention_heads", source))
        theta, scaling = _rope(cfg, source)
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            arch=arch,
            vocab_size=int(_field(cfg, "vocab_size", source)),
            hidden_size=hidden,
            intermediate_size=int(_field(cfg, "intermediate_size", source)),
            num_layers=int(_field(cfg, "num_hidden_layers", source)),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=arch == "qwen2" or bool(cfg.get("attention_bias", False)),
            qk_norm=arch == "qwen3",
            eos_token_ids=eos_ids,
        )

    @classmethod
    def from_dir(cls, directory: Path) -> TargetConfig:
        path = Path(directory) / "config.json"
        return cls.from_hf(read_json(path), str(path))


def default_target_layer_ids(num_target_layers: int, num_features: int) -> list[int]:
    """z-lab's default spread: `num_features` ids evenly from 1 to num_target_layers-3 (rounded)."""
    if num_features == 1:
        return [num_target_layers // 2]
    start, end = 1, num_target_layers - 3
    return [round(start + i * (end - start) / (num_features - 1)) for i in range(num_features)]


@dataclass(frozen=True)
class DrafterConfig:
    """A z-lab DFlash v1 drafter: Qwen3 decoder layers with KV injection of fused target features."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    mask_token_id: int
    target_layer_ids: tuple[int, ...]
    num_target_layers: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 40960
    vocab_size: int = 0
    qkv_bias: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = field(default=())

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], source: str = "config.json") -> DrafterConfig:
        archs = cfg.get("architectures") or []
        if "DFlashDraftModel" not in archs:
            raise UserError(
                f"{source}: field 'architectures' is {archs}; expected ['DFlashDraftModel'] (a z-lab DFlash v1 drafter)"
            )
        dflash = cfg.get("dflash_config") or {}
        hidden = int(_field(cfg, "hidden_size", source))
        heads = int(_field(cfg, "num_attention_heads", source))
        num_layers = int(_field(cfg, "num_hidden_layers", source))
        num_target_layers = int(cfg.get("num_target_layers", 0))
        layer_ids = dflash.get("target_layer_ids")
        if layer_ids is None:
            if not num_target_layers:
                raise UserError(f"{source}: needs 'dflash_config.target_layer_ids' or 'num_target_layers'")
            layer_ids = default_target_layer_ids(num_target_layers, num_layers)
        mask_id = dflash.get("mask_token_id", cfg.get("mask_token_id"))
        if mask_id is None:
            raise UserError(f"{source}: missing field 'dflash_config.mask_token_id'; add the drafter's mask token id")
        theta, scaling = _rope(cfg, source)
        layer_types = tuple(cfg.get("layer_types") or ())
        if any(t not in ("full_attention", "sliding_attention") for t in layer_types):
            raise UserError(f"{source}: field 'layer_types' has unsupported entries {sorted(set(layer_types))}")
        if cfg.get("is_causal"):
            raise UserError(f"{source}: field 'is_causal' is true; only non-causal (DFlash v1) drafters are supported")
        return cls(
            hidden_size=hidden,
            intermediate_size=int(_field(cfg, "intermediate_size", source)),
            num_layers=num_layers,
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            block_size=int(dflash.get("block_size", cfg.get("block_size", 16))),
            mask_token_id=int(mask_id),
            target_layer_ids=tuple(int(i) for i in layer_ids),
            num_target_layers=num_target_layers,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 40960)),
            vocab_size=int(cfg.get("vocab_size", 0)),
            qkv_bias=bool(cfg.get("attention_bias", False)),
            sliding_window=cfg.get("sliding_window"),
            layer_types=layer_types,
        )

    @classmethod
    def from_dir(cls, directory: Path) -> DrafterConfig:
        path = Path(directory) / "config.json"
        return cls.from_hf(read_json(path), str(path))

    def window(self, layer: int) -> int | None:
        """Sliding window of draft layer `layer` (None = full attention)."""
        if self.layer_types and self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    def to_hf(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The z-lab `config.json` for this drafter (a Qwen3 config plus the DFlash keys)."""
        cfg: dict[str, Any] = {
            "architectures": ["DFlashDraftModel"],
            "model_type": "qwen3",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": self.vocab_size,
            "attention_bias": self.qkv_bias,
            "attention_dropout": 0.0,
            "tie_word_embeddings": False,
            "block_size": self.block_size,
            "num_target_layers": self.num_target_layers,
            "layer_types": list(self.layer_types) or ["full_attention"] * self.num_layers,
            "sliding_window": self.sliding_window,
            "use_sliding_window": False,
            "dflash_config": {
                "target_layer_ids": list(self.target_layer_ids),
                "mask_token_id": self.mask_token_id,
            },
        }
        return {**cfg, **(extra or {})}


def check_pair(target: TargetConfig, drafter: DrafterConfig, source: str = "drafter config.json") -> None:
    """Refuse a drafter that cannot run on this target, naming the mismatched field."""
    if drafter.hidden_size != target.hidden_size:
        raise UserError(
            f"{source}: 'hidden_size' is {drafter.hidden_size} but the target's is {target.hidden_size}; "
            "use the drafter trained for this target"
        )
    if drafter.vocab_size and drafter.vocab_size != target.vocab_size:
        raise UserError(
            f"{source}: 'vocab_size' is {drafter.vocab_size} but the target's is {target.vocab_size}; "
            "use the drafter trained for this target"
        )
    if drafter.num_target_layers and drafter.num_target_layers != target.num_layers:
        raise UserError(
            f"{source}: 'num_target_layers' is {drafter.num_target_layers} but the target has {target.num_layers} "
            "layers; use the drafter trained for this target"
        )
    if not 2 <= drafter.block_size <= drafter.max_position_embeddings:
        raise UserError(
            f"{source}: 'block_size' {drafter.block_size} is not usable; a block needs the anchor plus at least "
            "one mask position (>= 2) and must fit 'max_position_embeddings'"
        )
    bad = [i for i in drafter.target_layer_ids if not 0 <= i < target.num_layers]
    if bad:
        raise UserError(
            f"{source}: 'dflash_config.target_layer_ids' has {bad}, outside the target's {target.num_layers} layers"
        )
    if not 0 <= drafter.mask_token_id < target.vocab_size:
        raise UserError(
            f"{source}: 'dflash_config.mask_token_id' {drafter.mask_token_id} is outside the target vocab "
            f"(0..{target.vocab_size - 1})"
        )
