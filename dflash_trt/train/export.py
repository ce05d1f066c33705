"""Save a trained drafter as a z-lab DFlash checkpoint (`config.json` + `model.safetensors`).

`zlab_state_dict` is the inverse of `models.loading.drafter_state_dict`: it splits the fused `wqkv`
into q/k/v projections and `w13` into gate/up, and uses z-lab's names.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from dflash_trt.config import DrafterConfig
from dflash_trt.models.drafter import DFlashDrafter


def zlab_state_dict(cfg: DrafterConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map `DFlashDrafter` parameters to z-lab names (`fc.weight`, `layers.{i}.self_attn.q_proj.weight`, ...)."""
    q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    out = {"fc.weight": state["fc.weight"], "hidden_norm.weight": state["hidden_norm.weight"],
           "norm.weight": state["norm.weight"]}
    for i in range(cfg.num_layers):
        src, dst = f"layers.{i}", f"layers.{i}"
        q, k, v = state[f"{src}.attn.wqkv.weight"].split([q_dim, kv_dim, kv_dim])
        out |= {f"{dst}.self_attn.q_proj.weight": q, f"{dst}.self_attn.k_proj.weight": k,
                f"{dst}.self_attn.v_proj.weight": v,
                f"{dst}.self_attn.o_proj.weight": state[f"{src}.attn.wo.weight"],
                f"{dst}.self_attn.q_norm.weight": state[f"{src}.attn.q_norm.weight"],
                f"{dst}.self_attn.k_norm.weight": state[f"{src}.attn.k_norm.weight"],
                f"{dst}.input_layernorm.weight": state[f"{src}.attn_norm.weight"],
                f"{dst}.post_attention_layernorm.weight": state[f"{src}.mlp_norm.weight"],
                f"{dst}.mlp.down_proj.weight": state[f"{src}.mlp.w2.weight"]}
        if cfg.qkv_bias:
            qb, kb, vb = state[f"{src}.attn.wqkv.bias"].split([q_dim, kv_dim, kv_dim])
            out |= {f"{dst}.self_attn.q_proj.bias": qb, f"{dst}.self_attn.k_proj.bias": kb,
                    f"{dst}.self_attn.v_proj.bias": vb}
        gate, up = state[f"{src}.mlp.w13.weight"].chunk(2)
        out |= {f"{dst}.mlp.gate_proj.weight": gate, f"{dst}.mlp.up_proj.weight": up}
    return out


def save_zlab(drafter: DFlashDrafter, directory: Path, dtype: torch.dtype = torch.bfloat16,
              extra_files: dict[str, str] | None = None) -> Path:
    """Write the checkpoint into `directory` atomically: a sibling temp dir renamed into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().to(dtype).contiguous() for k, v in drafter.state_dict().items()}
        save_file(zlab_state_dict(drafter.cfg, state), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        dtype_name = str(dtype).removeprefix("torch.")
        config = drafter.cfg.to_hf({"torch_dtype": dtype_name, "dtype": dtype_name})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        tmp.chmod(0o755)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
