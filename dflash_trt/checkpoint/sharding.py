"""Tensor-parallel sharding rules: the one source of truth for how a weight is split across TP ranks.

The converter, the dry-run planner, checkpoint validation, the tests' unsharder and the TP runtime
loader all go through these rules. They follow TensorRT-LLM's legacy converters
(`tensorrt_llm/models/{llama,qwen}/convert.py`):

- `FusedQKV`: q, k and v are split *separately* by heads and concatenated per rank as
  [q_r; k_r; v_r]. When tp > num_kv_heads, each KV head is duplicated tp // num_kv_heads times
  first (TRT-LLM `dup_kv_weight`, which requires tp % num_kv_heads == 0), so every rank holds one.
- `Split(0)` column-parallel (output features: mlp.fc / mlp.gate), `Split(1)` row-parallel
  (input features: attention.dense / mlp.proj; the runtime all-reduces their outputs).
- `VocabParallel`: embedding and lm_head rows padded with zeros to a multiple of tp, then split on
  dim 0 (TRT-LLM `pad_vocab_size` + `use_parallel_embedding`, `embedding_sharding_dim` 0); the
  original vocab size stays in config.json and the runtime drops the padded logits.
- `Replicated`: norms, and the drafter's `fc` / `hidden_norm` (see `layout.drafter_entries`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dflash_trt.errors import UserError

Shape = tuple[int, ...]


def pad_to_multiple(n: int, k: int) -> int:
    """Smallest multiple of `k` that is >= `n` (TRT-LLM `pad_vocab_size`)."""
    return -(-n // k) * k


def _check_copies_equal(shards: Sequence[torch.Tensor], what: str) -> None:
    for rank, shard in enumerate(shards[1:], start=1):
        if not torch.equal(shard, shards[0]):
            raise ValueError(f"{what}: rank {rank} differs from rank 0 but must be an identical copy")


@dataclass(frozen=True)
class Replicated:
    """Every rank holds the whole tensor."""

    def shard_shape(self, shape: Shape, tp: int) -> Shape:
        return shape

    def shard(self, sources: Sequence[torch.Tensor], tp: int, rank: int) -> torch.Tensor:
        return sources[0]

    def unshard(self, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_copies_equal(shards, "replicated tensor")
        return shards[0]


@dataclass(frozen=True)
class Split:
    """Even split along `dim`: 0 = column-parallel (output features), 1 = row-parallel (input features)."""

    dim: int

    def shard_shape(self, shape: Shape, tp: int) -> Shape:
        if shape[self.dim] % tp:
            raise ValueError(f"dim {self.dim} of shape {list(shape)} is not divisible by tp {tp}")
        return (*shape[: self.dim], shape[self.dim] // tp, *shape[self.dim + 1 :])

    def shard(self, sources: Sequence[torch.Tensor], tp: int, rank: int) -> torch.Tensor:
        size = self.shard_shape(tuple(sources[0].shape), tp)[self.dim]
        return sources[0].narrow(self.dim, rank * size, size)

    def unshard(self, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(shards), dim=self.dim)


COLUMN = Split(0)
ROW = Split(1)


@dataclass(frozen=True)
class VocabParallel:
    """Rows are the vocabulary: zero-padded to a multiple of tp, then split on dim 0."""

    vocab_size: int

    def padded(self, tp: int) -> int:
        return pad_to_multiple(self.vocab_size, tp)

    def shard_shape(self, shape: Shape, tp: int) -> Shape:
        return (self.padded(tp) // tp, *shape[1:])

    def shard(self, sources: Sequence[torch.Tensor], tp: int, rank: int) -> torch.Tensor:
        table = sources[0]
        rows = self.padded(tp) // tp
        start = rank * rows
        real = max(0, min(rows, self.vocab_size - start))
        if real == rows:
            return table[start : start + rows]
        out = table.new_zeros((rows, *table.shape[1:]))
        out[:real] = table[start : start + real]
        return out

    def unshard(self, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        full = torch.cat(list(shards), dim=0)
        if torch.count_nonzero(full[self.vocab_size :]):
            raise ValueError(f"vocab padding rows {self.vocab_size}..{full.shape[0] - 1} are not zero")
        return full[: self.vocab_size]


@dataclass(frozen=True)
class FusedQKV:
    """Fused [q; k; v] projection (weight or bias), split by heads with KV-head duplication."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    def kv_copies(self, tp: int) -> int:
        """How many ranks hold each KV head (1 unless tp > num_kv_heads)."""
        return max(1, tp // self.num_kv_heads)

    def kv_heads_per_rank(self, tp: int) -> int:
        return max(1, self.num_kv_heads // tp)

    def shard_shape(self, shape: Shape, tp: int) -> Shape:
        rows = (self.num_heads // tp + 2 * self.kv_heads_per_rank(tp)) * self.head_dim
        return (rows, *shape[1:])

    def shard(self, sources: Sequence[torch.Tensor], tp: int, rank: int) -> torch.Tensor:
        q, k, v = sources
        q_rows = self.num_heads // tp * self.head_dim
        kv_rows = self.kv_heads_per_rank(tp) * self.head_dim
        first_kv_head = rank // self.kv_copies(tp) * self.kv_heads_per_rank(tp)
        kv_start = first_kv_head * self.head_dim
        return torch.cat(
            [q[rank * q_rows : (rank + 1) * q_rows], k[kv_start : kv_start + kv_rows], v[kv_start : kv_start + kv_rows]]
        )

    def unshard(self, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        """Rebuild the unsharded [q; k; v], checking that duplicated KV heads are identical."""
        tp = len(shards)
        q_rows = self.num_heads // tp * self.head_dim
        kv_rows = self.kv_heads_per_rank(tp) * self.head_dim
        parts = [s.split([q_rows, kv_rows, kv_rows]) for s in shards]
        copies = self.kv_copies(tp)
        for first in range(0, tp, copies):
            group = parts[first : first + copies]
            _check_copies_equal([p[1] for p in group], f"k heads of ranks {first}..{first + copies - 1}")
            _check_copies_equal([p[2] for p in group], f"v heads of ranks {first}..{first + copies - 1}")
        kv_owners = parts[::copies]
        return torch.cat([p[0] for p in parts] + [p[1] for p in kv_owners] + [p[2] for p in kv_owners])


Rule = Replicated | Split | VocabParallel | FusedQKV


def shard(rule: Rule, sources: Sequence[torch.Tensor], tp: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s piece of a tensor (`sources` = [q, k, v] for `FusedQKV`, else one tensor).

    May return a view of the sources; callers make it contiguous before writing.
    """
    return rule.shard(sources, tp, rank)


def unshard(rule: Rule, shards: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inverse of `shard` over all ranks: the full tensor (fused [q; k; v] for `FusedQKV`, unpadded vocab)."""
    return rule.unshard(shards)


def check_parallel(*, num_heads: int, num_kv_heads: int, intermediate_size: int, tp: int, pp: int, source: str) -> None:
    """Refuse a split the rules above cannot make, as a one-line `UserError` naming the config field."""
    if pp != 1:
        raise UserError(f"--pp {pp}: pipeline parallelism is not supported yet; use --pp 1")
    if tp < 1:
        raise UserError(f"--tp {tp}: must be at least 1")
    if tp > num_heads:
        raise UserError(f"--tp {tp}: larger than {source} 'num_attention_heads' {num_heads}; use --tp <= {num_heads}")
    if num_heads % tp:
        raise UserError(f"--tp {tp}: {source} 'num_attention_heads' {num_heads} is not divisible by it; use a divisor")
    if num_kv_heads % tp and tp % num_kv_heads:
        raise UserError(
            f"--tp {tp}: {source} 'num_key_value_heads' {num_kv_heads} must divide tp or be divisible by it "
            "(KV heads are duplicated only when tp is a multiple of them); use another --tp"
        )
    if intermediate_size % tp:
        raise UserError(
            f"--tp {tp}: {source} 'intermediate_size' {intermediate_size} is not divisible by it; use a divisor"
        )
