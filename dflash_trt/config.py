"""Typed model configs read from Hugging Face `config.json` files.

`TargetConfig` covers the Llama (incl. SmolLM2 and Llama-3 rope scaling), Qwen2 and Qwen3 families.
`DrafterConfig` is a z-lab DFlash drafter: a Qwen3-style stack plus the `dflash_config` keys; its
`architectures` entry selects v1 (`DFlashDraftModel`) or DFlash2 (`DFlash2DraftModel`, grouped dynamic
causal convolutions and a candidate selector; see `dflash_trt.models.drafter2`).
"""

from __future__ import annotations

import json
import math
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
DRAFTER_ARCHITECTURES = {"DFlashDraftModel": "dflash", "DFlash2DraftModel": "dflash2"}
DRAFT_VOCAB_FILE = "draft_vocab.json"  # a drafter's reduced draft vocabulary (`runtime.loading.read_draft_vocab`)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file, turning every failure into a one-line `UserError` naming the file."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; pass a directory that contains it")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); restore the file from the original checkpoint") from None


def read_yaml_recipe(path: Path) -> dict[str, Any]:
    """Read a YAML recipe file (a mapping of fields), turning every failure into a one-line `UserError`."""
    import yaml

    if not path.is_file():
        raise UserError(f"{path}: recipe file not found; pass --config with a YAML recipe (see build_configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of recipe fields at the top level")
    return raw


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
                f"{source}: field 'rope_scaling.rope_type' is '{rope_type}'; "
                f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
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
            raise UserError(f"{source}: field 'architectures' is {archs}; supported: {', '.join(ARCHITECTURES)}")
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
    # z-lab keys read from `dflash_config` first, then the top level (all architectures)
    input_embedding_scale: float = 1.0
    output_multiplier: float = 1.0
    final_logit_softcapping: float | None = None  # None (or 0 in config.json) = off
    # DFlash2 only (arch "dflash2"); 0 / None in a v1 drafter
    arch: str = "dflash"
    is_causal: bool | None = None  # None = causal exactly in sliding-attention layers (z-lab's default)
    conv_kernel_size: int = 0
    conv_group_size: int = 0
    selector_rank: int = 0
    selector_top_k: int = 0

    @property
    def is_dflash2(self) -> bool:
        return self.arch == "dflash2"

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], source: str = "config.json") -> DrafterConfig:
        archs = cfg.get("architectures") or []
        arch = next((DRAFTER_ARCHITECTURES[a] for a in archs if a in DRAFTER_ARCHITECTURES), None)
        if arch is None:
            raise UserError(
                f"{source}: field 'architectures' is {archs}; expected ['DFlashDraftModel'] or ['DFlash2DraftModel'] "
                "(a z-lab DFlash drafter)"
            )
        dflash = cfg.get("dflash_config") or {}
        if not isinstance(dflash, dict):
            raise UserError(f"{source}: field 'dflash_config' is {dflash!r}; expected a JSON object")
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
        is_causal = _dflash_bool(dflash, cfg, "is_causal", source)
        if arch == "dflash" and is_causal:
            raise UserError(
                f"{source}: field 'is_causal' is true; a DFlash v1 drafter's block is non-causal, "
                "remove the field (or use a DFlash2DraftModel checkpoint)"
            )
        v2 = _dflash2_fields(dflash, cfg, hidden, source) if arch == "dflash2" else {}
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
            input_embedding_scale=_dflash_number(dflash, cfg, "input_embedding_scale", 1.0, source, positive=True),
            output_multiplier=_dflash_number(dflash, cfg, "output_multiplier", 1.0, source, positive=True),
            final_logit_softcapping=_softcap(dflash, cfg, source),
            arch=arch,
            is_causal=is_causal,
            **v2,
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

    def causal(self, layer: int) -> bool:
        """Whether draft layer `layer` is causal inside the block (DFlash2: `is_causal`, else z-lab's default of
        causal sliding-attention layers; v1 blocks are never causal)."""
        if not self.is_dflash2:
            return False
        if self.is_causal is not None:
            return self.is_causal
        return bool(self.layer_types) and self.layer_types[layer] == "sliding_attention"

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
        dflash = cfg["dflash_config"]
        for key, default in (
            ("input_embedding_scale", 1.0),
            ("output_multiplier", 1.0),
            ("final_logit_softcapping", None),
        ):
            if getattr(self, key) != default:
                dflash[key] = getattr(self, key)
        if self.is_dflash2:
            cfg["architectures"] = ["DFlash2DraftModel"]
            cfg["is_causal"] = self.is_causal
            dflash.update(
                block_size=self.block_size,
                conv_kernel_size=self.conv_kernel_size,
                conv_group_size=self.conv_group_size,
                selector_rank=self.selector_rank,
                selector_top_k=self.selector_top_k,
            )
        return {**cfg, **(extra or {})}


