"""Tiny random HF checkpoints (Llama / Qwen2 / Qwen3 targets, a z-lab-style drafter) and unsharding helpers."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dflash_trt.checkpoint.layout import drafter_entries, target_entries
from dflash_trt.checkpoint.sharding import unshard
from dflash_trt.checkpoint.trtllm_config import read_converted
from dflash_trt.config import DrafterConfig

# 8 heads / 2 KV heads: tp 4 and 8 duplicate KV heads; vocab 250 is padded at tp 4 and 8.
TINY = dict(
    vocab_size=250,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=8,
    num_key_value_heads=2,
)


def build_target(directory: Path, family: str, *, tie: bool = False, max_shard_size: str | None = None, **over) -> Path:
    """Save a tiny random HF model of `family` (llama / qwen2 / qwen3) with transformers' own `save_pretrained`."""
    import transformers

    cls = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    config = getattr(transformers, f"{cls}Config")(**{**TINY, "tie_word_embeddings": tie, **over})
    torch.manual_seed(zlib.crc32(directory.name.encode()))
    model = getattr(transformers, f"{cls}ForCausalLM")(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # norms too, so a replicated/split mix-up cannot hide behind all-ones weights
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    return directory


def drafter_config(**over) -> DrafterConfig:
    base = dict(
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=8,
        num_kv_heads=2,
        head_dim=16,
        block_size=4,
        mask_token_id=249,
        target_layer_ids=(0, 2),
        num_target_layers=3,
        vocab_size=250,
    )
    return DrafterConfig(**{**base, **over})


def build_drafter(directory: Path, cfg: DrafterConfig | None = None, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A z-lab-layout drafter: config.json from `DrafterConfig.to_hf`, bf16 weights with z-lab names."""
    cfg = cfg or drafter_config()
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(cfg.to_hf()))
    h, q, kv, hd = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.head_dim
    shapes = {"fc.weight": (h, len(cfg.target_layer_ids) * h), "hidden_norm.weight": (h,), "norm.weight": (h,)}
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (q, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, q),
                p + "self_attn.q_norm.weight": (hd,),
                p + "self_attn.k_norm.weight": (hd,),
                p + "mlp.gate_proj.weight": (cfg.intermediate_size, h),
                p + "mlp.up_proj.weight": (cfg.intermediate_size, h),
                p + "mlp.down_proj.weight": (h, cfg.intermediate_size),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    gen = torch.Generator().manual_seed(7)
    save_file({k: torch.randn(s, generator=gen).to(dtype) for k, s in shapes.items()}, directory / "model.safetensors")
    return directory


def read_source(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            out.update({k: f.get_tensor(k).clone() for k in f.keys()})  # noqa: SIM118 (safe_open is no dict)
    return out


def read_unsharded(out: Path, role: str) -> dict[str, torch.Tensor]:
    """The tests' unsharder: rank files -> full tensors, through the same layout and rules as the converter."""
    _, _, target, drafter = read_converted(out)
    entries = target_entries(target) if role == "target" else drafter_entries(drafter)
    ranks = []
    for path in sorted((out / role).glob("rank*.safetensors"), key=lambda p: int(p.stem[4:])):
        with safe_open(path, "pt") as f:
            ranks.append({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 (safe_open is no dict)
    return {e.name: unshard(e.rule, [r[e.name] for r in ranks]) for e in entries}


def expected_tensors(source_dir: Path, entries, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """What each unsharded output tensor must equal: the HF tensor(s), fused for qkv, cast to the output dtype."""
    src = read_source(source_dir)
    return {e.name: torch.cat([src[s] for s in e.sources]).to(dtype) for e in entries}


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory) -> dict[str, Path]:
    """Session-wide pristine sources: one target per family (+ a tied and a sharded Qwen3) and a drafter."""
    root = tmp_path_factory.mktemp("sources")
    dirs = {fam: build_target(root / fam, fam) for fam in ("llama", "qwen2", "qwen3")}
    dirs["llama-tied"] = build_target(root / "llama-tied", "llama", tie=True)
    dirs["qwen3-sharded"] = build_target(root / "qwen3-sharded", "qwen3", max_shard_size="40KB", head_dim=16)
    dirs["drafter"] = build_drafter(root / "drafter")
    return dirs


@pytest.fixture
def pair(tiny_sources, tmp_path) -> tuple[Path, Path]:
    """A private, corruptible copy of the Qwen3 target and the drafter."""
    return (
        shutil.copytree(tiny_sources["qwen3"], tmp_path / "target"),
        shutil.copytree(tiny_sources["drafter"], tmp_path / "drafter"),
    )
