"""Exported graphs (onnxruntime, CPU) equal the PyTorch reference runners: fp32 logits within 1e-4, the
target features, and the K/V each forward writes into the caches; on tiny Llama / Qwen2 / Qwen3 pairs (MHA and
GQA, tied and untied heads). The graphs use the standard opset-23 Attention and RMSNormalization ops."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest
import torch

from dflash_trt.export import export_pair
from dflash_trt.export.graphs import past_names, present_names
from dflash_trt.export.onnx import EXTERNAL_DATA_THRESHOLD
from dflash_trt.pipeline import torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from dflash_trt.runtime.onnxruntime import Graph, OrtDrafter, OrtTarget
from tiny import hf_config, save_hf_target, save_zlab_drafter

TOL = 1e-4
PAIRS = {  # family, target kwargs, drafter kwargs
    "llama_mha_tied": ("llama", dict(heads=4, kv_heads=4, tied=True), dict(heads=4, kv_heads=4, block_size=4)),
    "qwen2_gqa_untied": ("qwen2", dict(heads=4, kv_heads=2), dict(heads=4, kv_heads=2, block_size=8)),
    "qwen3_gqa": ("qwen3", dict(heads=8, kv_heads=2, layers=3), dict(heads=4, kv_heads=1, layer_ids=(0, 1, 2))),
}


@pytest.fixture(scope="module", params=list(PAIRS))
def exported(request, tmp_path_factory):
    family, tkw, dkw = PAIRS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    target = load_target(save_hf_target(root / "t", family, **tkw))
    drafter = load_drafter(save_zlab_drafter(root / "d", hf_config(family, **tkw), **dkw), target.cfg)
    paths = export_pair(
        target,
        drafter,
        root / "onnx",
        dtype=torch.float32,
        max_batch=4,
        max_seq_len=128,
        block_size=drafter.cfg.block_size,
    )
    return target, drafter, paths


def test_files_checker_and_ops(exported):
    target, drafter, paths = exported
    for name, layers in (("target", target.cfg.num_layers), ("drafter", drafter.cfg.num_layers)):
        path = paths[name]
        assert path.name == f"{name}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
        for t in model.graph.initializer:  # big weights live in the external data file
            external = t.data_location == onnx.TensorProto.EXTERNAL
            assert external == (np.prod(t.dims) * 4 > EXTERNAL_DATA_THRESHOLD), t.name
        ops = collections.Counter(n.op_type for n in model.graph.node)
        assert model.opset_import[0].version == 23
        assert ops["Attention"] == layers  # SDPA with the bool mask and GQA became one fused op per layer
        assert ops["RMSNormalization"] > 0 and ops["Softmax"] == 0
        inputs = [i.name for i in model.graph.input]
        outputs = [o.name for o in model.graph.output]
        fixed = (
            ["input_ids", "cache_lens", "logits_index"]
            if name == "target"
            else ["input_ids", "features", "feature_lens", "cache_lens"]
        )
        assert inputs == fixed + past_names(layers)
        assert outputs == (["logits", "features"] if name == "target" else ["logits", "draft_tokens"]) + present_names(
            layers
        )
        batch_dims = {i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input}
        assert len(batch_dims) == 1 and "" not in batch_dims  # one dynamic batch axis
    info = json.loads((paths["target"].parent / "export.json").read_text())
    assert info["tp_size"] == 1 and info["opset"] == 23


def _ort(target, drafter, paths):
    t = OrtTarget(Graph(paths["target"]), 4, 128, target.cfg.vocab_size)
    d = OrtDrafter(Graph(paths["drafter"]), drafter.cfg.block_size, drafter.cfg.mask_token_id)
    return t, d


def _close(a, b, what):
    a = torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = (a.float() - b.float()).abs().max().item()
    assert err <= TOL, f"{what}: max abs error {err}"


def _caches_equal(ort_caches, torch_caches, what):
    for i, (k, v) in enumerate(torch_caches.kv):
        for name, got, ref in (("k", ort_caches.kv[2 * i], k), ("v", ort_caches.kv[2 * i + 1], v)):
            for row, n in enumerate(torch_caches.lens.tolist()):
                assert ort_caches.lens[row] == n
                _close(got[row, :, :n], ref[row, :, :n], f"{what} layer {i} {name} row {row}")


def test_graphs_equal_torch_reference(exported):
    target, drafter, paths = exported
    ref_t, ref_d = torch_runners(target, drafter)
    ort_t, ort_d = _ort(target, drafter, paths)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, target.cfg.vocab_size, (n,), generator=g).tolist() for n in (7, 3, 11)]
    block = drafter.cfg.block_size
    for runner in (ref_t, ort_t, ref_d, ort_d):
        runner.reset(3, 64)
    with torch.no_grad():
        (l_ref, f_ref), (l_ort, f_ort) = ref_t.prefill(prompts), ort_t.prefill(prompts)
        _close(l_ort, l_ref, "prefill logits")
        for row, p in enumerate(prompts):  # padded positions of shorter prompts are never used
            _close(f_ort[row, : len(p)], f_ref[row, : len(p)], f"prefill features row {row}")
        _caches_equal(ort_t.caches, ref_t.caches, "target after prefill")
        lens = torch.tensor([len(p) for p in prompts])
        ref_d.append_context(f_ref, lens)
        ort_d.append_context(f_ort, lens)
        for step, accepted in enumerate(([2, 0, 3], [1, 4, 0])):
            blk = torch.randint(3, target.cfg.vocab_size, (3, block), generator=g)
            blk[:, 1:] = drafter.cfg.mask_token_id
            _close(ort_d.draft(blk), ref_d.draft(blk), f"step {step} draft logits")
            _caches_equal(ort_d.caches, ref_d.caches, f"drafter context after step {step}")
            (v_ref, vf_ref), (v_ort, vf_ort) = ref_t.verify(blk), ort_t.verify(blk)
            _close(v_ort, v_ref, f"step {step} verify logits")
            _close(vf_ort, vf_ref, f"step {step} verify features")
            n = torch.tensor(accepted)
            for t in (ref_t, ort_t):
                t.commit(n)
            _caches_equal(ort_t.caches, ref_t.caches, f"target after step {step}")
            ref_d.append_context(vf_ref, n)
            ort_d.append_context(vf_ort, n)


def test_in_flight_rows_equal_torch_reference(exported):
    """prefill into chosen rows and a drafter restart of those rows, while the other rows keep their state."""
    target, drafter, paths = exported
    ref_t, ref_d = torch_runners(target, drafter)
    ort_t, ort_d = _ort(target, drafter, paths)
    g = torch.Generator().manual_seed(1)
    vocab, block = target.cfg.vocab_size, drafter.cfg.block_size
    for runner in (ref_t, ort_t, ref_d, ort_d):
        runner.reset(2, 64)
    with torch.no_grad():
        first = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 9)]
        for t, d in ((ref_t, ref_d), (ort_t, ort_d)):
            _, f = t.prefill(first)
            d.append_context(f, torch.tensor([5, 9]))
        fresh = torch.randint(3, vocab, (6,), generator=g).tolist()
        (l_ref, f_ref), (l_ort, f_ort) = ref_t.prefill([fresh], rows=[1]), ort_t.prefill([fresh], rows=[1])
        _close(l_ort, l_ref, "row 1 re-prefill logits")
        for d, f in ((ref_d, f_ref), (ort_d, f_ort)):
            d.restart([1])
            d.append_context(f, torch.tensor([6]), rows=[1])
        blk = torch.full((2, block), drafter.cfg.mask_token_id)
        blk[:, 0] = torch.tensor([11, 12])
        _close(ort_d.draft(blk), ref_d.draft(blk), "draft after in-flight restart")
        _close(ort_t.verify(blk)[0], ref_t.verify(blk)[0], "verify after in-flight prefill")