def _dflash_value(dflash: dict[str, Any], cfg: dict[str, Any], key: str) -> tuple[Any, str]:
    """A z-lab drafter key as z-lab reads it: `dflash_config` first, then the top level. Returns (value, the
    field's name as written in config.json); value None when absent from both."""
    if dflash.get(key) is not None:
        return dflash[key], f"dflash_config.{key}"
    return cfg.get(key), key


def _dflash_number(
    dflash: dict[str, Any], cfg: dict[str, Any], key: str, default: float, source: str, *, positive: bool = False
) -> float:
    value, name = _dflash_value(dflash, cfg, key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (positive and value <= 0)
    ):
        want = "a finite number > 0" if positive else "a finite number"
        raise UserError(f"{source}: field '{name}' is {value!r}; expected {want}")
    return float(value)


def _softcap(dflash: dict[str, Any], cfg: dict[str, Any], source: str) -> float | None:
    cap = _dflash_number(dflash, cfg, "final_logit_softcapping", 0.0, source)
    if cap < 0:
        _, name = _dflash_value(dflash, cfg, "final_logit_softcapping")
        raise UserError(f"{source}: field '{name}' is {cap}; use a positive cap, or 0 / null for none")
    return cap or None


def _dflash_bool(dflash: dict[str, Any], cfg: dict[str, Any], key: str, source: str) -> bool | None:
    value, name = _dflash_value(dflash, cfg, key)
    if value is not None and not isinstance(value, bool):
        raise UserError(f"{source}: field '{name}' is {value!r}; expected true, false or null")
    return value


def _dflash_int(dflash: dict[str, Any], cfg: dict[str, Any], key: str, source: str, hint: str) -> int:
    value, name = _dflash_value(dflash, cfg, key)
    if value is None:
        raise UserError(f"{source}: missing field 'dflash_config.{key}' (a DFlash2 drafter needs it: {hint})")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{source}: field '{name}' is {value!r}; expected a positive integer ({hint})")
    return value


def _dflash2_fields(dflash: dict[str, Any], cfg: dict[str, Any], hidden: int, source: str) -> dict[str, int]:
    """The DFlash2-only keys, validated (see `dflash_trt.models.drafter2` for what they mean)."""
    out = {
        "conv_kernel_size": _dflash_int(dflash, cfg, "conv_kernel_size", source, "taps of the causal conv"),
        "conv_group_size": _dflash_int(
            dflash, cfg, "conv_group_size", source, "channels sharing one dynamic tap, dividing hidden_size"
        ),
        "selector_rank": _dflash_int(dflash, cfg, "selector_rank", source, "rank of the selector codebooks"),
        "selector_top_k": _dflash_int(dflash, cfg, "selector_top_k", source, "candidates per position"),
    }
    if hidden % out["conv_group_size"]:
        _, name = _dflash_value(dflash, cfg, "conv_group_size")
        raise UserError(
            f"{source}: field '{name}' is {out['conv_group_size']}, which does not divide hidden_size "
            f"{hidden}; use a divisor of hidden_size"
        )
    vocab = cfg.get("vocab_size")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        raise UserError(
            f"{source}: field 'vocab_size' is {vocab!r}; a DFlash2 drafter needs the target's vocab "
            "size (its selector codebooks have one row per token)"
        )
    if out["selector_top_k"] > vocab:
        _, name = _dflash_value(dflash, cfg, "selector_top_k")
        raise UserError(
            f"{source}: field '{name}' is {out['selector_top_k']}, above vocab_size {vocab}; "
            "use at most the vocabulary size"
        )
    return out


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
