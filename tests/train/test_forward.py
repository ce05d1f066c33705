"""The training forward equals the inference path (append_context + draft_logits), block by block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dflash_trt.pipeline import torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from dflash_trt.train.blocks import decay_weights
from dflash_trt.train.forward import Batch, block_hidden, drafter_rope, expected_tau, loss_and_accuracy, mask_logits
from tiny import hf_config, save_hf_target, save_zlab_drafter

BLOCK, MASK = 5, 5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("fwd")
    target = load_target(save_hf_target(root / "t", "qwen3"))
    drafter = load_drafter(
        save_zlab_drafter(root / "d", hf_config("qwen3"), block_size=BLOCK, layer_ids=(1, 3)), target.cfg
    )
    return target, drafter


def _features(target, drafter, tokens):
    runner, _ = torch_runners(target, drafter)
    runner.reset(1, tokens.shape[1])
    return runner.verify(tokens)[1]


def _batch(features, tokens, anchors, valid=None, offset=0):
    a = torch.tensor([anchors])
    block_ids = torch.full((1, len(anchors), BLOCK), MASK)
    block_ids[0, :, 0] = tokens[0, a[0]]
    valid = torch.ones_like(a, dtype=torch.bool) if valid is None else torch.tensor([valid])
    return Batch(
        features, torch.tensor([offset]), block_ids, a, valid, torch.zeros(1, len(anchors), BLOCK - 1, dtype=torch.long)
    )


def _train_logits(target, drafter, batch):
    hidden = block_hidden(drafter, target.embed, batch, drafter_rope(drafter))
    return mask_logits(target.lm_head, hidden, batch.valid)


def _inference_logits(target, drafter, features, anchor, token):
    _, runner = torch_runners(target, drafter)  # fp32 head, as in training
    runner.reset(1, anchor + BLOCK + 1)
    runner.append_context(features[:, :anchor], torch.tensor([anchor]))
    return runner.draft(torch.tensor([[token] + [MASK] * (BLOCK - 1)]))[0]


@torch.no_grad()
def test_training_forward_matches_inference(pair):
    """Every block of one training forward equals the incremental inference path (context appended, then drafted)."""
    target, drafter = pair
    tokens = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(0))
    features = _features(target, drafter, tokens)
    anchors = [2, 7, 11, 15]  # the last block covers positions 15..19
    for chosen in ([7], anchors):  # a single block, then all blocks of the sequence in one forward
        logits = _train_logits(target, drafter, _batch(features, tokens, chosen))
        for i, anchor in enumerate(chosen):
            expected = _inference_logits(target, drafter, features, anchor, int(tokens[0, anchor]))
            assert (logits[i] - expected).abs().max() < 1e-4
    assert logits.std() > 0.1


@torch.no_grad()
def test_block_sees_context_strictly_before_its_anchor_and_padding_sees_none(pair):
    """The training mask by behaviour: features at or after a block's anchor, and every feature for a padded
    anchor, leave its logits unchanged; a feature before the anchor changes them. A crop offset does not."""
    target, drafter = pair
    tokens = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(1))
    features = _features(target, drafter, tokens)
    batch = _batch(features, tokens, [6, 12, 3], valid=[True, True, False])
    base = _train_logits(target, drafter, batch)  # [2 valid blocks, B-1, V]
    after = features.clone()
    after[:, 6:] += 3.0
    changed = _train_logits(target, drafter, _batch(after, tokens, [6, 12, 3], valid=[True, True, False]))
    assert torch.equal(changed[0], base[0])  # block at anchor 6 sees columns 0..5 only
    assert (changed[1] - base[1]).abs().max() > 1e-3  # anchor 12 sees columns 6..11
    before = features.clone()
    before[:, 5] += 3.0
    assert (
        _train_logits(target, drafter, _batch(before, tokens, [6, 12, 3], valid=[True, True, False]))[0] - base[0]
    ).abs().max() > 1e-3
    padded = _batch(features, tokens, [6, 12, 3], valid=[True, True, False])
    hidden = block_hidden(drafter, target.embed, padded, drafter_rope(drafter))
    zeroed = block_hidden(
        drafter,
        target.embed,
        _batch(torch.zeros_like(features), tokens, [6, 12, 3], valid=[True, True, False]),
        drafter_rope(drafter),
    )
    assert torch.equal(hidden[2], zeroed[2])  # the padded anchor sees only its own block
    shifted = _train_logits(
        target, drafter, _batch(features, tokens, [6, 12, 3], valid=[True, True, False], offset=100)
    )
    assert (shifted - base).abs().max() < 1e-4  # RoPE is relative: a crop offset changes nothing


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
