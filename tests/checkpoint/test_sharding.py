"""Every sharding rule: shard then unshard is exact for tp 1/2/4/8; pieces match TRT-LLM's layout."""

from __future__ import annotations

import pytest
import torch

from dflash_trt.checkpoint.sharding import (
    COLUMN,
    ROW,
    FusedQKV,
    Replicated,
    VocabParallel,
    check_parallel,
    pad_to_multiple,
    shard,
    unshard,
)
from dflash_trt.errors import UserError

TPS = (1, 2, 4, 8)


def roundtrip(rule, sources, tp):
    shards = [shard(rule, sources, tp, r).clone() for r in range(tp)]
    for piece in shards:
        assert tuple(piece.shape) == rule.shard_shape(tuple(torch.cat(sources).shape), tp)
    return shards, unshard(rule, shards)


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("rule", [COLUMN, ROW, Replicated()], ids=["column", "row", "replicated"])
def test_plain_rules_roundtrip(rule, tp):
    w = torch.randn(16, 24)
    shards, back = roundtrip(rule, [w], tp)
    assert torch.equal(back, w)
    if rule is COLUMN:
        assert torch.equal(shards[-1], w[16 - 16 // tp :])
    if rule is ROW:
        assert torch.equal(shards[0], w[:, : 24 // tp])


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("vocab", [250, 256, 5])
def test_vocab_parallel_pads_with_zero_rows(vocab, tp):
    table = torch.randn(vocab, 6)
    rule = VocabParallel(vocab)
    shards, back = roundtrip(rule, [table], tp)
    assert torch.equal(back, table)
    padded = torch.cat(shards)
    assert padded.shape[0] == pad_to_multiple(vocab, tp) and padded.shape[0] % tp == 0
    assert not padded[vocab:].any()
    assert torch.equal(padded[:vocab], table)


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("kv_heads", [8, 4, 2, 1])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_qkv_roundtrip_and_kv_duplication(kv_heads, tp, bias):
    heads, hd, hidden = 8, 3, 5
    rule = FusedQKV(heads, kv_heads, hd)
    q = torch.randn(heads * hd, hidden)
    k = torch.randn(kv_heads * hd, hidden)
    v = torch.randn(kv_heads * hd, hidden)
    if bias:
        q, k, v = q[:, 0], k[:, 0], v[:, 0]
    shards, back = roundtrip(rule, [q, k, v], tp)
    assert torch.equal(back, torch.cat([q, k, v]))
    kv_per_rank = max(1, kv_heads // tp)
    for r, piece in enumerate(shards):
        q_r, k_r, v_r = piece.split([heads // tp * hd, kv_per_rank * hd, kv_per_rank * hd])
        assert torch.equal(q_r, q[r * heads // tp * hd : (r + 1) * heads // tp * hd])
        # TRT-LLM: KV head h is repeated tp // kv_heads times (dup_kv_weight), then split evenly.
        first = r * kv_heads // tp if tp <= kv_heads else r // (tp // kv_heads)
        assert torch.equal(k_r, k[first * hd : (first + kv_per_rank) * hd])
        assert torch.equal(v_r, v[first * hd : (first + kv_per_rank) * hd])


def test_mha_qkv_equals_trtllm_reshape_split():
    """For MHA, TRT-LLM reshapes fused qkv to (3, H, in) and splits dim 1: the same pieces."""
    heads, hd, hidden, tp = 4, 2, 3, 2
    q, k, v = (torch.randn(heads * hd, hidden) for _ in range(3))
    fused = torch.cat([q, k, v]).reshape(3, heads * hd, hidden)
    for r in range(tp):
        want = fused[:, r * heads * hd // tp : (r + 1) * heads * hd // tp].reshape(-1, hidden)
        assert torch.equal(shard(FusedQKV(heads, heads, hd), [q, k, v], tp, r), want)


def test_unshard_rejects_diverging_copies():
    rule = FusedQKV(8, 2, 1)
    shards = [shard(rule, [torch.randn(8, 2), torch.randn(2, 2), torch.randn(2, 2)], 4, r).clone() for r in range(4)]
    shards[1][2] += 1  # rank 1's copy of KV head 0 no longer equals rank 0's
    with pytest.raises(ValueError, match="differs"):
        unshard(rule, shards)
    with pytest.raises(ValueError, match="differs"):
        unshard(Replicated(), [torch.zeros(3), torch.ones(3)])
    with pytest.raises(ValueError, match="padding"):
        unshard(VocabParallel(3), [torch.ones(2, 1), torch.ones(2, 1)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(tp=3), "'num_attention_heads' 32 is not divisible"),
        (dict(tp=64), "larger than cfg.json 'num_attention_heads' 32"),
        (dict(tp=2, num_kv_heads=3), "'num_key_value_heads' 3"),
        (dict(tp=16, num_kv_heads=3), "'num_key_value_heads' 3"),
        (dict(tp=8, intermediate_size=12), "'intermediate_size' 12"),
        (dict(tp=2, pp=2), "--pp 2"),
        (dict(tp=0), "--tp 0"),
    ],
)
def test_impossible_splits_are_refused(kwargs, match):
    args = dict(num_heads=32, num_kv_heads=8, intermediate_size=12288, tp=1, pp=1, source="cfg.json") | kwargs
    with pytest.raises(UserError, match=match):
        check_parallel(**args)


@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16, 32])
def test_possible_splits_pass(tp):
    check_parallel(num_heads=32, num_kv_heads=8, intermediate_size=12288, tp=tp, pp=1, source="cfg.json")
