"""`dflash-trt build` with recipe `attention: plugin`: the drafter graph's plugin flavor (one
`DFlashContextKVAppend` and one `DFlashBlockAttention` node per draft layer, no ONNX Attention) built whole by
TensorRT-RTX on this CPU with the host plugin library (fp16; a tiny pair keeps it quick). The onnxruntime backend
refuses such an engine directory with one line (it has no custom-op library for the plugins)."""

from __future__ import annotations

import collections
import json

import onnx
import pytest
from engine_paths import TINY_PAIR_SHAPES, write_recipe

from conftest import build_pair, run_cli
from dflash_trt.engine.trt_build import GraphReport
from dflash_trt.plugins.contracts import BLOCK_ATTENTION, CONTEXT_KV_APPEND
from tiny import hf_config, save_hf_target, save_zlab_drafter

DRAFT_LAYERS = 2


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin_pair")
    target = save_hf_target(root / "target", "qwen3", heads=8, kv_heads=2)
    drafter = save_zlab_drafter(
        root / "drafter",
        hf_config("qwen3", heads=8, kv_heads=2),
        block_size=4,
        layer_ids=(0, 2),
        head_dim=64,
        layers=DRAFT_LAYERS,
    )
    return root, target, drafter


def recipe(root, dtype: str):
    return write_recipe(root / f"plugin_{dtype}.yaml", dtype=dtype, attention="plugin", **TINY_PAIR_SHAPES)


@pytest.mark.parametrize("dtype", ["fp16"])  # bf16 builds: the embedded recipe (test_build.py); ~100 s each here
def test_plugin_attention_drafter_builds_whole(pair, plugin_lib, dtype):
    root, target, drafter = pair
    out = root / f"engine-{dtype}"
    proc = build_pair(target, drafter, recipe(root, dtype), out, plugin_lib)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = onnx.load(str(out / "onnx" / "rank0" / "drafter.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops[CONTEXT_KV_APPEND.name] == ops[BLOCK_ATTENTION.name] == DRAFT_LAYERS and ops["Attention"] == 0
    report = json.loads((out / "build_report.json").read_text())
    graphs = {r["graph"]: GraphReport(**r) for r in report["verification"]}
    rep = graphs["drafter"]
    assert rep.builder.startswith("tensorrt_rtx") and rep.parsed and not rep.parser_errors
    assert rep.built and rep.plan_bytes > 0 and rep.profiles == ["prefill", "step"]
    plugins = collections.Counter((p["namespace"], p["plugin"], p["version"]) for p in rep.plugin_layers)
    assert plugins == {
        ("dflash_trt", CONTEXT_KV_APPEND.name, "1"): DRAFT_LAYERS,
        ("dflash_trt", BLOCK_ATTENTION.name, "1"): DRAFT_LAYERS,
    }
    assert graphs["target"].built and graphs["target"].all_attention_fused  # the target keeps TensorRT's attention
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["build_config"]["attention"] == "plugin"
    assert f"{2 * DRAFT_LAYERS} plugin layers" in proc.stderr

    refused = run_cli("generate", "--engine", str(out), "--backend", "onnxruntime", "--prompt", "hi")
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert "drafter.onnx" in line and BLOCK_ATTENTION.name in line and "attention: native" in line
