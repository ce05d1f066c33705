"""Save a trained drafter as a z-lab DFlash checkpoint (`config.json` + `model.safetensors`).

The names come from the drafter's weight table (`checkpoint.layout.drafter_weights`): `hf_from_internal`
splits the fused `wqkv` into q/k/v projections and `w13` into gate/up, the inverse of `internal_from_hf`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from dflash_trt.atomic import atomic_directory
from dflash_trt.checkpoint.layout import drafter_weights, hf_from_internal
from dflash_trt.dtypes import of_torch
from dflash_trt.models.drafter import DFlashDrafter


def save_zlab(
    drafter: DFlashDrafter,
    directory: Path,
    dtype: torch.dtype = torch.bfloat16,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write the checkpoint into `directory` atomically: a sibling temp dir renamed into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(directory) as tmp:
        state = {k: v.detach().to(dtype).contiguous() for k, v in drafter.state_dict().items()}
        zlab = hf_from_internal(drafter_weights(drafter.cfg), state)
        save_file(zlab, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        dtype_name = of_torch(dtype).trtllm  # float32 / bfloat16 / float16, as HF writes torch_dtype
        config = drafter.cfg.to_hf({"torch_dtype": dtype_name, "dtype": dtype_name})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return directory
