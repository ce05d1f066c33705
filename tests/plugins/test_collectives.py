"""The tensor-parallel collectives `AllReduce` and `AllGather` (plugins/src/allReduce, allGather, collectives).

What runs here: TensorRT-RTX (CPU) imports one-node graphs of each op as our IPluginV3 plugins (the host build)
and infers their output shapes through the plugins' getOutputShapes; the creators agree with the contracts; the
library's NCCL entry points (`dflash_trt_nccl_unique_id`, `dflash_trt_nccl_init`) refuse in the host build and,
in the CUDA build, create a real NCCL unique id with the nvidia-nccl-cu13 wheel's libnccl.so.2 and refuse bad
ranks. What does not: the collectives' enqueue (NCCL on a GPU group), which is compiled, not executed.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from dflash_trt.errors import UserError
from dflash_trt.hardware import has_gpu
from dflash_trt.parallel.onnx_ops import all_gather_onnx, all_reduce_onnx
from dflash_trt.plugins.contracts import ALL_GATHER, ALL_REDUCE
from dflash_trt.plugins.graphs import OPSETS, plugin_graph, plugin_node, value_info
from dflash_trt.plugins.library import ENV_VAR, find_plugin_library, register_plugins
from dflash_trt.plugins.trt_rtx import build_engine

TRT_DTYPE = {"float32": "DataType.FLOAT", "float16": "DataType.HALF", "bfloat16": "DataType.BF16"}
TOKENS, WIDTH = 4, 64
PROFILE = {"x": ((1, TOKENS, WIDTH), (2, TOKENS, WIDTH), (8, TOKENS, WIDTH))}


@pytest.fixture(scope="module")
def plugin_lib(request) -> Path:
    """libdflash_trt_plugins.so: $DFLASH_TRT_PLUGIN_LIB if set, else the host CMake build (conftest.py)."""
    if os.environ.get(ENV_VAR):
        return find_plugin_library()
    return request.getfixturevalue("host_build").plugin_library


def _fixed(model: onnx.ModelProto, path: Path) -> Path:
    """The graph with x's tokens and features fixed (TOKENS, WIDTH), batch left dynamic."""
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim[1:], (TOKENS, WIDTH)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    onnx.save(model, str(path))
    return path


def _graph(op, attrs: dict, dtype: str, path: Path) -> Path:
    """A one-node graph of `op` with raw attributes (not validated by the contract), x [b, TOKENS, WIDTH]."""
    x = value_info(op.inputs[0], {}, dtype)
    y = onnx.helper.make_tensor_value_info("y", x.type.tensor_type.elem_type, None)
    graph = onnx.helper.make_graph([plugin_node(op, attrs, ["x"], ["y"])], op.name, [x], [y])
    return _fixed(onnx.helper.make_model(graph, opset_imports=OPSETS), path)


# --- creators and contracts -------------------------------------------------------------------------------------


def _fields(trt, **values):
    def field(name, value):
        if isinstance(value, str):
            return trt.PluginField(name, np.frombuffer(value.encode(), dtype=np.int8), trt.PluginFieldType.CHAR)
        return trt.PluginField(name, np.array([value], dtype=np.int32), trt.PluginFieldType.INT32)

    return trt.PluginFieldCollection([field(k, v) for k, v in values.items()])


@pytest.mark.parametrize(
    "op,good,bad",
    [
        (ALL_REDUCE, dict(group_size=2), [dict(group_size=0), dict(reduce_op="max"), dict(reduce_op="")]),
        (ALL_GATHER, dict(group_size=8), [dict(group_size=0), dict(group_size=-2)]),
    ],
    ids=["AllReduce", "AllGather"],
)
def test_creators_accept_and_refuse_what_the_contracts_do(plugin_lib, op, good, bad):
    import tensorrt_rtx as trt

    register_plugins(trt, plugin_lib)
    creator = trt.get_plugin_registry().get_creator(op.name, op.version, op.namespace)
    resolved = op.resolve_attrs(**good)
    assert creator.create_plugin("ok", _fields(trt, **resolved), trt.TensorRTPhase.BUILD) is not None
    assert creator.create_plugin("defaults", _fields(trt, **good), trt.TensorRTPhase.BUILD) is not None
    for change in bad:
        with pytest.raises(UserError):
            op.resolve_attrs(**{**resolved, **change})
        assert creator.create_plugin("bad", _fields(trt, **{**resolved, **change}), trt.TensorRTPhase.BUILD) is None
    assert creator.create_plugin("missing", _fields(trt), trt.TensorRTPhase.BUILD) is None


