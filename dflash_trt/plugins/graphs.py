"""One-node ONNX graphs of any plugin contract, for TensorRT(-RTX) builds of the plugins' build-time side.

``plugin_graph(CONTEXT_KV_APPEND, attrs, "float16")`` returns a model whose inputs and outputs are the
contract's tensors, named as in the contract, with symbolic dimensions for the free symbols (``b``,
``S``, ``pages``...) and concrete ones for attribute expressions. TensorRT's ONNX parser imports the node
as the plugin named by its op type, in the namespace of its ``plugin_namespace`` attribute. The
building blocks (``value_info``, ``plugin_node``) compose graphs of several plugin nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import onnx
from onnx import TensorProto, helper

from dflash_trt.plugins.contracts import OpContract, TensorSpec, _eval

ELEM_TYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
    "int32": TensorProto.INT32,
}
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("dflash_trt", 1)]


def _dim(expr: str, attrs: Mapping[str, int | float]) -> int | str:
    try:
        return int(_eval(expr, attrs))
    except KeyError:  # a free symbol (b, S, pages, ...) or an expression over one: symbolic
        return expr


def value_info(
    spec: TensorSpec, attrs: Mapping[str, int | float], dtype: str, name: str | None = None
) -> onnx.ValueInfoProto:
    """The tensor of ``spec`` (type parameter T = ``dtype``) as a graph input/output."""
    elem = ELEM_TYPES[dtype if spec.dtype == "T" else spec.dtype]
    return helper.make_tensor_value_info(name or spec.name, elem, [_dim(d, attrs) for d in spec.shape])


def plugin_node(
    op: OpContract,
    attrs: Mapping[str, int | float],
    inputs: Sequence[str],
    outputs: Sequence[str],
    name: str | None = None,
) -> onnx.NodeProto:
    """A node TensorRT imports as plugin ``op`` with fields ``attrs``."""
    return helper.make_node(
        op.name,
        list(inputs),
        list(outputs),
        name=name or f"{op.name}_node",
        domain=op.namespace,
        plugin_namespace=op.namespace,
        plugin_version=op.version,
        **dict(attrs),
    )


def plugin_graph(
    op: OpContract, attrs: Mapping[str, int | float], dtype: str = "float16", path: str | Path | None = None
) -> onnx.ModelProto:
    """A graph of one ``op`` node: the contract's inputs in, its outputs out. ``attrs`` are resolved
    (defaults filled, validated) first; the model is saved to ``path`` when given."""
    attrs = op.resolve_attrs(**attrs)
    graph = helper.make_graph(
        [plugin_node(op, attrs, [t.name for t in op.inputs], [t.name for t in op.outputs])],
        op.name,
        [value_info(t, attrs, dtype) for t in op.inputs],
        [value_info(t, attrs, dtype) for t in op.outputs],
    )
    model = helper.make_model(graph, opset_imports=OPSETS)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
    return model
