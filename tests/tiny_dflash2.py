"""Tiny random DFlash2 drafters written by z-lab's own `DFlash2DraftModel` (peer format and weights)."""

from __future__ import annotations

from pathlib import Path

import torch

from tiny import drafter_hf_config


def dflash2_hf_config(
    target_cfg: dict,
    *,
    kernel: int = 2,
    group: int = 16,
    top_k: int = 8,
    rank: int = 8,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    output_multiplier=None,
    softcap=None,
    embedding_scale=None,
    top_level: bool = False,
    **kwargs,
) -> dict:
    """A DFlash2 config.json; `top_level` puts the DFlash2 keys at the top level instead of `dflash_config`."""
    cfg = drafter_hf_config(target_cfg, **kwargs)
    cfg["architectures"] = ["DFlash2DraftModel"]
    keys = dict(
        conv_kernel_size=kernel,
        conv_group_size=group,
        selector_top_k=top_k,
        selector_rank=rank,
        output_multiplier=output_multiplier,
        final_logit_softcapping=softcap,
        input_embedding_scale=embedding_scale,
        block_size=cfg.pop("block_size"),
    )
    keys = {k: v for k, v in keys.items() if v is not None}
    (cfg if top_level else cfg["dflash_config"]).update(keys)
    cfg["is_causal"] = is_causal
    if sliding_window:
        cfg.update(
            use_sliding_window=True,
            sliding_window=sliding_window,
            max_window_layers=0,
            layer_types=["sliding_attention"] * cfg["num_hidden_layers"],
        )
    return cfg


def save_zlab_drafter2(directory: Path, target_cfg: dict, seed: int = 1, codebook_std: float = 0.5, **kwargs) -> Path:
    """Write a random DFlash2 drafter with z-lab's class; every weight (base kernels and codebooks too) random."""
    from dflash.model import DFlash2DraftModel
    from transformers import Qwen3Config

    cfg = dflash2_hf_config(target_cfg, **kwargs)
    torch.manual_seed(seed)
    model = DFlash2DraftModel(Qwen3Config(**cfg)).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif "codebook" in name:
                p.normal_(0, codebook_std)
            else:
                p.normal_(0, 0.2)
    model.save_pretrained(directory, safe_serialization=True)
    return Path(directory)
