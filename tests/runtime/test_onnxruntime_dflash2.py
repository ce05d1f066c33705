"""A DFlash2 drafter (grouped dynamic convs, candidate selector; z-lab's own class wrote the weights) exported by
`export_pair` runs on the onnxruntime backend: its proposal scores equal the torch reference's with the context
appended in pieces, and greedy output equals the torch backend's and plain decoding, batch 1 and 4, at the exported
block size and a smaller one."""

from __future__ import annotations

import pytest
import torch

from dflash_trt.pipeline import load_engine_pipeline, load_pipeline, torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from ort_engine import make_engine_dir
from runtime.test_onnxruntime import requests, run_all
from tiny import hf_config, save_hf_target, save_tiny_tokenizer
from tiny_dflash2 import save_zlab_drafter2


@pytest.fixture(scope="module")
def tiny2(tmp_path_factory):
    root = tmp_path_factory.mktemp("ort2")
    target = save_hf_target(root / "t", "qwen3", heads=8, kv_heads=2)
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter2(
        root / "d", hf_config("qwen3", heads=8, kv_heads=2), block_size=8, layer_ids=(0, 2), embedding_scale=1.5
    )
    engine = make_engine_dir(root / "engine", target_dir=target, drafter_dir=drafter, max_seq_len=320)
    return target, drafter, engine


def test_drafts_equal_the_torch_reference(tiny2):
    """The same context appended in two pieces, then a block: the exported graph's proposals (selector scores
    along its greedy walk) equal the torch runner's."""
    target, drafter, engine = tiny2
    model = load_target(target)
    reference = torch_runners(model, load_drafter(drafter, model.cfg))  # fp32 LM head, as the graph's
    ort_pipe = load_engine_pipeline(engine)
    runners = (ort_pipe.target, ort_pipe.drafter), reference
    proposals = []
    for target_runner, drafter_runner in runners:
        target_runner.reset(2, 64)
        drafter_runner.reset(2, 64)
        _, features = target_runner.prefill([[3, 14, 15, 92, 65], [35, 89, 79]])
        drafter_runner.append_context(features[:, :2], torch.tensor([2, 2]))  # the context in two pieces
        drafter_runner.append_context(features[:, 2:], torch.tensor([3, 1]))
        block = torch.full((2, 8), drafter_runner.mask_token_id)
        block[:, 0] = torch.tensor([7, 11])
        proposals.append(drafter_runner.draft(block))
    ort, ref = proposals
    finite = torch.isfinite(ref)  # each position's top-k candidates
    assert torch.equal(torch.isfinite(ort), finite) and finite.any()
    torch.testing.assert_close(ort[finite], ref[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("block", [3, 8])  # the graph was exported at 8; its block dimension is dynamic
def test_greedy_tokens_equal_torch_backend_and_plain_decoding(tiny2, batch, block):
    target, drafter, engine = tiny2
    ort, ref = load_engine_pipeline(engine), load_pipeline(target, drafter)
    reqs = requests(97)
    tokens = run_all(ort, reqs, batch, block)
    assert tokens == run_all(ref, reqs, batch, block)
    assert tokens == run_all(ref, reqs, batch, None)  # None: plain decoding (block 1)
