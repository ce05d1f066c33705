"""ONNX export of DFlashBlockAttention: node, domain, attributes, shapes; onnxruntime and the PyTorch
reference vs an independent float64 numpy implementation of the contract (tests/numpy_reference.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import numpy_reference
from dflash_trt.errors import UserError
from dflash_trt.plugins.contracts import BLOCK_ATTENTION
from dflash_trt.plugins.onnx import (
    example_inputs,
    export_block_attention,
    ort_session,
    run_onnxruntime,
)
from dflash_trt.plugins.reference import dflash_block_attention

ATTRS = BLOCK_ATTENTION.resolve_attrs(num_heads=8, num_kv_heads=2, head_dim=64, window=5, qk_norm=1, eps=1e-5)
ELEM = {
    "float32": onnx.TensorProto.FLOAT,
    "float16": onnx.TensorProto.FLOAT16,
    "bfloat16": onnx.TensorProto.BFLOAT16,
    "int32": onnx.TensorProto.INT32,
}


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
    assert (node.op_type, node.domain) == (BLOCK_ATTENTION.name, BLOCK_ATTENTION.namespace)
    assert {o.domain: o.version for o in fp16_model.opset_import}[BLOCK_ATTENTION.namespace] == 1
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
        "qkv": ["b", 4, (nh + 2 * nkv) * d],
        "q_norm_weight": [d],
        "k_norm_weight": [d],
        "rope_cos": [64, d // 2],
        "rope_sin": [64, d // 2],
        "k_cache": ["b", nkv, "S", d],
        "v_cache": ["b", nkv, "S", d],
        "ctx_lens": ["b"],
        "out": ["b", 4, nh * d],
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
    export_block_attention(
        path, ATTRS, example_inputs(ATTRS, batch=2, block=4, ctx=12, max_pos=64, dtype=torch.float32)
    )
    return path


# |output - float64 numpy| bounds: fp32 math inside, then the output rounded to T once (rtol ~ one ulp of T).
TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=1e-4),
    torch.bfloat16: dict(rtol=8e-3, atol=1e-3),
}


def _inputs(attrs, *, batch, ctx, lens, dtype=torch.float32, seed=0, max_pos=64):
    """example_inputs with chosen ctx_lens and loud garbage in the cache padding (rows >= ctx_lens[b]).

    Padding keys are large, so a key read from padding would take most of the softmax weight, and padding
    values are far from the valid ones: reading any padding row moves the output visibly.
    """
    inputs = list(example_inputs(attrs, batch=batch, block=4, ctx=ctx, max_pos=max_pos, dtype=dtype, seed=seed))
    lens = torch.tensor(lens, dtype=torch.int32)
    pad = (torch.arange(ctx)[None, :] >= lens[:, None])[:, None, :, None]  # [b, 1, S, 1]
    g = torch.Generator().manual_seed(seed + 100)
    garbage_k = (8 * torch.randn(inputs[5].shape, generator=g)).to(dtype)
    inputs[5] = torch.where(pad, garbage_k, inputs[5])
    inputs[6] = torch.where(pad, torch.full_like(inputs[6], 50.0), inputs[6])
    inputs[7] = lens
    return tuple(inputs)


def _numpy_reference(inputs, attrs):
    """The float64 numpy implementation on the exact values of the (possibly half) inputs."""
    return numpy_reference.block_attention(*(t.float() if t.is_floating_point() else t for t in inputs), **attrs)


def _assert_matches(got, want, dtype):
    np.testing.assert_allclose(got.double().numpy(), want, **TOLERANCE[dtype])


# (batch, ctx, ctx_lens, seed): empty, full, partial contexts; contexts longer and shorter than the window
CASES = [(2, 12, (12, 5), 1), (5, 31, (0, 31, 7, 16, 30), 2), (1, 3, (2,), 3)]


def test_example_rope_tables_match_numpy():
    """The cos/sin inputs used below are the rotate-half tables the contract names (theta 1e6)."""
    cos, sin = example_inputs(ATTRS, batch=1, block=4, ctx=4, max_pos=64, dtype=torch.float32)[3:5]
    want_cos, want_sin = numpy_reference.rope_tables(64, ATTRS["head_dim"], theta=1e6)
    np.testing.assert_allclose(cos.numpy(), want_cos, atol=1e-5, rtol=0)
    np.testing.assert_allclose(sin.numpy(), want_sin, atol=1e-5, rtol=0)


def test_onnxruntime_matches_numpy(fp32_path):
    """Exported at one (batch, context) and run at others: the dynamic dims carry through."""
    session = ort_session(fp32_path)
    for batch, ctx, lens, seed in CASES:
        inputs = _inputs(ATTRS, batch=batch, ctx=ctx, lens=lens, seed=seed)
        _assert_matches(run_onnxruntime(session, inputs), _numpy_reference(inputs, ATTRS), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("changes", [{}, dict(window=0), dict(qk_norm=0), dict(window=1, eps=0.5)])
def test_pytorch_reference_matches_numpy(dtype, changes):
    attrs = {**ATTRS, **changes}
    for batch, ctx, lens, seed in CASES:
        inputs = _inputs(attrs, batch=batch, ctx=ctx, lens=lens, dtype=dtype, seed=seed)
        _assert_matches(dflash_block_attention(*inputs, **attrs), _numpy_reference(inputs, attrs), dtype)


def _interleaved_rope(x, cos, sin):
    x1, x2 = x[:, 0::2], x[:, 1::2]
    out = np.empty_like(x)
    out[:, 0::2], out[:, 1::2] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    return out


MISTAKES = {  # plausible bugs, each a one-function change to the numpy implementation
    "interleaved RoPE": ("_rope", _interleaved_rope),
    "window <=": (
        "_in_window",
        lambda q, k, w: np.abs(q[:, None] - k[None, :]) <= w if w else np.ones((len(q), len(k)), dtype=bool),
    ),
    "window ignored": ("_in_window", lambda q, k, w: np.ones((len(q), len(k)), dtype=bool)),
    "padding read": ("_valid_context", lambda row, n: row),
    "block positions from 0": ("_block_positions", lambda n, blk: np.arange(blk)),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_inputs_expose_mistakes(fp32_path, monkeypatch, mistake):
    """The cases above are discriminating: onnxruntime's output is far from a deliberately wrong
    implementation, so a reference or plugin with that bug could not pass the comparisons."""
    session = ort_session(fp32_path)
    monkeypatch.setattr(numpy_reference, *MISTAKES[mistake])
    for batch, ctx, lens, seed in CASES[:2]:
        inputs = _inputs(ATTRS, batch=batch, ctx=ctx, lens=lens, seed=seed)
        got = run_onnxruntime(session, inputs).double().numpy()
        assert np.abs(got - _numpy_reference(inputs, ATTRS)).max() > 0.1, (mistake, batch, ctx)


@pytest.mark.parametrize("changes", [dict(window=0), dict(qk_norm=0), dict(eps=0.5), dict(window=2, qk_norm=0)])
def test_onnxruntime_reads_node_attributes(fp32_path, changes):
    """Edit the node's attributes: onnxruntime's answer follows them, and differs from the original."""
    model = onnx.load(str(fp32_path))
    for a in model.graph.node[0].attribute:
        if a.name in changes:
            a.CopyFrom(onnx.helper.make_attribute(a.name, changes[a.name]))
    inputs = _inputs(ATTRS, batch=3, ctx=20, lens=(20, 9, 3), seed=4)
    got = run_onnxruntime(ort_session(model), inputs)
    _assert_matches(got, _numpy_reference(inputs, {**ATTRS, **changes}), torch.float32)
    assert np.abs(got.double().numpy() - _numpy_reference(inputs, ATTRS)).max() > 1e-3


def test_onnxruntime_rejects_half_graphs(fp16_model):
    with pytest.raises(UserError, match="float16"):
        ort_session(fp16_model)
