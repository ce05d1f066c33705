"""In-memory training data and deterministic batches (order and anchors are a function of seed and step)."""

from __future__ import annotations

from pathlib import Path

import torch

from dflash_trt.errors import UserError
from dflash_trt.train.blocks import sample_anchors
from dflash_trt.train.forward import Batch
from dflash_trt.train.shards import Sequence, read_shard, shard_files


def load_sequences(
    dirs: list[Path], split: str, layer_ids: tuple[int, ...], min_len: int, generated_repeat: int = 1
) -> list[Sequence]:
    """All sequences of `<dir>/<split>/shard-*.safetensors` over `dirs`, dropping ones too short to anchor a
    block; target-generated ones are listed `generated_repeat` times (oversampled within each epoch)."""
    seqs: list[Sequence] = []
    for d in dirs:
        for path in shard_files(Path(d).expanduser() / split):
            for s in read_shard(path, layer_ids):
                if len(s.tokens) - max(s.start, 1) >= min_len:
                    seqs += [s] * (generated_repeat if s.kind == "gen" else 1)
    if not seqs:
        raise UserError(f"{', '.join(map(str, dirs))}: no {split} sequence is long enough for one block")
    return seqs


def make_batch(
    seqs: list[Sequence], block: int, anchors_per_seq: int, max_len: int, mask_id: int, generator: torch.Generator
) -> Batch:
    """Crop each sequence to its last `max_len` tokens, sample anchors, and pad everything into a Batch."""
    cropped, picks = [], []
    for s in seqs:
        off = max(0, len(s.tokens) - max_len)
        start = max(s.start - off, 1)
        cropped.append((s, off))
        picks.append(sample_anchors(start, len(s.tokens) - off, block, anchors_per_seq, generator))
    b, n = len(seqs), max(1, max(len(p) for p in picks))
    width = max(len(s.tokens) - off for s, off in cropped)
    features = torch.zeros(b, width, seqs[0].features.shape[1])
    anchors = torch.zeros(b, n, dtype=torch.long)
    valid = torch.zeros(b, n, dtype=torch.bool)
    block_ids = torch.full((b, n, block), mask_id, dtype=torch.long)
    labels = torch.zeros(b, n, block - 1, dtype=torch.long)
    steps = torch.arange(block)
    for row, ((s, off), pick) in enumerate(zip(cropped, picks)):
        features[row, : len(s.tokens) - off] = s.features[off:].float()
        k = len(pick)
        anchors[row, :k], valid[row, :k] = pick, True
        block_ids[row, :k, 0] = s.tokens[off + pick]
        labels[row, :k] = s.labels[off + pick[:, None] + steps[1:]]
    pos_offset = torch.tensor([off for _, off in cropped])
    return Batch(features, pos_offset, block_ids, anchors, valid, labels)


def step_batch(seqs: list[Sequence], step: int, batch_size: int, seed: int) -> list[Sequence]:
    """Sequences of optimiser step `step`: consecutive slices of a fresh permutation per epoch."""
    out = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(i, len(seqs))
        perm = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(seqs[int(perm[pos])])
    return out
