"""`config.json` of the converted target and drafter (TensorRT-LLM `PretrainedConfig` fields + extras)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dflash_trt.checkpoint.sharding import pad_to_multiple
from dflash_trt.config import ARCHITECTURES, DrafterConfig, TargetConfig, read_json
from dflash_trt.dtypes import DType
from dflash_trt.errors import UserError

FORMAT_VERSION = 1
TRT_ARCHITECTURE = {family: arch for arch, family in ARCHITECTURES.items()}


def _rotary_scaling(scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """HF rope scaling as TRT-LLM reads it (it looks at 'type'; newer HF writes 'rope_type')."""
    return None if scaling is None else {**scaling, "type": scaling["rope_type"]}


def _common(
    cfg: TargetConfig | DrafterConfig, *, arch: str, dtype: DType, vocab: int, qk_norm: bool, tp: int
) -> dict[str, Any]:
    """The PretrainedConfig fields both models share (their typed configs use the same attribute names)."""
    return {
        "architecture": arch,
        "dtype": dtype.trtllm,
        "logits_dtype": "float32",
        "vocab_size": vocab,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_size": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "silu",
        "norm_epsilon": cfg.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": cfg.rope_theta,
        "rotary_scaling": _rotary_scaling(cfg.rope_scaling),
        "max_position_embeddings": cfg.max_position_embeddings,
        "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None},
        "attn_bias": cfg.qkv_bias,
        "mlp_bias": False,
        "qk_layernorm": qk_norm,
    }


def target_config(
    cfg: TargetConfig, hf: dict[str, Any], *, tp: int, dtype: DType, embedding: dict[str, Any] | None
) -> dict[str, Any]:
    """Target config.json; `embedding` fingerprints the source embedding table (see README)."""
    out = _common(cfg, arch=TRT_ARCHITECTURE[cfg.arch], dtype=dtype, vocab=cfg.vocab_size, qk_norm=cfg.qk_norm, tp=tp)
    if cfg.arch != "llama":
        out["qwen_type"] = cfg.arch
    out.update(
        use_parallel_embedding=True,
        embedding_sharding_dim=0,
        tie_word_embeddings=cfg.tie_word_embeddings,
        dflash_trt={
            "format_version": FORMAT_VERSION,
            "role": "target",
            "vocab_size_padded": pad_to_multiple(cfg.vocab_size, tp),
            "embedding": embedding,
            "hf_config": hf,
        },
    )
    return out


def drafter_config(
    cfg: DrafterConfig,
    hf: dict[str, Any],
    target: TargetConfig,
    *,
    tp: int,
    dtype: DType,
    embedding: dict[str, Any] | None,
) -> dict[str, Any]:
    """Drafter config.json: Qwen3-style layers plus the `dflash` section naming the target it belongs to."""
    arch = "DFlash2DraftModel" if cfg.is_dflash2 else "DFlashDraftModel"
    out = _common(cfg, arch=arch, dtype=dtype, vocab=target.vocab_size, qk_norm=True, tp=tp)
    # z-lab's logit/embedding scales (v1 only when set) and the DFlash2 keys, for readers of this file
    zlab_keys = tuple(
        k
        for k, default in (
            ("input_embedding_scale", 1.0),
            ("output_multiplier", 1.0),
            ("final_logit_softcapping", None),
        )
        if cfg.is_dflash2 or getattr(cfg, k) != default
    )
    if cfg.is_dflash2:
        zlab_keys += ("is_causal", "conv_kernel_size", "conv_group_size", "selector_rank", "selector_top_k")
    out.update(
        layer_types=list(cfg.layer_types) or ["full_attention"] * cfg.num_layers,
        sliding_window=cfg.sliding_window,
        dflash={
            "block_size": cfg.block_size,
            "mask_token_id": cfg.mask_token_id,
            "target_layer_ids": list(cfg.target_layer_ids),
            "num_target_layers": target.num_layers,
            **{key: getattr(cfg, key) for key in zlab_keys},
            "target": {
                "architecture": TRT_ARCHITECTURE[target.arch],
                "num_hidden_layers": target.num_layers,
                "hidden_size": target.hidden_size,
                "vocab_size": target.vocab_size,
                "embedding": embedding,
            },
        },
        dflash_trt={"format_version": FORMAT_VERSION, "role": "drafter", "hf_config": hf},
    )
    return out


def read_converted(directory: Path) -> tuple[dict[str, Any], dict[str, Any], TargetConfig, DrafterConfig]:
    """Both config.json files of a converted checkpoint and the typed configs they were made from."""
    target_path, drafter_path = directory / "target" / "config.json", directory / "drafter" / "config.json"
    target_json, drafter_json = read_json(target_path), read_json(drafter_path)
    typed = []
    for path, cfg, cls in ((target_path, target_json, TargetConfig), (drafter_path, drafter_json, DrafterConfig)):
        hf = (cfg.get("dflash_trt") or {}).get("hf_config")
        if not isinstance(hf, dict):
            raise UserError(
                f"{path}: missing field 'dflash_trt.hf_config'; not a dflash-trt checkpoint, re-run convert"
            )
        typed.append(cls.from_hf(hf, f"{path} (dflash_trt.hf_config)"))
    return target_json, drafter_json, typed[0], typed[1]