def test_exported_nodes_carry_the_contracts_attributes():
    """The nodes onnx_ops emits are the contracts' ops: name, namespace, version and attribute names."""
    for fn, op in ((all_reduce_onnx, ALL_REDUCE), (all_gather_onnx, ALL_GATHER)):
        (node,) = fn.to_function_proto().node
        attrs = {a.name for a in node.attribute}
        assert (node.domain, node.op_type) == (op.namespace, op.name)
        assert attrs == {a.name for a in op.attrs} | {"plugin_namespace", "plugin_version"}
        version = next(a for a in node.attribute if a.name == "plugin_version")
        assert version.s.decode() == op.version


# --- TensorRT-RTX builds one-node graphs: the output shapes it infers -------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize(
    "op,group,width_out", [(ALL_REDUCE, 2, WIDTH), (ALL_GATHER, 2, 2 * WIDTH), (ALL_GATHER, 4, 4 * WIDTH)]
)
def test_trt_rtx_builds_a_collective_and_infers_its_shape(plugin_lib, tmp_path, op, group, width_out, dtype):
    model = plugin_graph(op, dict(group_size=group), dtype)
    onnx_path = _fixed(model, tmp_path / f"{op.name}.onnx")
    report = build_engine(onnx_path, tmp_path / "c.plan", PROFILE, plugin_lib=plugin_lib)
    assert report.parsed and not report.parser_errors, report.parser_errors
    (layer,) = report.plugin_layers  # the parser imported the node as our plugin
    assert layer["plugin"] == [op.name, op.version, op.namespace]
    shape = [-1, TOKENS, width_out]  # getOutputShapes: x's shape, the gathered axis times group_size
    assert layer["outputs"] == [[TRT_DTYPE[dtype], shape]]
    assert report.outputs == [{"name": "y", "dtype": TRT_DTYPE[dtype], "shape": shape}]
    assert report.plan_bytes > 0 and not report.log_errors, report.log_errors
    plan = (tmp_path / "c.plan").read_bytes()
    assert op.name.encode() in plan and b"group_size" in plan


@pytest.mark.parametrize(
    "axis,shape", [(1, [-1, 2 * TOKENS, WIDTH]), (0, [-1, TOKENS, WIDTH]), (-3, [-1, TOKENS, WIDTH])]
)
def test_trt_rtx_gathers_along_another_axis(plugin_lib, tmp_path, axis, shape):
    """The plugin takes any axis (the export emits only -1): the gathered dim is multiplied by group_size,
    a dynamic batch stays dynamic."""
    path = _graph(ALL_GATHER, dict(group_size=2, axis=axis), "float16", tmp_path / "g.onnx")
    report = build_engine(path, tmp_path / "g.plan", PROFILE, plugin_lib=plugin_lib)
    assert report.plan_bytes > 0, report.log_errors + report.parser_errors
    assert report.plugin_layers[0]["outputs"] == [["DataType.HALF", shape]]


