"""A real TensorRT builder (TensorRT-RTX 1.7.1, CPU-only) takes our ONNX graphs and IPluginV3 library.

What runs here: the plugin library is built with CMake (host backend), loaded into TensorRT-RTX's
registry, the ONNX parser imports each DFlashBlockAttention node as our plugin (createPlugin), and the
builder runs the plugin's build-time methods (getOutputShapes, getOutputDataTypes,
supportsFormatCombination, configurePlugin, getWorkspaceSize, getFieldsToSerialize) and serializes a
plan. What does not: deserializing or running the plan needs a GPU (see the `gpu` test at the end).
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dflash_trt.errors import UserError
from dflash_trt.plugins import trt_rtx
from dflash_trt.plugins.contracts import (
    BLOCK_ATTENTION,
    CONTEXT_KV_APPEND,
    CONTRACTS,
    PAGED_BLOCK_ATTENTION,
    PAGED_KV_APPEND,
)
from dflash_trt.plugins.graphs import OPSETS, plugin_graph, plugin_node, value_info
from dflash_trt.plugins.library import (
    ENV_VAR,
    find_plugin_library,
    load_plugin_library,
    plugin_backend,
    register_plugins,
)
from dflash_trt.plugins.onnx import example_inputs, export_block_attention
from dflash_trt.plugins.trt_rtx import build_engine


@pytest.fixture(scope="session")
def plugin_lib(request) -> Path:
    """libdflash_trt_plugins.so: $DFLASH_TRT_PLUGIN_LIB if set, else the host CMake build (conftest.py)."""
    if os.environ.get(ENV_VAR):
        return find_plugin_library()
    return request.getfixturevalue("host_build").plugin_library


def _profile(attrs, block: int) -> dict:
    """(min, opt, max) shapes for the dynamic batch b in 1..8 and context capacity S in 1..256."""
    nh, nkv, d = attrs["num_heads"], attrs["num_kv_heads"], attrs["head_dim"]
    cache = ((1, nkv, 1, d), (2, nkv, 64, d), (8, nkv, 256, d))
    qkv_width = (nh + 2 * nkv) * d
    return {
        "qkv": tuple((b, block, qkv_width) for b in (1, 2, 8)),
        "k_cache": cache,
        "v_cache": cache,
        "ctx_lens": ((1,), (2,), (8,)),
    }


GRAPHS = {  # name: (dtype, block, attributes)
    "qwen3_8b_fp16": (torch.float16, 16, dict(num_heads=32, num_kv_heads=8, head_dim=128)),
    "swa_bf16": (torch.bfloat16, 4, dict(num_heads=8, num_kv_heads=1, head_dim=64, window=5, qk_norm=0, eps=1e-5)),
    "mha_fp32": (torch.float32, 4, dict(num_heads=4, num_kv_heads=4, head_dim=64, window=3)),
}
TRT_DTYPE = {torch.float32: "DataType.FLOAT", torch.float16: "DataType.HALF", torch.bfloat16: "DataType.BF16"}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("trt_rtx")
    paths = {}
    for name, (dtype, block, attrs) in GRAPHS.items():
        attrs = BLOCK_ATTENTION.resolve_attrs(**attrs)
        paths[name] = out / f"{name}.onnx"
        export_block_attention(
            paths[name], attrs, example_inputs(attrs, batch=2, block=block, ctx=16, max_pos=512, dtype=dtype)
        )
    return paths


def plan_field(plan: bytes, name: str, kind: str) -> int | float:
    """A plugin field as serialized in a TensorRT-RTX 1.7.1 plan (name, type tag, 4-byte value).

    Reverse-read from plans of the pinned version: the layout is not a public format.
    """
    tag = {"int32": b"INT32", "float32": b"FP32"}[kind]
    m = re.search(
        re.escape(name.encode()) + rb"\x07.{0,40}?" + tag + rb"\x01\x80\x03\x80\x01\x00\x04\x00{7}(.{4})",
        plan,
        re.DOTALL,
    )
    assert m, f"field {name} not found in the plan"
    return struct.unpack("<i" if kind == "int32" else "<f", m.group(1))[0]


# --- the library ---------------------------------------------------------------------------------------


def test_library_registers_contracted_creators(plugin_lib):
    """Every contracted op has a creator whose declared fields are the contract's attributes."""
    import tensorrt_rtx as trt

    if not os.environ.get(ENV_VAR):  # the fixture built it
        assert plugin_backend(plugin_lib) == "host"
    assert register_plugins(trt, plugin_lib) == plugin_lib
    registry = trt.get_plugin_registry()
    for op in CONTRACTS.values():
        creator = registry.get_creator(op.name, op.version, op.namespace)
        assert [(f.name, f.type.name) for f in creator.field_names] == [(a.name, a.type.upper()) for a in op.attrs]


