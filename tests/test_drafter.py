"""Drafter conformance with the z-lab `dflash` package's DFlashDraftModel on the same random weights."""

from __future__ import annotations

import dflash.model as dflash_model  # z-lab peer, installed by scripts/setup.sh (dflash==0.1.0): fail if missing
import pytest
import torch
import transformers

from dflash_trt.pipeline import torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from tiny import hf_config, save_hf_target, save_zlab_drafter


@pytest.mark.parametrize(
    "family,kv_heads,head_dim,block,ctx_lens",
    [
        ("llama", 1, 32, 8, (11, 11)),
        ("qwen3", 2, 16, 16, (1, 30, 7)),
        ("qwen2", 4, 16, 4, (23,)),
    ],
)
def test_draft_logits_match_zlab(tmp_path, family, kv_heads, head_dim, block, ctx_lens):
    target_dir = save_hf_target(tmp_path / "t", family)
    drafter_dir = save_zlab_drafter(
        tmp_path / "d", hf_config(family), block_size=block, kv_heads=kv_heads, head_dim=head_dim, layer_ids=(1, 3, 0)
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    zlab = dflash_model.DFlashDraftModel.from_pretrained(drafter_dir, dtype=torch.float32).eval()
    target = load_target(target_dir)
    _, ours = torch_runners(target, load_drafter(drafter_dir, target.cfg))
    batch = len(ctx_lens)
    ours.reset(batch, max(ctx_lens) + block + 1)
    with torch.no_grad():
        # Context arrives in two pieces (prefill, then one step's committed tokens) to exercise the cache.
        feats, expected = [], []
        for row, n in enumerate(ctx_lens):
            ctx = torch.randint(0, 97, (1, n))
            hs = hf(ctx, output_hidden_states=True).hidden_states
            f = torch.cat([hs[i + 1] for i in zlab.target_layer_ids], dim=-1)
            blk = torch.tensor([[11 + row] + [5] * (block - 1)])
            h = zlab(
                position_ids=torch.arange(n + block)[None], noise_embedding=hf.model.embed_tokens(blk), target_hidden=f
            )
            expected.append(hf.lm_head(h[:, 1:]))
            feats.append(f[0])
        first = torch.tensor([max(1, n // 2) for n in ctx_lens])
        padded = torch.zeros(batch, max(ctx_lens), feats[0].shape[-1])
        for row, f in enumerate(feats):
            padded[row, : len(f)] = f
        ours.append_context(padded, first)
        rest = torch.zeros(batch, int((torch.tensor(ctx_lens) - first).max()), feats[0].shape[-1])
        for row, f in enumerate(feats):
            rest[row, : len(f) - first[row]] = f[first[row] :]
        ours.append_context(rest, torch.tensor(ctx_lens) - first)
        blocks = torch.tensor([[11 + row] + [5] * (block - 1) for row in range(batch)])
        logits = ours.draft(blocks)
    for row in range(batch):
        assert (logits[row] - expected[row][0]).abs().max() <= 1e-4
    assert logits.std() > 0.1  # the comparison is not between two constant outputs


def test_draft_depends_on_context(tmp_path):
    """KV injection is live: different target features give different drafts."""
    target = load_target(save_hf_target(tmp_path / "t", "llama"))
    _, drafter = torch_runners(target, load_drafter(save_zlab_drafter(tmp_path / "d", hf_config("llama")), target.cfg))
    drafter.reset(2, 32)
    with torch.no_grad():
        drafter.append_context(torch.randn(2, 6, 2 * 64), torch.tensor([6, 6]))
        logits = drafter.draft(torch.tensor([[3] + [5] * 7] * 2))
    assert (logits[0] - logits[1]).abs().max() > 1e-2


def test_restart_one_row_keeps_the_others(tmp_path):
    """In-flight batching on the drafter: a restarted row drafts from its new context only; row 0 is untouched."""
    target = load_target(save_hf_target(tmp_path / "t", "qwen3"))
    drafter = load_drafter(save_zlab_drafter(tmp_path / "d", hf_config("qwen3")), target.cfg)
    g = torch.Generator().manual_seed(0)
    old, new, other = (torch.randn(1, n, 2 * 64, generator=g) for n in (6, 4, 5))
    block = torch.tensor([[3] + [5] * 7])

    def fresh(features):
        _, runner = torch_runners(target, drafter)
        runner.reset(1, 32)
        runner.append_context(features, torch.tensor([features.shape[1]]))
        return runner.draft(block)[0]

    _, runner = torch_runners(target, drafter)
    runner.reset(2, 32)
    with torch.no_grad():
        runner.append_context(torch.cat([other[:, :5], old[:, :5]]), torch.tensor([5, 6 - 1]))
        runner.restart([1])
        runner.append_context(new, torch.tensor([4]), rows=[1])
        logits = runner.draft(block.expand(2, -1))
        assert (logits[0] - fresh(other)).abs().max() <= 1e-5
        assert (logits[1] - fresh(new)).abs().max() <= 1e-5
