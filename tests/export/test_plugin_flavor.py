"""The plugin flavors of the drafter graph: one `DFlashContextKVAppend` plugin node per layer (the node of
`dflash_trt.plugins.contracts.CONTEXT_KV_APPEND`) writes the new context K/V into the whole-cache inputs, whose
outputs are the graph's present.* (aliased by TensorRT); the block attends with ONNX `Attention` (`plugin_kv`) or
one `DFlashBlockAttention` node per layer (`plugin`). Traced with the ops' eager bodies (the plugins' PyTorch
reference), each flavor equals the torch drafter runner: draft logits, greedy draft tokens and the cache contents
it writes."""

from __future__ import annotations

import collections

import onnx
import pytest
import torch

from dflash_trt.export import export_pair
from dflash_trt.export.graphs import past_names, present_names
from dflash_trt.export.onnx import DrafterPluginGraph
from dflash_trt.pipeline import torch_runners
from dflash_trt.plugins.contracts import BLOCK_ATTENTION, CONTEXT_KV_APPEND
from dflash_trt.runtime.loading import load_drafter, load_target
from tiny import hf_config, save_hf_target, save_zlab_drafter


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin_flavor")
    target = load_target(save_hf_target(root / "t", "qwen3", heads=8, kv_heads=2))
    drafter = load_drafter(
        save_zlab_drafter(
            root / "d", hf_config("qwen3", heads=8, kv_heads=2), block_size=4, layer_ids=(0, 2), head_dim=64
        ),
        target.cfg,
    )
    return root, target, drafter


def node_attrs(node: onnx.NodeProto, op) -> dict:
    """The node's contract attributes, after checking its plugin namespace and version."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == op.namespace
    assert attrs.pop("plugin_namespace").decode() == op.namespace
    assert attrs.pop("plugin_version").decode() == op.version
    assert op.resolve_attrs(**attrs) == attrs
    return attrs


@pytest.mark.parametrize("flavor", ["plugin_kv", "plugin"])
def test_plugin_nodes_follow_the_contract(pair, flavor):
    root, target, drafter = pair
    paths = export_pair(
        target, drafter, root / flavor, dtype=torch.float32, max_batch=4, max_seq_len=64, block_size=4, flavor=flavor
    )
    onnx.checker.check_model(str(paths["drafter"]))
    model = onnx.load(str(paths["drafter"]), load_external_data=False)
    layers = drafter.cfg.num_layers
    ops = collections.Counter(n.op_type for n in model.graph.node)
    plugin_attention = flavor == "plugin"
    assert ops[CONTEXT_KV_APPEND.name] == layers
    assert (ops[BLOCK_ATTENTION.name], ops["Attention"]) == ((layers, 0) if plugin_attention else (0, layers))
    for node in (n for n in model.graph.node if n.op_type == BLOCK_ATTENTION.name):
        attrs = node_attrs(node, BLOCK_ATTENTION)
        cfg = drafter.cfg
        assert (attrs["num_heads"], attrs["num_kv_heads"], attrs["head_dim"]) == (cfg.num_heads, cfg.num_kv_heads, 64)
        assert attrs["window"] == 0 and attrs["eps"] == pytest.approx(cfg.rms_norm_eps)
        assert list(node.input[5:7]) in [present_names(layers)[2 * i : 2 * i + 2] for i in range(layers)]
    nodes = [n for n in model.graph.node if n.op_type == CONTEXT_KV_APPEND.name]
    graph_inputs = [i.name for i in model.graph.input]
    graph_outputs = [o.name for o in model.graph.output]
    assert graph_inputs[4:] == past_names(layers)
    assert graph_outputs[:2] == ["logits", "draft_tokens"] and graph_outputs[2:] == present_names(layers)
    for i, node in enumerate(nodes):
        attrs = node_attrs(node, CONTEXT_KV_APPEND)
        assert attrs["num_kv_heads"] == drafter.cfg.num_kv_heads and attrs["head_dim"] == 64
        assert len(node.input) == len(CONTEXT_KV_APPEND.inputs) and len(node.output) == 2
        assert list(node.input[4:6]) == past_names(layers)[2 * i : 2 * i + 2]  # the cache inputs, in place
        assert list(node.output) == present_names(layers)[2 * i : 2 * i + 2]  # ... are the graph's outputs
    # the target graph is unchanged by the flavor: standard ops only
    target_ops = {n.domain for n in onnx.load(str(paths["target"]), load_external_data=False).graph.node}
    assert target_ops == {""}


@pytest.mark.parametrize("flavor", ["plugin_kv", "plugin"])
def test_plugin_flavor_equals_torch_drafter(pair, flavor):
    _, target, drafter = pair
    ref_t, ref_d = torch_runners(target, drafter)
    graph = DrafterPluginGraph(drafter, target.embed, target.lm_head, 64, flavor).eval()
    g = torch.Generator().manual_seed(0)
    ref_t.reset(2, 40)
    ref_d.reset(2, 40)
    with torch.no_grad():
        _, features = ref_t.prefill([[5, 9, 14, 3, 22], [7, 8, 31]])
        caches = [t.clone() for kv in ref_d.caches.kv for t in kv]
        lens = torch.zeros(2, dtype=torch.long)
        for n in (torch.tensor([5, 3]), torch.tensor([2, 0])):
            blk = torch.randint(3, 97, (2, 4), generator=g)
            ref_d.append_context(features, n)
            want = ref_d.draft(blk)
            got = graph(blk, features, n, lens, *caches)
            assert (got[0] - want).abs().max() <= 1e-4
            assert torch.equal(got[1], want.argmax(-1))
            caches = list(got[2:])
            lens = lens + n
            for layer, (k, v) in enumerate(ref_d.caches.kv):
                for row, length in enumerate(lens.tolist()):
                    assert (caches[2 * layer][row, :, :length] - k[row, :, :length]).abs().max() <= 1e-5
                    assert (caches[2 * layer + 1][row, :, :length] - v[row, :, :length]).abs().max() <= 1e-5
            _, features = ref_t.verify(blk)
            ref_t.commit(n)


def test_drafter_the_plugin_cannot_serve_is_refused(tmp_path):
    from dflash_trt.errors import UserError

    target = load_target(save_hf_target(tmp_path / "t", "qwen3"))
    drafter = load_drafter(save_zlab_drafter(tmp_path / "d", hf_config("qwen3"), block_size=4), target.cfg)
    with pytest.raises(UserError, match="head_dim"):  # head_dim 16: the plugin serves 64 and 128
        export_pair(
            target,
            drafter,
            tmp_path / "onnx",
            dtype=torch.float32,
            max_batch=2,
            max_seq_len=32,
            block_size=4,
            flavor="plugin_kv",
        )
