"""Test helper: an engine directory with the ONNX graphs (what `dflash-trt build` writes, minus the
TensorRT engines) made with `export_pair` and a minimal TensorRT-LLM-style config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from dflash_trt.export import export_pair
from dflash_trt.parallel.comm import Mapping
from dflash_trt.runtime.loading import load_converted, load_drafter, load_target


def make_engine_dir(
    out: Path,
    *,
    target_dir: Path | None = None,
    drafter_dir: Path | None = None,
    checkpoint: Path | None = None,
    tokenizer_dir: Path | None = None,
    tp: int = 1,
    max_batch: int = 8,
    max_seq_len: int = 512,
    block_size: int | None = None,
) -> Path:
    """Export every rank (HF directories for tp=1, a converted checkpoint for any tp) into `out`."""
    out = Path(out)
    for rank in range(tp):
        if checkpoint is not None:
            target, drafter, target_cfg = load_converted(checkpoint, Mapping(tp, rank))
        else:
            target = load_target(target_dir)
            drafter = load_drafter(drafter_dir, target.cfg)
            target_cfg = target.cfg
        block = block_size or drafter.cfg.block_size
        export_pair(
            target,
            drafter,
            out / "onnx" / f"rank{rank}",
            dtype=torch.float32,
            max_batch=max_batch,
            max_seq_len=max_seq_len,
            block_size=block,
            rank=rank,
            tp_size=tp,
        )
    dcfg = drafter.cfg
    config = {
        "version": "dflash-trt-test",
        "pretrained_config": {
            "architecture": target_cfg.arch,
            "eos_token_id": list(target_cfg.eos_token_ids),
            "dtype": "float32",
            "vocab_size": target_cfg.vocab_size,
            "hidden_size": target_cfg.hidden_size,
            "num_hidden_layers": target_cfg.num_layers,
            "num_attention_heads": target_cfg.num_heads,
            "num_key_value_heads": target_cfg.num_kv_heads,
            "head_size": target_cfg.head_dim,
            "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
        },
        "build_config": {
            "max_batch_size": max_batch,
            "max_input_len": max_seq_len - 1,
            "max_seq_len": max_seq_len,
            "max_draft_len": block - 1,
            "speculative_decoding_mode": "dflash",
        },
        "dflash": {
            "target_layer_ids": list(dcfg.target_layer_ids),
            "mask_token_id": dcfg.mask_token_id,
            "block_size": block,
        },
        "tokenizer": "tokenizer",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok_src = tokenizer_dir or target_dir
    (out / "tokenizer").mkdir(exist_ok=True)
    for path in Path(tok_src).iterdir() if tok_src is not None else ():
        if path.is_file() and path.suffix not in (".safetensors", ".gguf") and path.name != "config.json":
            shutil.copy(path, out / "tokenizer" / path.name)
    return out
