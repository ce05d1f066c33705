"""On-disk training data: shards of sequences with the frozen target's features and labels.

A shard is one safetensors file holding S sequences back to back:
  tokens   int32 [N]     the sequence tokens (prompt + response, or real text)
  labels   int32 [N]     the target's token at each position (= tokens for target-generated text; the target's
                         greedy prediction from the prefix for teacher-forced real text)
  features fp16  [N, F]  concatenated target layer outputs at each position (zeros where unavailable)
  offsets  int64 [S+1]   sequence boundaries
  starts   int64 [S]     first position of each sequence that may anchor a block (the response start)
The metadata records the target layer ids, so a drafter with other layer ids cannot use it by mistake.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from dflash_trt.errors import UserError


@dataclass
class Sequence:
    tokens: Tensor  # int64 [L]
    labels: Tensor  # int64 [L]
    features: Tensor  # fp16 [L, F]
    start: int
    kind: str = ""  # the shard's source: "gen" (target-generated) or "tf" (teacher-forced real text)


def write_shard(path: Path, seqs: list[Sequence], layer_ids: tuple[int, ...], kind: str) -> None:
    """Write `seqs` to `path` atomically (a temporary file renamed into place)."""
    lens = torch.tensor([len(s.tokens) for s in seqs])
    tensors = {
        "tokens": torch.cat([s.tokens for s in seqs]).int(),
        "labels": torch.cat([s.labels for s in seqs]).int(),
        "features": torch.cat([s.features for s in seqs]).half(),
        "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]),
        "starts": torch.tensor([s.start for s in seqs], dtype=torch.long),
    }
    meta = {"target_layer_ids": json.dumps(list(layer_ids)), "kind": kind}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def read_shard(path: Path, layer_ids: tuple[int, ...] | None) -> list[Sequence]:
    """Read a shard, checking it was made with the drafter's target layer ids (None: any, for its tokens alone)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise UserError(
            f"{path}: unreadable data shard ({exc}); regenerate it with scripts/make_train_data.py"
        ) from None
    ids = tuple(json.loads(meta.get("target_layer_ids", "[]")))
    if layer_ids is not None and ids != tuple(layer_ids):
        raise UserError(
            f"{path}: features were cached for target_layer_ids {list(ids)}, the recipe asks for "
            f"{list(layer_ids)}; regenerate the data or fix 'target_layer_ids'"
        )
    off = t["offsets"].tolist()
    kind = meta.get("kind", "")
    return [
        Sequence(t["tokens"][a:b].long(), t["labels"][a:b].long(), t["features"][a:b], int(s), kind)
        for a, b, s in zip(off[:-1], off[1:], t["starts"].tolist())
    ]


def shard_files(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: data directory not found; create it with scripts/make_train_data.py")
    files = sorted(directory.glob("shard-*.safetensors"))
    if not files:
        raise UserError(f"{directory}: no shard-*.safetensors files; run scripts/make_train_data.py first")
    return files
