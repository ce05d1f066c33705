"""`dflash-trt build` at tp 2: TensorRT-RTX builds every rank's target and drafter graph on this CPU, their
`dflash_trt::AllReduce` / `AllGather` nodes imported as the plugin library's collectives (host build), in fp16 and
bf16. A tiny exportable pair keeps it quick. The collectives' NCCL enqueue is compiled, not executed (no GPU)."""

from __future__ import annotations

import collections
import json

import onnx
import pytest
from engine_paths import TINY_PAIR_SHAPES, write_recipe

from conftest import build_pair
from dflash_trt.engine.trt_build import GraphReport
from dflash_trt.parallel.ops import ALL_GATHER, ALL_REDUCE, DOMAIN
from tiny import hf_config, save_hf_target, save_zlab_drafter

TP = 2


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp_pair")
    target = save_hf_target(root / "target", "qwen3", heads=8, kv_heads=2)
    drafter = save_zlab_drafter(
        root / "drafter", hf_config("qwen3", heads=8, kv_heads=2), block_size=4, layer_ids=(0, 2), layers=2
    )
    return root, target, drafter


def recipe(root, dtype: str):
    return write_recipe(root / f"tp{TP}_{dtype}.yaml", dtype=dtype, tp_size=str(TP), **TINY_PAIR_SHAPES)


def collectives(counter: collections.Counter) -> dict:
    return {op: counter[op] for op in (ALL_REDUCE, ALL_GATHER)}


@pytest.mark.parametrize("dtype", ["fp16"])  # bf16: the embedded build (test_build.py) and one-node collective builds
def test_every_rank_graph_is_verified_with_the_collective_plugins(pair, plugin_lib, dtype):
    root, target, drafter = pair
    out = root / f"engine-{dtype}"
    proc = build_pair(target, drafter, recipe(root, dtype), out, plugin_lib)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verification skipped" not in proc.stderr
    report = json.loads((out / "build_report.json").read_text())
    graphs = {(r["rank"], r["graph"]): GraphReport(**r) for r in report["verification"]}
    assert set(graphs) == {(rank, g) for rank in range(TP) for g in ("target", "drafter")}
    for (rank, graph), rep in graphs.items():
        assert rep.builder.startswith("tensorrt_rtx") and rep.parsed and not rep.parser_errors, rep.parser_errors
        assert rep.built and rep.plan_bytes > 0 and rep.profiles == ["prefill", "step"], rep.errors
        assert rep.all_attention_fused
        model = onnx.load(str(out / "onnx" / f"rank{rank}" / f"{graph}.onnx"), load_external_data=False)
        nodes = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type in (ALL_REDUCE, ALL_GATHER)]
        assert all({a.name: a.i for a in n.attribute}["group_size"] == TP for n in nodes)
        in_graph = collectives(collections.Counter(n.op_type for n in nodes))
        plugins = [p for p in rep.plugin_layers if p["plugin"] in (ALL_REDUCE, ALL_GATHER)]
        assert all((p["namespace"], p["version"]) == ("dflash_trt", "1") for p in plugins)
        assert collectives(collections.Counter(p["plugin"] for p in plugins)) == in_graph  # every node, as a plugin
        assert len(plugins) == len(rep.plugin_layers)  # attention stays TensorRT's (recipe attention: native)
        if graph == "target":  # row-parallel outputs are summed; the vocab-parallel LM head is gathered
            assert in_graph[ALL_REDUCE] >= 2 * 4 and in_graph[ALL_GATHER] >= 1, in_graph
        else:
            assert in_graph[ALL_REDUCE] >= 2 * 2, in_graph
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["verification"]["all_built"] and "skipped" not in cfg["verification"]
    assert set(cfg["verification"]["graphs"]) == {f"rank{r}/{g}" for r in range(TP) for g in ("target", "drafter")}
    assert cfg["pretrained_config"]["mapping"]["tp_size"] == TP
    for rank in range(TP):
        assert f"TensorRT-RTX rank{rank}/target: parsed" in proc.stderr
        assert f"TensorRT-RTX rank{rank}/drafter: parsed" in proc.stderr
