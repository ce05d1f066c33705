"""Random anchors and the position-decay weights of the training loss.

Block i of a sequence = [token at anchor_i, MASK x (B-1)] at positions anchor_i .. anchor_i+B-1; the
training forward (`train.forward`) lets it see the context strictly before anchor_i and its own block.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_anchors(start: int, length: int, block: int, count: int, generator: torch.Generator) -> Tensor:
    """Up to `count` distinct sorted anchors in [max(start, 1), length - block] (labels must exist to a+B-1)."""
    lo, hi = max(start, 1), length - block
    if hi < lo:
        return torch.zeros(0, dtype=torch.long)
    n = hi - lo + 1
    pick = torch.randperm(n, generator=generator)[: min(count, n)]
    return (pick + lo).sort().values


def decay_weights(block: int, gamma: float) -> Tensor:
    """w_k = exp(-(k-1)/gamma) for mask positions k = 1..B-1, normalised to sum 1."""
    w = torch.exp(-torch.arange(block - 1, dtype=torch.float32) / gamma)
    return w / w.sum()