def test_creator_applies_contract_validation(plugin_lib):
    """The C++ creator accepts what the contract accepts and refuses what it refuses."""
    import tensorrt_rtx as trt

    register_plugins(trt, plugin_lib)
    creator = trt.get_plugin_registry().get_creator(
        BLOCK_ATTENTION.name, BLOCK_ATTENTION.version, BLOCK_ATTENTION.namespace
    )

    def fields(**values):
        return trt.PluginFieldCollection(
            [
                trt.PluginField(
                    a.name,
                    np.array([values[a.name]], dtype=np.dtype(a.type)),
                    getattr(trt.PluginFieldType, a.type.upper()),
                )
                for a in BLOCK_ATTENTION.attrs
                if a.name in values
            ]
        )

    good = BLOCK_ATTENTION.resolve_attrs(num_heads=8, num_kv_heads=2, head_dim=64)
    assert creator.create_plugin("ok", fields(**good), trt.TensorRTPhase.BUILD) is not None
    required = dict(num_heads=8, num_kv_heads=2, head_dim=128)  # defaults filled by the creator
    assert creator.create_plugin("defaults", fields(**required), trt.TensorRTPhase.BUILD) is not None
    for bad in (dict(head_dim=96), dict(num_kv_heads=3), dict(qk_norm=2), dict(window=-1), dict(eps=-1.0)):
        with pytest.raises(UserError):
            BLOCK_ATTENTION.resolve_attrs(**{**good, **bad})
        assert creator.create_plugin("bad", fields(**{**good, **bad}), trt.TensorRTPhase.BUILD) is None, bad
    missing = {k: v for k, v in good.items() if k != "head_dim"}
    assert creator.create_plugin("missing", fields(**missing), trt.TensorRTPhase.BUILD) is None


