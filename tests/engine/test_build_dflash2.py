"""`dflash-trt build` of a DFlash2 pair (z-lab's class wrote the drafter): both graphs parse and build with
TensorRT-RTX on this CPU with the block dimension dynamic (the selector's walk runs a fixed loop count), and the
engine directory generates on onnxruntime exactly what the torch backend generates from the HF directories, at
the recipe's block size and a smaller one."""

from __future__ import annotations

import json

import onnx
import pytest
from engine_paths import TINY_PAIR_SHAPES, write_recipe

from conftest import build_pair, run_cli
from dflash_trt.engine.trt_build import GraphReport
from tiny import hf_config, save_hf_target, save_tiny_tokenizer
from tiny_dflash2 import save_zlab_drafter2


@pytest.fixture(scope="module")
def built(tmp_path_factory, plugin_lib):
    root = tmp_path_factory.mktemp("dflash2_pair")
    target = save_hf_target(root / "target", "qwen3", heads=8, kv_heads=2)
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter2(
        root / "drafter", hf_config("qwen3", heads=8, kv_heads=2), block_size=4, layer_ids=(0, 2), head_dim=64
    )
    recipe = write_recipe(root / "dflash2.yaml", dtype="fp32", **TINY_PAIR_SHAPES)
    out = root / "engine"
    proc = build_pair(target, drafter, recipe, out, plugin_lib, tokenizer=target)
    return target, drafter, out, proc


def test_dflash2_graphs_build_with_a_dynamic_block(built):
    _, _, out, proc = built
    assert proc.returncode == 0, proc.stderr[-3000:]
    graphs = {r["graph"]: GraphReport(**r) for r in json.loads((out / "build_report.json").read_text())["verification"]}
    assert graphs["drafter"].parsed and graphs["drafter"].built and graphs["target"].built
    model = onnx.load(str(out / "onnx" / "rank0" / "drafter.onnx"), load_external_data=False)
    input_ids = next(i for i in model.graph.input if i.name == "input_ids")
    assert input_ids.type.tensor_type.shape.dim[1].dim_param  # symbolic, not fixed at the recipe's block


@pytest.mark.parametrize("block", ["2", "4"])
def test_engine_generates_what_the_torch_backend_does(built, block):
    target, drafter, out, _ = built
    prompt = ["--prompt", "w1 w2 w3 w4", "--max-new-tokens", "12", "--block-size", block, "--json"]
    on_ort = run_cli("generate", "--engine", str(out), "--backend", "onnxruntime", *prompt)
    on_torch = run_cli("generate", "--target", str(target), "--drafter", str(drafter), *prompt)
    assert on_ort.returncode == 0 and on_torch.returncode == 0, on_ort.stderr[-2000:] + on_torch.stderr[-2000:]
    tokens = [[r["tokens"] for r in json.loads(p.stdout)["results"]] for p in (on_ort, on_torch)]
    assert tokens[0] == tokens[1] and len(tokens[0][0]) == 12