@pytest.mark.parametrize(
    "op,attrs,message",
    [
        (ALL_GATHER, dict(group_size=2, axis=3), "output shape computation failed"),
        (ALL_REDUCE, dict(group_size=2, reduce_op="max"), "Could not create the plugin"),
        (ALL_REDUCE, dict(group_size=0, reduce_op="sum"), "Could not create the plugin"),
    ],
    ids=["axis-out-of-range", "reduce_op-max", "group_size-0"],
)
def test_trt_rtx_refuses_invalid_collectives(plugin_lib, tmp_path, op, attrs, message):
    path = _graph(op, attrs, "float16", tmp_path / "bad.onnx")
    report = build_engine(path, tmp_path / "bad.plan", PROFILE, plugin_lib=plugin_lib)
    assert not report.parsed and report.plan_bytes == 0
    assert message in " ".join(report.parser_errors), report.parser_errors


def test_trt_rtx_refuses_an_int32_collective(plugin_lib, tmp_path):
    """getOutputDataTypes refuses an INT32 input (only fp32/fp16/bf16 are reduced): no layer, no plan."""
    path = _graph(ALL_REDUCE, dict(group_size=2, reduce_op="sum"), "float16", tmp_path / "i.onnx")
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT32
    onnx.save(model, str(path))
    report = build_engine(path, tmp_path / "i.plan", PROFILE, plugin_lib=plugin_lib)
    assert not report.parsed and report.plan_bytes == 0
    assert "getOutputDataType" in " ".join(report.parser_errors), report.parser_errors


# --- the NCCL entry points ------------------------------------------------------------------------------------------

_PROBE = """
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
for name in ("dflash_trt_nccl_unique_id", "dflash_trt_nccl_init"):
    getattr(lib, name).restype = ctypes.c_char_p
    getattr(lib, name).argtypes = {"dflash_trt_nccl_unique_id": [ctypes.c_char_p],
                                   "dflash_trt_nccl_init": [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]}[name]
ids = [ctypes.create_string_buffer(128) for _ in range(2)]
errors = [lib.dflash_trt_nccl_unique_id(i) for i in ids]
out = {
    "unique_id": [e.decode() if e else None for e in errors],
    "ids": [i.raw.hex() for i in ids],
    "bad_rank": (lib.dflash_trt_nccl_init(ids[0].raw, 2, 2) or b"").decode(),
    "bad_world": (lib.dflash_trt_nccl_init(ids[0].raw, 0, 0) or b"").decode(),
}
if sys.argv[2] == "init":
    out["init"] = (lib.dflash_trt_nccl_init(ids[0].raw, 0, 1) or b"").decode()
print(json.dumps(out))
"""


def _probe(library: Path, nccl: str | None, init: bool = False) -> dict:
    """The entry points called in a child process (the communicator is process-wide state)."""
    env = {k: v for k, v in os.environ.items() if k != "DFLASH_TRT_NCCL_LIBRARY"}
    if nccl is not None:
        env["DFLASH_TRT_NCCL_LIBRARY"] = nccl
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(library), "init" if init else "-"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _nccl_wheel_library() -> str:
    spec = importlib.util.find_spec("nvidia.nccl")
    path = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libnccl.so.2" if spec else None
    if path is None or not path.is_file():
        pytest.skip("no nvidia-nccl-cu13 wheel (scripts/setup.sh installs it where nvcc is)")
    return str(path)


def test_host_build_nccl_entry_points_need_the_cuda_build(host_build):
    out = _probe(host_build.plugin_library, None, init=True)
    for message in out["unique_id"] + [out["bad_rank"], out["init"]]:
        assert message and "need the CUDA build" in message
    assert out["ids"][0] == "00" * 128


def test_cuda_build_creates_nccl_unique_ids(cuda_build):
    """Real NCCL runs here (ncclGetUniqueId needs no GPU): two ids, 128 bytes each, different; bad ranks are
    refused before NCCL is asked."""
    out = _probe(cuda_build.plugin_library, _nccl_wheel_library())
    assert out["unique_id"] == [None, None]
    assert out["ids"][0] != out["ids"][1] and "00" * 128 not in out["ids"]
    assert out["bad_rank"] == "rank 2 of world 2: need world >= 1 and 0 <= rank < world"
    assert out["bad_world"] == "rank 0 of world 0: need world >= 1 and 0 <= rank < world"


