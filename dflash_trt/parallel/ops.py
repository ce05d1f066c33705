"""Collectives as torch custom ops, so that an exported TP rank graph holds them as nodes.

`dflash_trt::all_reduce` (sum over the TP group) and `dflash_trt::all_gather` (concatenate the ranks'
tensors along the last dimension, in rank order). Eager bodies are torch.distributed collectives (gloo on
CPU); under export they become the ONNX nodes `dflash_trt::AllReduce` / `dflash_trt::AllGather` with the
attributes `group_size`, `reduce_op` / `axis`, `plugin_namespace` and `plugin_version`. TensorRT builds them as
this project's `AllReduce` / `AllGather` plugins (NCCL on the GPU, plugins/); the onnxruntime backend runs them
with MPI between standard-op graph segments (`dflash_trt.runtime.onnxruntime`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

DOMAIN = "dflash_trt"
ALL_REDUCE = "AllReduce"
ALL_GATHER = "AllGather"
COLLECTIVES = (ALL_REDUCE, ALL_GATHER)


_group_size: int | None = None


def group_size() -> int:
    """The TP group size the collectives run over: the process group's, or the one set by `exporting`."""
    if _group_size is not None:
        return _group_size
    return dist.get_world_size() if dist.is_initialized() else 1


@contextlib.contextmanager
def exporting(tp_size: int) -> Iterator[None]:
    """Trace one rank of a tp_size group in a single process: collectives record group_size=tp_size."""
    global _group_size
    previous, _group_size = _group_size, tp_size
    try:
        yield
    finally:
        _group_size = previous


@torch.library.custom_op("dflash_trt::all_reduce", mutates_args=())
def all_reduce(x: Tensor, group_size: int) -> Tensor:
    """Sum of x over the TP group (a new tensor)."""
    out = x.clone()
    if group_size > 1:
        dist.all_reduce(out)
    return out


@all_reduce.register_fake
def _(x: Tensor, group_size: int) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("dflash_trt::all_gather", mutates_args=())
def all_gather(x: Tensor, group_size: int) -> Tensor:
    """The ranks' x concatenated along the last dimension, in rank order."""
    if group_size == 1:
        return x.clone()
    parts = [torch.empty_like(x) for _ in range(group_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


@all_gather.register_fake
def _(x: Tensor, group_size: int) -> Tensor:
    return x.new_empty(*x.shape[:-1], x.shape[-1] * group_size)


def onnx_translations() -> dict:
    """custom_translation_table entries for torch.onnx.export (dynamo) emitting the collective nodes."""
    from dflash_trt.parallel.onnx_ops import all_gather_onnx, all_reduce_onnx

    return {
        torch.ops.dflash_trt.all_reduce.default: all_reduce_onnx,
        torch.ops.dflash_trt.all_gather.default: all_gather_onnx,
    }
