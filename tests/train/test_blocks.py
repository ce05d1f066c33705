"""Anchors and the decay weights, checked on hand-written cases."""

from __future__ import annotations

import torch

from dflash_trt.train.blocks import decay_weights, sample_anchors


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