@pytest.mark.skipif(has_gpu(), reason="with a GPU a one-rank communicator is created")
def test_cuda_build_nccl_init_without_a_gpu_fails_cleanly(cuda_build):
    out = _probe(cuda_build.plugin_library, _nccl_wheel_library(), init=True)
    assert out["init"].startswith("ncclCommInitRank failed: ")


def test_cuda_build_without_nccl_says_how_to_get_it(cuda_build, tmp_path):
    out = _probe(cuda_build.plugin_library, str(tmp_path / "libnccl.so.2"), init=True)
    for message in out["unique_id"] + [out["init"]]:
        assert message.startswith(f"cannot load {tmp_path / 'libnccl.so.2'}") and "nvidia-nccl-cu13" in message
    assert out["bad_rank"].startswith("rank 2 of world 2")  # checked before loading NCCL


def test_cuda_library_needs_no_nccl_to_load(cuda_build):
    """NCCL is opened with dlopen when a communicator is made: the library links neither NCCL nor its symbols,
    so tp 1 engines load on hosts without it."""
    needed = subprocess.run(
        ["readelf", "-d", str(cuda_build.plugin_library)], capture_output=True, text=True, check=True
    ).stdout
    assert "libnccl" not in needed
    undefined = subprocess.run(
        ["nm", "-D", "--undefined-only", str(cuda_build.plugin_library)], capture_output=True, text=True, check=True
    ).stdout
    assert "nccl" not in undefined and "dlopen" in undefined
    ctypes.CDLL(str(cuda_build.plugin_library))


def test_cuda_enqueue_host_side_on_fake_nccl_and_fake_cuda_runtime(cuda_build, tmp_path):
    """The CUDA build's collective enqueue with its NCCL calls answered by tests/fakeNccl (a libnccl.so.2 stand-in
    compiled against the real nccl.h, simulating a group whose ranks all hold this rank's x, on host memory) and its
    CUDA runtime by tests/fakeCudart: no communicator is refused; after dflash_trt_nccl_init(world 2) the all-reduce
    sums, a group_size 4 node is refused before NCCL is called, group_size 1 is one copy launch and no NCCL call,
    the last-axis gather writes the rank blocks to the workspace and launches the transpose, the axis-0 gather
    writes the output directly and launches nothing."""
    log = tmp_path / "fake.log"
    env = dict(
        os.environ,
        LD_PRELOAD=str(cuda_build.dir / "libdflash_trt_fake_cudart.so"),
        FAKE_CUDART_LOG=str(log),
        DFLASH_TRT_NCCL_LIBRARY=str(cuda_build.dir / "libdflash_trt_fake_nccl.so"),
    )
    result = subprocess.run(
        [str(cuda_build.harness), str(cuda_build.plugin_library), "--fake-nccl"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0 and "SUMMARY failures=0" in result.stdout, result.stdout + result.stderr
    for case in ("fake_nccl_communicator", "fake_nccl_all_reduce", "fake_nccl_all_gather"):
        assert f"PASS {case}" in result.stdout
    statuses = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("FAKE ")]
    assert statuses == [
        ["before_init", "enqueue", "-1"],
        ["all_reduce", "enqueue", "0"],
        ["all_reduce_group_4", "enqueue", "-1"],
        ["all_reduce_group_1", "enqueue", "0"],
        ["all_gather_last", "enqueue", "0"],
        ["all_gather_first", "enqueue", "0"],
    ]
    calls = [line for line in log.read_text().splitlines() if line.startswith(("nccl", "launch"))]
    assert calls == [
        "ncclAllReduce 24 7 0 0",  # 24 elements, ncclFloat32, ncclSum, separate buffers
        "launch 1 1 1 256 1 1 0",  # group_size 1: the copy kernel
        "ncclAllGather 24 7",  # last axis: into the workspace...
        "launch 1 1 1 256 1 1 0",  # ...then the transpose kernel (48 elements, one CTA of 256)
        "ncclAllGather 24 7",  # axis 0: into the output, no kernel
    ]
