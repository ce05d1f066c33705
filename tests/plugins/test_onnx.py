"""ONNX export of DFlashBlockAttention: node, domain, attributes, shapes; onnxruntime run vs PyTorch."""

from __future__ import annotations

import onnx
import pytest
import torch

from dflash_trt.errors import UserError
from dflash_trt.plugins.contracts import BLOCK_ATTENTION
from dflash_trt.plugins.onnx import (
    DOMAIN,
    BlockAttention,
    example_inputs,
    export_block_attention,
    ort_session,
    run_onnxruntime,
)

ATTRS = BLOCK_ATTENTION.resolve_attrs(num_heads=8, num_kv_heads=2, head_dim=64, window=5, qk_norm=1, eps=1e-5)
ELEM = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16,
        "bfloat16": onnx.TensorProto.BFLOAT16, "int32": onnx.TensorProto.INT32}


@pytest.fixture(scope="module")
def fp16_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "block_attention_fp16.onnx"
    example = example_inputs(ATTRS, batch=2, block=4, ctx=12, max_pos=64, dtype=torch.float16)
    export_block_attention(path, ATTRS, example)
    return onnx.load(str(path))


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_graph_is_one_plugin_node(fp16_model):
    onnx.checker.check_model(fp16_model)
    (node,) = fp16_model.graph.node
    assert (node.op_type, node.domain) == (BLOCK_ATTENTION.name, DOMAIN)
    assert {o.domain: o.version for o in fp16_model.opset_import}[DOMAIN] == 1
    assert list(node.input) == [spec.name for spec in BLOCK_ATTENTION.inputs]
    assert list(node.output) == [spec.name for spec in BLOCK_ATTENTION.outputs]

    attrs = {a.name: a for a in node.attribute}
    assert set(attrs) == {a.name for a in BLOCK_ATTENTION.attrs} | {"plugin_namespace", "plugin_version"}
    assert attrs["plugin_namespace"].s.decode() == BLOCK_ATTENTION.namespace
    assert attrs["plugin_version"].s.decode() == BLOCK_ATTENTION.version
    for spec in BLOCK_ATTENTION.attrs:
        a = attrs[spec.name]
        if spec.type == "int32":
            assert (a.type, a.i) == (onnx.AttributeProto.INT, ATTRS[spec.name])
        else:
            assert a.type == onnx.AttributeProto.FLOAT
            assert a.f == pytest.approx(ATTRS[spec.name])


def test_graph_io_follows_contract(fp16_model):
    graph = fp16_model.graph
    assert [i.name for i in graph.input] == [spec.name for spec in BLOCK_ATTENTION.inputs]
    nh, nkv, d = ATTRS["num_heads"], ATTRS["num_kv_heads"], ATTRS["head_dim"]
    want = {  # b and S stay symbolic; everything else is fixed by the attributes or the example
        "qkv": ["b", 4, (nh + 2 * nkv) * d], "q_norm_weight": [d], "k_norm_weight": [d],
        "rope_cos": [64, d // 2], "rope_sin": [64, d // 2], "k_cache": ["b", nkv, "S", d],
        "v_cache": ["b", nkv, "S", d], "ctx_lens": ["b"], "out": ["b", 4, nh * d],
    }
    for spec, vi in zip(BLOCK_ATTENTION.inputs + BLOCK_ATTENTION.outputs, list(graph.input) + list(graph.output)):
        dtype = "float16" if spec.dtype == "T" else spec.dtype
        assert vi.type.tensor_type.elem_type == ELEM[dtype], spec.name
        assert _dims(vi) == want[spec.name], spec.name


def test_static_export_has_concrete_shapes():
    example = example_inputs(ATTRS, batch=3, block=4, ctx=7, max_pos=16, dtype=torch.bfloat16)
    model = export_block_attention(None, ATTRS, example, dynamic=False)
    assert _dims(model.graph.input[0]) == [3, 4, 12 * 64]
    assert _dims(model.graph.input[5]) == [3, 2, 7, 64]
    assert _dims(model.graph.output[0]) == [3, 4, 8 * 64]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16


@pytest.fixture(scope="module")
def fp32_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "block_attention_fp32.onnx"
    export_block_attention(path, ATTRS, example_inputs(ATTRS, batch=2, block=4, ctx=12, max_pos=64,
                                                       dtype=torch.float32))
    return path


def test_onnxruntime_matches_pytorch(fp32_path):
    """Exported at one (batch, context) and run at others: the dynamic dims carry through."""
    session = ort_session(fp32_path)
    for batch, ctx, seed in ((2, 12, 1), (5, 31, 2), (1, 3, 3)):
        inputs = example_inputs(ATTRS, batch=batch, block=4, ctx=ctx, max_pos=64, dtype=torch.float32, seed=seed)
        torch.testing.assert_close(run_onnxruntime(session, inputs), BlockAttention(**ATTRS)(*inputs))


@pytest.mark.parametrize("changes", [dict(window=0), dict(qk_norm=0), dict(eps=0.5), dict(window=2, qk_norm=0)])
def test_onnxruntime_reads_node_attributes(fp32_path, changes):
    """Edit the node's attributes: onnxruntime's answer follows them, and differs from the original."""
    model = onnx.load(str(fp32_path))
    for a in model.graph.node[0].attribute:
        if a.name in changes:
            a.CopyFrom(onnx.helper.make_attribute(a.name, changes[a.name]))
    inputs = example_inputs(ATTRS, batch=3, block=4, ctx=20, max_pos=64, dtype=torch.float32, seed=4)
    got = run_onnxruntime(ort_session(model), inputs)
    torch.testing.assert_close(got, BlockAttention(**{**ATTRS, **changes})(*inputs))
    assert not torch.allclose(got, BlockAttention(**ATTRS)(*inputs), atol=1e-3)


def test_onnxruntime_rejects_half_graphs(fp16_model):
    with pytest.raises(UserError, match="float16"):
        ort_session(fp16_model)
