"""`dflash-trt build` end to end on this CPU: export, TensorRT-RTX build of both graphs of a tiny pair with the
embedded pair's head_dim and GQA under the embedded recipe, in fp16 and bf16, ENGINE_DIR layout. That attention became
a fused kernel is read from each build (the engine's layer list names the kernel implementing every ONNX Attention
node), not assumed; the fp32 contrast shows the check can fail."""

from __future__ import annotations

import json

import onnx
import pytest
from engine_paths import ROOT

from dflash_trt.engine.trt_build import GraphReport, GraphSpec, build_with_rtx
from dflash_trt.runtime.engine_dir import read_engine_dir


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_recipe_builds_with_fused_attention(built, dtype):
    b = built[dtype]
    assert b.returncode == 0, b.stderr[-3000:]
    report = json.loads((b.engine_dir / "build_report.json").read_text())
    graphs = {r["graph"]: GraphReport(**r) for r in report["verification"]}
    assert set(graphs) == {"target", "drafter"}
    cfg = json.loads((b.engine_dir / "config.json").read_text())
    layers = {
        "target": cfg["pretrained_config"]["num_hidden_layers"],
        "drafter": cfg["pretrained_config"]["drafter"]["num_hidden_layers"],
    }
    assert layers == {"target": 4, "drafter": 2}
    for name, rep in graphs.items():
        assert rep.builder.startswith("tensorrt_rtx 1.7.1") and rep.parsed and not rep.parser_errors
        assert rep.built and rep.plan_bytes > 0 and len(rep.plan_sha256) == 64
        assert rep.profiles == ["prefill", "step"] and not rep.decomposable_attention
        onnx_nodes = [
            n.name
            for n in onnx.load(b.engine_dir / "onnx" / "rank0" / f"{name}.onnx", load_external_data=False).graph.node
            if n.op_type == "Attention"
        ]
        assert len(onnx_nodes) == layers[name]  # one fused Attention node per layer in the exported graph
        assert sorted(rep.attention_nodes) == sorted(onnx_nodes)  # each became a TensorRT IAttention
        assert set(rep.fused_attention) == set(onnx_nodes) and rep.all_attention_fused
        assert all("mha" in kernel for kernel in rep.fused_attention.values()), rep.fused_attention
        assert rep.activation_bytes and rep.weights_bytes and rep.engine_layers > layers[name]
        assert (
            f"rank0/{name}: parsed, " in b.stderr and f"{layers[name]}/{layers[name]} attention nodes fused" in b.stderr
        )
    assert cfg["verification"]["all_attention_fused"] and cfg["verification"]["all_built"]
    assert cfg["pretrained_config"]["dtype"] == {"fp16": "float16", "bf16": "bfloat16"}[dtype]
    assert "no datacenter TensorRT" in b.stderr and "no target/rank*.engine" in b.stderr


def test_engine_dir_layout(built):
    b = built["fp16"]
    assert b.returncode == 0, b.stderr[-3000:]
    root = b.engine_dir
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert {
        "config.json",
        "build_report.json",
        "onnx/rank0/target.onnx",  # tiny weights stay inside: external data holds tensors from 1 MiB
        "onnx/rank0/drafter.onnx",
        "onnx/rank0/export.json",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
    } <= set(files), files
    assert "acceptance.json" not in files  # this drafter has none; the embedded one's: test_onnxruntime_embedded
    assert not (root / "target").exists() and not (root / "drafter").exists()  # no datacenter TensorRT here
    assert not [p for p in root.parent.iterdir() if ".dflash-partial-" in p.name]
    cfg = json.loads((root / "config.json").read_text())
    pre, bc = cfg["pretrained_config"], cfg["build_config"]
    assert pre["architecture"] == "LlamaForCausalLM" and pre["mapping"] == {"world_size": 1, "tp_size": 1, "pp_size": 1}
    assert (
        pre["num_attention_heads"],
        pre["num_key_value_heads"],
        pre["hidden_size"],
        pre["vocab_size"],
        pre["num_hidden_layers"],
        pre["head_size"],
    ) == (3, 1, 192, 97, 4, 64)
    assert pre["drafter"]["architecture"] == "DFlashDraftModel" and pre["drafter"]["num_hidden_layers"] == 2
    assert (bc["max_batch_size"], bc["max_input_len"], bc["max_seq_len"], bc["max_draft_len"]) == (4, 128, 256, 3)
    assert bc["speculative_decoding_mode"] == "dflash" and bc["attention"] == "native"
    assert bc["max_num_tokens"] == 4 * 128 and bc["gpu_archs"] == ["sm89", "sm120"]
    assert [p["name"] for p in bc["profiles"]] == ["prefill", "step"]
    assert bc["profiles"][1]["target"]["past_key_values.*"] == [[1, 1, 1, 64], [4, 1, 256, 64], [4, 1, 256, 64]]
    assert cfg["dflash"] == {"target_layer_ids": [0, 2], "mask_token_id": 5, "block_size": 4, "drafter_block_size": 4}
    assert cfg["plugin"]["library"] == "libdflash_trt_plugins.so" and len(cfg["plugin"]["sha256"]) == 64
    assert cfg["tokenizer"] == "tokenizer" and cfg["engines"] == {"target": [], "drafter": []}
    assert cfg["onnx"] == {"target": ["onnx/rank0/target.onnx"], "drafter": ["onnx/rank0/drafter.onnx"]}
    eng = read_engine_dir(root)
    assert eng.tp_size == 1 and eng.block_size == 4 and eng.dtype == "float16"
    assert eng.profile_index("prefill") == 0 and eng.profile_index("step") == 1
    assert eng.engine("target") is None and eng.onnx("drafter").is_file()
    assert eng.target.num_layers == 4 and eng.drafter.block_size == 4