def test_library_user_errors(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing.so"))
    with pytest.raises(UserError, match=f"{ENV_VAR}=.*missing.so: no such file"):
        find_plugin_library()
    with pytest.raises(UserError, match="exports no 'getCreators'"):  # a shared library, but no plugin one
        load_plugin_library(Path(torch.__file__).parent / "lib" / "libc10.so")
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setattr("dflash_trt.plugins.library.BUILD_DIR", tmp_path)
    with pytest.raises(UserError, match=r"no libdflash_trt_plugins.so under .*cmake -S plugins") as err:
        find_plugin_library()
    assert "\n" not in str(err.value)


def test_find_library_by_backend(plugin_lib, monkeypatch, tmp_path):
    """Only a CUDA build may serve GPU engines: the backend filter never hands out a host build."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / plugin_lib.name).symlink_to(plugin_lib)
    monkeypatch.setattr("dflash_trt.plugins.library.BUILD_DIR", tmp_path)
    backend = plugin_backend(plugin_lib)
    assert find_plugin_library(backend=backend) == tmp_path / "host" / plugin_lib.name
    other = {"host": "cuda", "cuda": "host"}[backend]
    with pytest.raises(UserError, match=f"no {other} build of libdflash_trt_plugins.so under .*plugins/build/{other}"):
        find_plugin_library(backend=other)


# --- engines -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(GRAPHS))
def test_engine_builds_with_plugin(graphs, plugin_lib, tmp_path, name):
    dtype, block, attrs = GRAPHS[name]
    attrs = BLOCK_ATTENTION.resolve_attrs(**attrs)
    plan_path = tmp_path / f"{name}.plan"
    report = build_engine(graphs[name], plan_path, _profile(attrs, block), plugin_lib=plugin_lib)

    assert report.parsed and not report.parser_errors, report.parser_errors
    (layer,) = report.plugin_layers  # the parser imported the node as our plugin (createPlugin)
    assert layer["plugin"] == [BLOCK_ATTENTION.name, BLOCK_ATTENTION.version, BLOCK_ATTENTION.namespace]
    out_shape = [-1, block, attrs["num_heads"] * attrs["head_dim"]]  # getOutputShapes/getOutputDataTypes
    assert layer["outputs"] == [[TRT_DTYPE[dtype], out_shape]]
    assert report.outputs == [{"name": "out", "dtype": TRT_DTYPE[dtype], "shape": out_shape}]
    assert report.plan_bytes > 0 and not report.log_errors, report.log_errors

    plan = plan_path.read_bytes()
    assert len(plan) == report.plan_bytes
    assert BLOCK_ATTENTION.name.encode() in plan and BLOCK_ATTENTION.namespace.encode() in plan
    for a in BLOCK_ATTENTION.attrs:  # getFieldsToSerialize wrote back the fields the parser passed in
        assert plan_field(plan, a.name, a.type) == pytest.approx(attrs[a.name]), a.name


def _edited(src: Path, dst: Path, edit) -> Path:
    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


def _set_attr(name, value):
    def edit(model):
        for a in model.graph.node[0].attribute:
            if a.name == name:
                a.CopyFrom(onnx.helper.make_attribute(name, value))

    return edit


def _set_input_type(*indices):
    def edit(model):
        for i, elem in indices:
            model.graph.input[i].type.tensor_type.elem_type = elem

    return edit


@pytest.mark.parametrize(
    "edit,stage",
    [
        pytest.param(_set_attr("num_kv_heads", 3), "createPlugin", id="num_kv_heads=3"),
        pytest.param(_set_attr("head_dim", 96), "createPlugin", id="head_dim=96"),
        pytest.param(
            _set_input_type((3, onnx.TensorProto.FLOAT16), (4, onnx.TensorProto.FLOAT16)),
            "supportsFormatCombination",
            id="fp16-rope-tables",
        ),
        pytest.param(_set_input_type((7, onnx.TensorProto.INT64)), "supportsFormatCombination", id="int64-ctx_lens"),
    ],
)
def test_engine_build_rejects_contract_violations(graphs, plugin_lib, tmp_path, edit, stage):
    """The plugin's own checks run inside TensorRT: each violation stops the build with no plan."""
    dtype, block, attrs = GRAPHS["mha_fp32"]
    bad = _edited(graphs["mha_fp32"], tmp_path / "bad.onnx", edit)
    report = build_engine(
        bad, tmp_path / "bad.plan", _profile(BLOCK_ATTENTION.resolve_attrs(**attrs), block), plugin_lib=plugin_lib
    )
    assert report.plan_bytes == 0 and not (tmp_path / "bad.plan").exists()
    if stage == "createPlugin":
        assert not report.parsed and "Could not create the plugin" in " ".join(report.parser_errors)
    else:
        assert report.parsed and "supported plugin/custom tactic format" in " ".join(report.log_errors)


def test_engine_build_rejects_wrong_qkv_width(graphs, plugin_lib, tmp_path):
    """getOutputShapes refuses a fused qkv width that does not match the attributes."""
    dtype, block, attrs = GRAPHS["mha_fp32"]
    attrs = BLOCK_ATTENTION.resolve_attrs(**attrs)
    width = (attrs["num_heads"] + 2 * attrs["num_kv_heads"]) * attrs["head_dim"] + 64

    def widen(model):
        model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = width

    profile = dict(_profile(attrs, block), qkv=tuple((b, block, width) for b in (1, 2, 8)))
    report = build_engine(
        _edited(graphs["mha_fp32"], tmp_path / "w.onnx", widen), tmp_path / "w.plan", profile, plugin_lib=plugin_lib
    )
    assert not report.parsed and report.plan_bytes == 0
    assert "output shape computation failed" in " ".join(report.parser_errors)
    assert report.plugin_layers[0]["outputs"] == [["DataType.FLOAT", None]]


@pytest.mark.parametrize(
    "extra,message",
    [
        ([], "nope.so"),
        (["--profile", "qkv=1x4:2x4"], "--profile qkv=1x4:2x4"),
        (["--profile", "qkv=1xa:1:1"], "NAME=MIN:OPT:MAX"),
    ],
)
def test_cli_user_errors_are_one_line(graphs, monkeypatch, capsys, tmp_path, extra, message):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope.so"))
    assert trt_rtx.main([str(graphs["mha_fp32"]), str(tmp_path / "m.plan"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_cli_builds_a_plan(graphs, plugin_lib, capsys, monkeypatch, tmp_path):
    """The command-line entry point: relative paths, profile flags, JSON report on stdout."""
    dtype, block, attrs = GRAPHS["mha_fp32"]
    flags = [
        f"--profile={name}=" + ":".join("x".join(map(str, s)) for s in shapes)
        for name, shapes in _profile(BLOCK_ATTENTION.resolve_attrs(**attrs), block).items()
    ]
    monkeypatch.chdir(tmp_path)
    onnx_rel = os.path.relpath(graphs["mha_fp32"], tmp_path)
    assert trt_rtx.main([onnx_rel, "m.plan", "--plugin-lib", str(plugin_lib), *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plan_bytes"] == (tmp_path / "m.plan").stat().st_size > 0


# --- KV injection in place: the aliasing TensorRT-RTX keeps ------------------------------------------------

KV_HEADS, HEAD_DIM = 2, 64


def _append_profile(paged: bool) -> dict:
    d, width = HEAD_DIM, 2 * KV_HEADS * HEAD_DIM
    per_seq = ((1,), (2,), (4,))
    rope = ((1, d // 2), (64, d // 2), (256, d // 2))
    profile = {
        "kv": ((1, 1, width), (2, 4, width), (4, 16, width)),
        "rope_cos": rope,
        "rope_sin": rope,
        "ctx_lens": per_seq,
        "new_lens": per_seq,
    }
    if paged:
        pool = tuple((2, p, 16, KV_HEADS, d) for p in (1, 32, 256))
        return {**profile, "kv_pool": pool, "page_table": ((1, 2, 1), (2, 2, 8), (4, 2, 64))}
    cache = ((1, KV_HEADS, 1, d), (2, KV_HEADS, 64, d), (4, KV_HEADS, 1024, d))
    return {**profile, "k_cache": cache, "v_cache": cache}


@pytest.mark.parametrize("op", [CONTEXT_KV_APPEND, PAGED_KV_APPEND], ids=["contiguous", "paged"])
def test_kv_append_engine_updates_the_cache_in_place(plugin_lib, tmp_path, op):
    """With ALIASED_PLUGIN_IO_10_03 (which every build here enables) TensorRT-RTX keeps the plugin's
    output = input alias: the engine is the plugin layer alone, writing the cache input's buffer; no copy
    layer, no activation memory (a copy of the cache would need both)."""
    attrs = dict(num_kv_heads=KV_HEADS, head_dim=HEAD_DIM)
    plugin_graph(op, attrs, "float16", tmp_path / "append.onnx")
    report = build_engine(
        tmp_path / "append.onnx",
        tmp_path / "append.plan",
        _append_profile(op is PAGED_KV_APPEND),
        plugin_lib=plugin_lib,
    )
    assert report.aliased_plugin_io and report.plan_bytes > 0, report.log_errors
    (layer,) = report.engine_layers
    cache_in, cache_outs = (
        ("kv_pool", ["kv_pool_out"]) if op is PAGED_KV_APPEND else ("k_cache", ["k_cache_out", "v_cache_out"])
    )
    assert layer.startswith("Layer(PluginV3): ") and f" {cache_in} (Half[" in layer
    assert [o.split(" (")[0] for o in layer.split(" -> ")[1].split("), ")] == cache_outs
    assert report.copy_nodes == [] and report.activation_bytes == 0


def test_kv_append_without_the_aliasing_feature_is_refused(plugin_lib, tmp_path):
    """Without the preview feature the builder refuses the aliased plugin (no engine that would have to
    copy the cache), naming the feature."""
    plugin_graph(CONTEXT_KV_APPEND, dict(num_kv_heads=KV_HEADS, head_dim=HEAD_DIM), "float16", tmp_path / "a.onnx")
    report = build_engine(
        tmp_path / "a.onnx", tmp_path / "a.plan", _append_profile(False), plugin_lib=plugin_lib, aliased_plugin_io=False
    )
    assert report.plan_bytes == 0 and not (tmp_path / "a.plan").exists()
    assert "kALIASED_PLUGIN_IO_10_03 not enabled" in " ".join(report.log_errors)


def _append_then_attention(path: Path, attention_reads: str, paged: bool) -> None:
    """The drafter's per-layer flow: append the committed context's K/V, then attend the block over the
    cache (``attention_reads`` = "updated": the append's output; "stale": the append's input)."""
    append_op, attention_op = (
        (PAGED_KV_APPEND, PAGED_BLOCK_ATTENTION) if paged else (CONTEXT_KV_APPEND, BLOCK_ATTENTION)
    )
    append = append_op.resolve_attrs(num_kv_heads=KV_HEADS, head_dim=HEAD_DIM)
    attention = attention_op.resolve_attrs(num_heads=8, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM)
    caches = [t.name for t in append_op.inputs[4:6]]
    if attention_reads == "updated":
        caches = [t.name for t in append_op.outputs] + ([caches[1]] if paged else [])
    inputs = [value_info(t, append, "float16") for t in append_op.inputs]
    inputs += [value_info(attention_op.inputs[i], attention, "float16") for i in (0, 1)]
    nodes = [
        plugin_node(
            append_op, append, [t.name for t in append_op.inputs], [t.name for t in append_op.outputs], "append"
        ),
        plugin_node(
            attention_op,
            attention,
            [t.name for t in attention_op.inputs[:5]] + caches + ["ctx_lens"],
            ["out"],
            "attention",
        ),
    ]
    outputs = [value_info(t, append, "float16") for t in append_op.outputs]
    outputs.append(value_info(attention_op.outputs[0], attention, "float16"))
    onnx.save(
        onnx.helper.make_model(onnx.helper.make_graph(nodes, "drafter_layer", inputs, outputs), opset_imports=OPSETS),
        str(path),
    )


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_append_then_attention_shares_the_cache_without_a_copy(plugin_lib, tmp_path, paged):
    """Append then attention over the updated cache builds, and TensorRT-RTX copies no cache tensor: the
    append writes the cache input's buffer and the attention reads that buffer. Control: when the attention
    reads the cache *before* the append, TensorRT-RTX must keep the old contents and inserts a copy of the
    cache input, which the same log check sees."""
    cache_names = ("kv_pool",) if paged else ("k_cache", "v_cache")
    profile = dict(_append_profile(paged), qkv=tuple((b, blk, 12 * HEAD_DIM) for b, blk in ((1, 1), (2, 4), (4, 16))))

    def cache_copies(report):
        return [c for c in report.copy_nodes if any(f"Network Input {n}" in c for n in cache_names)]

    _append_then_attention(tmp_path / "updated.onnx", "updated", paged)
    report = build_engine(tmp_path / "updated.onnx", tmp_path / "updated.plan", profile, plugin_lib=plugin_lib)
    assert report.plan_bytes > 0, report.log_errors
    assert cache_copies(report) == []
    (append_layer,) = [layer for layer in report.engine_layers if layer.startswith("Layer(PluginV3): append,")]
    assert f" {cache_names[0]} (Half[" in append_layer

    _append_then_attention(tmp_path / "stale.onnx", "stale", paged)
    stale = build_engine(tmp_path / "stale.onnx", tmp_path / "stale.plan", profile, plugin_lib=plugin_lib)
    assert cache_copies(stale), stale.copy_nodes


# --- GPU: the plan runs and matches the reference -------------------------------------------------------


@pytest.mark.gpu
def test_engine_runs_on_gpu_and_matches_reference(cuda_build, tmp_path):
    """On a GPU host with datacenter TensorRT and a CUDA build of the plugins: build, run, compare.

    TensorRT-RTX cannot stand in here: it targets neither SM90 nor SM100, the plugin's architectures.
    """
    trt = pytest.importorskip("tensorrt", reason="datacenter TensorRT (NVIDIA's package index / containers)")
    lib = cuda_build.plugin_library
    dtype, block, attrs = GRAPHS["qwen3_8b_fp16"]
    attrs = BLOCK_ATTENTION.resolve_attrs(**attrs)
    onnx_path = tmp_path / "g.onnx"
    export_block_attention(
        onnx_path, attrs, example_inputs(attrs, batch=2, block=block, ctx=16, max_pos=512, dtype=dtype)
    )
    report = trt_rtx.build_in_process(trt, onnx_path, tmp_path / "g.plan", lib, _profile(attrs, block))
    assert report.plan_bytes, report.log_errors

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine((tmp_path / "g.plan").read_bytes())
    context = engine.create_execution_context()
    inputs = example_inputs(attrs, batch=5, block=block, ctx=200, max_pos=512, dtype=dtype, seed=3)
    device = [x.cuda() for x in inputs]
    for spec, x in zip(BLOCK_ATTENTION.inputs, device):
        context.set_input_shape(spec.name, tuple(x.shape))
        context.set_tensor_address(spec.name, x.data_ptr())
    out = torch.empty(5, block, attrs["num_heads"] * attrs["head_dim"], dtype=dtype, device="cuda")
    context.set_tensor_address("out", out.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    from dflash_trt.plugins.reference import dflash_block_attention

    want = dflash_block_attention(*inputs, **attrs)
    torch.testing.assert_close(out.cpu().float(), want.float(), atol=2e-3, rtol=2e-3)


@pytest.mark.gpu
def test_kv_append_engine_runs_in_place_on_gpu(cuda_build, host_build, tmp_path):
    """On a GPU host with datacenter TensorRT: the engine reports k_cache_out as aliasing k_cache, runs with
    the two bound to one buffer, and leaves the cache equal to the host math's in-place append."""
    trt = pytest.importorskip("tensorrt", reason="datacenter TensorRT (NVIDIA's package index / containers)")
    from test_host_math import MathLib

    from dflash_trt.models.layers import Rope

    attrs = CONTEXT_KV_APPEND.resolve_attrs(num_kv_heads=KV_HEADS, head_dim=HEAD_DIM)
    plugin_graph(CONTEXT_KV_APPEND, attrs, "float16", tmp_path / "a.onnx")
    report = trt_rtx.build_in_process(
        trt, tmp_path / "a.onnx", tmp_path / "a.plan", cuda_build.plugin_library, _append_profile(False)
    )
    assert report.plan_bytes, report.log_errors
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine((tmp_path / "a.plan").read_bytes())
    assert engine.get_aliased_input_tensor("k_cache_out") == "k_cache"
    assert engine.get_aliased_input_tensor("v_cache_out") == "v_cache"
    g = torch.Generator().manual_seed(2)
    kv = torch.randn(3, 4, 2 * KV_HEADS * HEAD_DIM, generator=g).half()
    kw = (1 + 0.1 * torch.randn(HEAD_DIM, generator=g)).half()
    cos, sin = (t.contiguous() for t in Rope.build(HEAD_DIM, 1_000_000.0, None, 256))
    caches = [torch.randn(3, KV_HEADS, 64, HEAD_DIM, generator=g).half() for _ in range(2)]
    ctx, new_lens = torch.tensor([0, 62, 17], dtype=torch.int32), torch.tensor([4, 4, 1], dtype=torch.int32)
    host = MathLib(host_build.math_host)
    want = host.context_kv_append(kv, kw, cos, sin, *[c.clone() for c in caches], ctx, new_lens, **attrs)
    device = {
        name: x.cuda()
        for name, x in zip([t.name for t in CONTEXT_KV_APPEND.inputs], (kv, kw, cos, sin, *caches, ctx, new_lens))
    }
    context = engine.create_execution_context()
    for name, x in device.items():
        context.set_input_shape(name, tuple(x.shape))
        context.set_tensor_address(name, x.data_ptr())
    context.set_tensor_address("k_cache_out", device["k_cache"].data_ptr())
    context.set_tensor_address("v_cache_out", device["v_cache"].data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    for got, expected in zip((device["k_cache"], device["v_cache"]), want):
        torch.testing.assert_close(got.cpu().float(), expected.float(), atol=2e-3, rtol=2e-3)
