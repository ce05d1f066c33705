"""Random anchors and the block-sparse training mask (all blocks of a sequence in one forward).

Layout per sequence: KV = [context positions 0..L-1 | block_0 | ... | block_{n-1}], Q = the blocks.
Block i = [token at anchor_i, MASK x (B-1)] at positions anchor_i .. anchor_i+B-1. Its queries see context
positions strictly before anchor_i (the anchor's own target feature does not exist yet at inference),
every position of their own block (bidirectionally), and nothing of the other blocks.
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


def block_mask(anchors: Tensor, valid: Tensor, ctx_len: int, block: int) -> Tensor:
    """Visibility [b, n*B, ctx_len + n*B] (True = may attend) for anchors [b, n].

    Padded anchors (valid False) still see their own block, so every query row has a visible key.
    """
    b, n = anchors.shape
    q_block = torch.arange(n * block) // block  # block index of each query
    ctx = torch.arange(ctx_len)[None, None, :] < anchors[:, q_block, None]  # [b, nB, L]
    ctx = ctx & valid[:, q_block, None]
    same = (q_block[:, None] == q_block[None, :]).expand(b, -1, -1)  # [b, nB, nB]
    return torch.cat([ctx, same], dim=-1)


def decay_weights(block: int, gamma: float) -> Tensor:
    """w_k = exp(-(k-1)/gamma) for mask positions k = 1..B-1, normalised to sum 1."""
    w = torch.exp(-torch.arange(block - 1, dtype=torch.float32) / gamma)
    return w / w.sum()
