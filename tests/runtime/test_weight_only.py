"""`--weight-only int4|int8` on the onnxruntime backend: every constant-weight MatMul of both graphs (the tied LM
head's transposed embedding too) becomes `MatMulNBits`; the quantized target's logits track the fp32 graph's, int8
closer than int4; the loop and the CLI run on it; combinations it does not serve exit 2 with one line."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch

from dflash_trt.cli import main
from dflash_trt.runtime.onnxruntime import Graph
from dflash_trt.runtime.weight_only import quantize_matmuls
from ort_engine import make_engine_dir
from tiny import hf_config, save_hf_target, save_tiny_tokenizer, save_zlab_drafter

VOCAB = 97


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("weight_only")
    target = save_hf_target(root / "t", "qwen3", heads=8, kv_heads=2, tied=True)
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter(root / "d", hf_config("qwen3", heads=8, kv_heads=2), block_size=4, layer_ids=(0, 2))
    return make_engine_dir(root / "engine", target_dir=target, drafter_dir=drafter, max_seq_len=128)


def constant_weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes whose weight is an initializer, directly or through a Transpose."""
    inits = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMul":
            continue
        w = n.input[1]
        if w in inits or (w in producer and producer[w].op_type == "Transpose" and producer[w].input[0] in inits):
            out.append(n.name)
    return out


@pytest.mark.parametrize("graph", ["target", "drafter"])
def test_every_weight_matmul_becomes_matmulnbits(engine, graph):
    path = engine / "onnx" / "rank0" / f"{graph}.onnx"
    weights = constant_weight_matmuls(onnx.load(str(path)))
    assert weights
    model = quantize_matmuls(onnx.load(str(path)), "int4")
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulNBits"] == len(weights) and constant_weight_matmuls(model) == []
    heads = [n for n in model.graph.node if n.op_type == "MatMulNBits" and _attr(n, "N") == VOCAB]
    assert len(heads) == 1  # the LM head (tied: the transposed embedding, folded into an initializer)
    assert all(_attr(n, "bits") == 4 and _attr(n, "block_size") == 32 for n in model.graph.node if n.domain)


def _attr(node: onnx.NodeProto, name: str):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def prefill_logits(graph: Graph, tokens: list[int]) -> np.ndarray:
    """Target logits at every prompt position (one row, empty cache)."""
    n = len(tokens)
    layers = sum(name.startswith("past_key_values.") for name in graph.input_names) // 2
    _, kv, _, hd = graph.input_shape("past_key_values.0.key")
    feeds = {
        "input_ids": np.array([tokens], dtype=np.int64),
        "cache_lens": np.zeros(1, dtype=np.int64),
        "logits_index": np.arange(n, dtype=np.int64)[None],
    }
    feeds |= {f"past_key_values.{i}.{t}": np.zeros((1, kv, 1, hd), np.float32) for i in range(layers) for t in "kv"}
    feeds = {
        k.replace(".k", ".key").replace(".v", ".value") if k.startswith("past") else k: v for k, v in feeds.items()
    }
    return graph.run(feeds, ["logits"])[0][0]


def test_quantized_logits_track_fp32_and_int8_is_closer(engine):
    path = engine / "onnx" / "rank0" / "target.onnx"
    tokens = torch.randint(3, VOCAB, (24,), generator=torch.Generator().manual_seed(0)).tolist()
    ref = prefill_logits(Graph(path), tokens)
    err = {}
    for precision in ("int8", "int4"):
        got = prefill_logits(Graph(path, precision), tokens)
        err[precision] = float(np.abs(got - ref).max())
        agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
        assert agree >= (0.9 if precision == "int8" else 0.6), (precision, agree)
    assert 0 < err["int8"] < err["int4"] < float(ref.std()), err  # a wrong layout or scale errs by far more


def test_cli_runs_and_refuses_what_it_does_not_serve(engine, tmp_path, capsys):
    gen = ["generate", "--prompt", "w1 w5 w9", "--max-new-tokens", "8", "--block-size", "4"]
    assert main([*gen, "--engine", str(engine), "--weight-only", "int4"]) == 0
    capsys.readouterr()
    for argv, needle in (
        ([*gen, "--weight-only", "int4"], "--engine"),
        ([*gen, "--engine", str(engine), "--backend", "tensorrt", "--weight-only", "int8"], "onnxruntime option"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


def test_a_graph_the_cpu_provider_cannot_run_is_refused_naming_the_file(tmp_path):
    """onnxruntime's CPU provider has no bf16 MatMul: a bf16 engine directory gets one line, not a traceback."""
    from onnx import TensorProto, helper

    from dflash_trt.errors import UserError

    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 4])
    w = helper.make_tensor("w", TensorProto.BFLOAT16, [4, 4], [0] * 16)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    path = tmp_path / "target.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UserError, match="MatMul") as err:
        Graph(path)
    assert str(path) in str(err.value) and "dtype fp32 or fp16" in str(err.value)
