"""ONNX export of the plugin ops and an onnxruntime (CPU) runner for the exported graphs.

The exported node is ``DFlashBlockAttention`` (the translation the drafter graphs use,
`plugins.onnx_translations`) with the contract's attributes plus ``plugin_namespace``/``plugin_version``.
TensorRT's ONNX parser imports an unknown op as the plugin whose name is the op type, looked up in the
namespace named by ``plugin_namespace``, and turns every other attribute into a plugin field. To run the
graph under onnxruntime, `ort_session` moves the node into ``ai.onnx.contrib``, the domain
onnxruntime-extensions gives its Python custom ops.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from dflash_trt.errors import UserError
from dflash_trt.models.layers import Rope
from dflash_trt.plugins.contracts import BLOCK_ATTENTION
from dflash_trt.plugins.onnx_translations import block_attention_onnx
from dflash_trt.plugins.reference import dflash_block_attention

try:
    import onnx
    import onnxruntime as ort
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
except ImportError as exc:  # optional dependencies
    raise UserError(f"module '{exc.name}' is missing: pip install 'dflash-trt[onnx]'") from exc

ORT_DOMAIN = "ai.onnx.contrib"
DYNAMIC_DIMS = ("b", "S")  # batch and context capacity vary at run time; block and RoPE table do not


class BlockAttention(torch.nn.Module):
    """The op alone as a module; forward's parameter names become the ONNX input names."""

    def __init__(self, **attrs: int | float) -> None:
        super().__init__()
        self.attrs = BLOCK_ATTENTION.resolve_attrs(**attrs)

    def forward(
        self,
        qkv: Tensor,
        q_norm_weight: Tensor,
        k_norm_weight: Tensor,
        rope_cos: Tensor,
        rope_sin: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        ctx_lens: Tensor,
    ) -> Tensor:
        return dflash_block_attention(
            qkv, q_norm_weight, k_norm_weight, rope_cos, rope_sin, k_cache, v_cache, ctx_lens, **self.attrs
        )


def example_inputs(
    attrs: Mapping[str, int | float],
    *,
    batch: int,
    block: int,
    ctx: int,
    max_pos: int,
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> tuple[Tensor, ...]:
    """Random valid inputs in contract order (ragged ctx_lens in [0, ctx], norm weights near 1)."""
    g = torch.Generator().manual_seed(seed)
    nh, nkv, d = attrs["num_heads"], attrs["num_kv_heads"], attrs["head_dim"]
    if ctx + block > max_pos:
        raise UserError(f"max_pos={max_pos} must be >= ctx + block = {ctx + block}")

    def rnd(*shape: int, scale: float = 1.0, offset: float = 0.0) -> Tensor:
        return (torch.randn(*shape, generator=g) * scale + offset).to(dtype)

    cos, sin = Rope.build(d, 1_000_000.0, None, max_pos)
    lens = torch.randint(0, ctx + 1, (batch,), generator=g, dtype=torch.int32)
    return (
        rnd(batch, block, (nh + 2 * nkv) * d),
        rnd(d, scale=0.1, offset=1.0),
        rnd(d, scale=0.1, offset=1.0),
        cos,
        sin,
        rnd(batch, nkv, ctx, d),
        rnd(batch, nkv, ctx, d),
        lens,
    )


def export_block_attention(
    path: str | Path | None, attrs: Mapping[str, int | float], example: Sequence[Tensor], *, dynamic: bool = True
) -> onnx.ModelProto:
    """Export a graph holding one ``DFlashBlockAttention`` node (dynamo exporter); save it if ``path``.

    With ``dynamic``, batch and context capacity stay symbolic; the example must then have both >= 2
    (torch.export specializes sizes 0 and 1).
    """
    module = BlockAttention(**attrs).eval()
    dynamic_shapes = None
    if dynamic:
        b, ctx = example[0].shape[0], example[5].shape[2]
        if min(b, ctx) < 2:
            raise UserError(f"dynamic ONNX export needs an example with batch >= 2 and context >= 2, got {b} and {ctx}")
        dims = {s: torch.export.Dim(s, min=1) for s in DYNAMIC_DIMS}
        dynamic_shapes = {
            spec.name: {i: dims[d] for i, d in enumerate(spec.shape) if d in dims} or None
            for spec in BLOCK_ATTENTION.inputs
        }
    program = torch.onnx.export(
        module,
        tuple(example),
        dynamo=True,
        custom_translation_table={torch.ops.dflash_trt.block_attention.default: block_attention_onnx},
        dynamic_shapes=dynamic_shapes,
        output_names=[spec.name for spec in BLOCK_ATTENTION.outputs],
        verbose=False,
    )
    model = program.model_proto
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
    return model


@functools.cache
def _register_ort_op() -> None:
    """Register the reference as the onnxruntime-extensions Python op ``ai.onnx.contrib::DFlashBlockAttention``."""
    types = {"T": PyCustomOpDef.dt_float, "float32": PyCustomOpDef.dt_float, "int32": PyCustomOpDef.dt_int32}
    attr_types = {"int32": PyCustomOpDef.dt_int64, "float32": PyCustomOpDef.dt_float}

    @onnx_op(
        op_type=BLOCK_ATTENTION.name,
        inputs=[types[spec.dtype] for spec in BLOCK_ATTENTION.inputs],
        outputs=[types[spec.dtype] for spec in BLOCK_ATTENTION.outputs],
        attrs={a.name: attr_types[a.type] for a in BLOCK_ATTENTION.attrs},
    )
    def _run(*arrays: np.ndarray, **attrs: int | float) -> np.ndarray:
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        return dflash_block_attention(*tensors, **BLOCK_ATTENTION.resolve_attrs(**attrs)).numpy()


def ort_session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    """onnxruntime CPU session in which ``DFlashBlockAttention`` runs the PyTorch reference.

    float32 graphs only: onnxruntime-extensions' Python ops reject float16 and bfloat16 tensors.
    """
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    elem = proto.graph.input[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise UserError(
            f"onnxruntime runner: graph input '{proto.graph.input[0].name}' is "
            f"{onnx.TensorProto.DataType.Name(elem).lower()}; export with dtype=torch.float32 to run it here"
        )
    _register_ort_op()
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # a copy: the caller's graph stays as exported
    for node in proto.graph.node:
        if node.op_type == BLOCK_ATTENTION.name:
            node.domain = ORT_DOMAIN
    for opset in proto.opset_import:
        if opset.domain == BLOCK_ATTENTION.namespace:
            opset.domain = ORT_DOMAIN
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_onnxruntime(session: ort.InferenceSession, inputs: Sequence[Tensor]) -> Tensor:
    """Run a block-attention graph on contract-ordered torch inputs; return the output as torch."""
    feeds = {spec.name: x.numpy() for spec, x in zip(BLOCK_ATTENTION.inputs, inputs)}
    return torch.from_numpy(session.run(None, feeds)[0])
