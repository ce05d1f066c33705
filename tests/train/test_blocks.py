"""Anchors, the block-sparse training mask and the decay weights, checked on hand-written cases."""

from __future__ import annotations

import torch

from dflash_trt.train.blocks import block_mask, decay_weights, sample_anchors


def test_block_mask_by_hand():
    # Sequence of 6 context positions, anchors 1 and 3, B = 3. Columns: ctx 0..5 | block0 (3) | block1 (3).
    T, F = True, False
    expected = torch.tensor([
        # ctx: j < anchor          block 0    block 1
        [T, F, F, F, F, F,         T, T, T,   F, F, F],  # block 0 (anchor 1), position 0
        [T, F, F, F, F, F,         T, T, T,   F, F, F],
        [T, F, F, F, F, F,         T, T, T,   F, F, F],
        [T, T, T, F, F, F,         F, F, F,   T, T, T],  # block 1 (anchor 3)
        [T, T, T, F, F, F,         F, F, F,   T, T, T],
        [T, T, T, F, F, F,         F, F, F,   T, T, T],
    ])
    mask = block_mask(torch.tensor([[1, 3]]), torch.tensor([[True, True]]), ctx_len=6, block=3)
    assert torch.equal(mask[0], expected)


def test_padded_anchor_sees_only_its_block():
    mask = block_mask(torch.tensor([[2, 0]]), torch.tensor([[True, False]]), ctx_len=4, block=2)
    assert torch.equal(mask[0, 2:], torch.tensor([[False] * 4 + [False, False, True, True]] * 2))
    assert torch.equal(mask[0, :2, :4], torch.tensor([[True, True, False, False]] * 2))


def test_anchors_stay_in_range_and_are_distinct():
    gen = torch.Generator().manual_seed(0)
    a = sample_anchors(start=5, length=20, block=4, count=100, generator=gen)
    assert torch.equal(a, torch.arange(5, 17))  # all of 5..16: labels up to a+3 <= 19
    b = sample_anchors(start=0, length=50, block=8, count=10, generator=gen)
    assert len(b) == 10 and len(set(b.tolist())) == 10 and b.min() >= 1 and b.max() <= 42
    assert torch.equal(b, b.sort().values)
    assert len(sample_anchors(start=10, length=12, block=4, count=5, generator=gen)) == 0


def test_decay_weights():
    w = decay_weights(8, 4.0)
    raw = torch.exp(-torch.arange(7) / 4.0)
    assert torch.allclose(w, raw / raw.sum()) and abs(float(w.sum()) - 1) < 1e-6 and w[0] > w[-1]
