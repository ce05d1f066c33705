"""The training forward equals the inference path (append_context + draft_logits), block by block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dflash_trt.models.loading import load_drafter, load_target
from dflash_trt.train.blocks import block_mask, decay_weights
from dflash_trt.train.forward import (Batch, RopeTables, block_hidden, expected_tau, loss_and_accuracy,
                                     mask_logits)
from tiny import hf_config, save_hf_target, save_zlab_drafter

BLOCK, MASK = 5, 5


def _inference_logits(drafter, features, anchor, token):
    drafter.setup_caches(1, anchor + BLOCK + 1)
    drafter.append_context(features[:, :anchor], torch.tensor([anchor]))
    return drafter.draft_logits(torch.tensor([[token] + [MASK] * (BLOCK - 1)]))[0]


def test_training_forward_matches_inference(tmp_path):
    target = load_target(save_hf_target(tmp_path / "t", "qwen3"))
    drafter = load_drafter(save_zlab_drafter(tmp_path / "d", hf_config("qwen3"), block_size=BLOCK, layer_ids=(1, 3)),
                           target)
    tokens = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target.setup_caches(1, 20)
        _, features = target(tokens)
        anchors = [2, 7, 11, 15]  # the last block covers positions 15..19
        for chosen in ([7], anchors):  # a single block, then all blocks of the sequence in one forward
            a = torch.tensor([chosen])
            block_ids = torch.full((1, len(chosen), BLOCK), MASK)
            block_ids[0, :, 0] = tokens[0, a[0]]
            batch = Batch(features, torch.zeros(1, dtype=torch.long), block_ids, a, torch.ones_like(a, dtype=torch.bool),
                          torch.zeros(1, len(chosen), BLOCK - 1, dtype=torch.long))
            visible = block_mask(a, batch.valid, features.shape[1], BLOCK)
            logits = mask_logits(drafter, block_hidden(drafter, batch, visible, RopeTables(drafter)), batch.valid, BLOCK)
            for i, anchor in enumerate(chosen):
                expected = _inference_logits(drafter, features, anchor, int(tokens[0, anchor]))
                assert (logits[i] - expected).abs().max() < 1e-4
    assert logits.std() > 0.1


def test_expected_tau():
    assert expected_tau([1.0, 1.0, 1.0]) == 4.0
    assert abs(expected_tau([0.5, 0.5]) - 1.75) < 1e-12
    assert expected_tau([0.0, 1.0]) == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decayed_cross_entropy_matches_autograd(dtype):
    gen = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(5, 4, 50, generator=gen)).to(dtype).requires_grad_()
    labels = torch.randint(0, 50, (5, 4), generator=gen)
    weights = decay_weights(5, 4.0)
    loss, acc = loss_and_accuracy(logits, labels, weights)
    (2 * loss).backward()
    ref = logits.detach().float().requires_grad_()
    ce = F.cross_entropy(ref.flatten(0, 1), labels.flatten(), reduction="none").view(5, 4)
    (2 * (ce * weights).sum(-1).mean()).backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert abs(float(loss.detach()) - float((ce * weights).sum(-1).mean().detach())) < 1e-4
    assert (logits.grad.float() - ref.grad).abs().max() < tol and logits.grad.dtype == dtype
    assert torch.equal(acc, (ref.argmax(-1) == labels).float().mean(0))
