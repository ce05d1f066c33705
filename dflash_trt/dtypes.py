"""The project's one dtype vocabulary: each supported floating dtype under every name a tool uses for it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DType:
    """One dtype under each of its names."""

    cli: str  # --dtype value and YAML recipes: fp32 / bf16 / fp16
    trtllm: str  # TensorRT-LLM config.json "dtype"; also the ONNX / plugin-contract name
    code: str  # safetensors header dtype
    torch: torch.dtype
    itemsize: int


DTYPES = (
    DType("fp32", "float32", "F32", torch.float32, 4),
    DType("bf16", "bfloat16", "BF16", torch.bfloat16, 2),
    DType("fp16", "float16", "F16", torch.float16, 2),
)
CLI_NAMES = tuple(d.cli for d in DTYPES)


def dtype_named(name: str) -> DType | None:
    """Look a dtype up by any of its names (`bf16`, `bfloat16`, `BF16`), or None."""
    return next((d for d in DTYPES if name in (d.cli, d.trtllm, d.code)), None)


def of_torch(dtype: torch.dtype) -> DType:
    """The entry of a torch floating dtype."""
    return next(d for d in DTYPES if d.torch == dtype)


def torch_dtype(cli: str) -> torch.dtype:
    """The torch dtype of a `--dtype` value (fp32 / bf16 / fp16)."""
    found = dtype_named(cli)
    if found is None:
        raise KeyError(cli)
    return found.torch