def test_graph_inputs_are_the_planned_profiles(built):
    """Every input of each exported graph has a profile entry, and no profile names a tensor the graph lacks."""
    root = built["bf16"].engine_dir
    cfg = json.loads((root / "config.json").read_text())
    for graph in ("target", "drafter"):
        names = {
            i.name for i in onnx.load(root / "onnx" / "rank0" / f"{graph}.onnx", load_external_data=False).graph.input
        }
        planned = set(cfg["build_config"]["profiles"][0][graph])
        assert {n for n in names if not n.startswith("past_key_values.")} | {"past_key_values.*"} == planned


def _one_attention(path, elem):
    from onnx import TensorProto, helper

    q = helper.make_tensor_value_info("q", elem, ["b", 8, "t", 64])
    k = helper.make_tensor_value_info("k", elem, ["b", 2, "s", 64])
    v = helper.make_tensor_value_info("v", elem, ["b", 2, "s", 64])
    o = helper.make_tensor_value_info("o", elem, None)
    node = helper.make_node("Attention", ["q", "k", "v"], ["o"], name="attn", is_causal=0)
    model = helper.make_model(
        helper.make_graph([node], "g", [q, k, v], [o]), opset_imports=[helper.make_opsetid("", 23)]
    )
    onnx.save(model, path)
    assert TensorProto.FLOAT  # (elem types come from TensorProto)


def test_fp32_attention_is_not_fused_and_the_check_says_so(tmp_path, plugin_lib):
    """fp32 has no dedicated kernel: non-decomposable fails, decomposable builds without a fused kernel."""
    from onnx import TensorProto

    path = tmp_path / "attn.onnx"
    shapes = {"q": [[1, 8, 1, 64], [1, 8, 4, 64], [2, 8, 8, 64]], "k": [[1, 2, 1, 64], [1, 2, 16, 64], [2, 2, 64, 64]]}
    shapes["v"] = shapes["k"]
    results = {}
    for elem, decomposable in ((TensorProto.FLOAT, False), (TensorProto.FLOAT, True), (TensorProto.FLOAT16, False)):
        _one_attention(path, elem)
        spec = GraphSpec(
            "attn", 0, str(path), {"step": shapes}, plugin_lib=str(plugin_lib), decomposable_attention=decomposable
        )
        results[(elem, decomposable)] = build_with_rtx(spec)
    strict = results[(TensorProto.FLOAT, False)]
    assert strict.attention_nodes == ["attn"] and not strict.built
    assert any("dedicated kernel" in e for e in strict.errors), strict.errors
    loose = results[(TensorProto.FLOAT, True)]
    assert loose.built and loose.attention_nodes == ["attn"] and loose.fused_attention == {}
    assert not loose.all_attention_fused
    half = results[(TensorProto.FLOAT16, False)]
    assert half.built and set(half.fused_attention) == {"attn"} and half.all_attention_fused


def test_failed_build_leaves_nothing(tmp_path, capsys, monkeypatch, plugin_lib):
    """A failure after export started (here: the verification build) removes the partial ENGINE_DIR."""
    from dflash_trt.cli import main
    from dflash_trt.engine import build
    from dflash_trt.errors import UserError

    exported = []

    def fake_export(target, drafter, out_dir, **kw):
        out_dir.mkdir(parents=True)
        for g in ("target", "drafter"):
            (out_dir / f"{g}.onnx").write_bytes(b"x")
        (out_dir / "export.json").write_text("{}")
        exported.append(out_dir)
        return {g: out_dir / f"{g}.onnx" for g in ("target", "drafter")}

    def failing_rtx(spec):
        raise UserError(f"{spec.onnx}: simulated TensorRT-RTX failure")

    monkeypatch.setattr("dflash_trt.export.export_pair", fake_export)
    monkeypatch.setattr(build, "_rank_models", lambda plan, rank: (None, None))
    monkeypatch.setattr(build, "build_with_rtx", failing_rtx)
    out = tmp_path / "engine"
    code = main(
        [
            "build",
            "--config",
            str(ROOT / "build_configs" / "build_smollm2_135m_cpu.yaml"),
            "--output",
            str(out),
            "--plugin-lib",
            str(plugin_lib),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "simulated TensorRT-RTX failure" in err
    assert exported and not exported[0].exists()
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_tensorrt_runtime_binds_every_tensor_of_the_exported_graphs(built):
    """The TensorRT backend's binding plan names exactly the real graphs' inputs and outputs, per profile."""
    from dflash_trt.runtime.tensorrt import plan_bindings

    eng = read_engine_dir(built["fp16"].engine_dir)
    for graph in ("target", "drafter"):
        model = onnx.load(eng.onnx(graph), load_external_data=False)
        io = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
        for phase in ("prefill", "step"):
            assert set(plan_bindings(eng, graph, phase)) == io, (graph, phase)
