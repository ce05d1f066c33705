"""The plugins' kernel math (host build, libdflash_trt_math_host.so) against the PyTorch reference.

The host math is the very code the CUDA kernels run (plugins/src/*/...Math.h), looped over the
kernels' grid. DFlashBlockAttention is compared with ``dflash_trt.plugins.reference`` over a
sampled grid: batch 1..8 with ragged contexts 0..2048, block 1..16, GQA ratios 1/4/8, head_dim
64/128, window on/off, qk_norm on/off, fp32/fp16/bf16, default and forced key splits.

Tolerances: the reference and the plugin both compute in fp32 from the same T inputs and differ
only in summation order (~1e-6 relative), so after rounding the output to T they agree within
about one unit in the last place of T: fp32 atol 2e-5 / rtol 1e-4, fp16 atol 1e-3 / rtol 2^-10,
bf16 atol 8e-3 / rtol 2^-7.
"""

from __future__ import annotations

import ctypes
import random

import pytest
import torch

from dflash_trt.plugins.reference import dflash_block_attention, rope_tables

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
TOLERANCE = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float16: dict(atol=1e-3, rtol=2**-10),
    torch.bfloat16: dict(atol=8e-3, rtol=2**-7),
}


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    assert t.is_contiguous()
    return ctypes.c_void_p(t.data_ptr())


class MathLib:
    """ctypes view of the C ABI in plugins/src/mathCApi.cpp."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(str(path))
        self.lib.dflash_math_last_error.restype = ctypes.c_char_p
        self.lib.dflash_math_backend.restype = ctypes.c_char_p

    def _check(self, status: int) -> None:
        assert status == 0, self.lib.dflash_math_last_error().decode()

    def block_attention(self, qkv, qw, kw, cos, sin, kc, vc, ctx, *, num_heads, num_kv_heads, head_dim,
                        window, qk_norm, eps, keys_per_split=0) -> torch.Tensor:
        b, blk, _ = qkv.shape
        out = torch.empty(b, blk, num_heads * head_dim, dtype=qkv.dtype)
        self._check(self.lib.dflash_math_block_attention(
            DTYPE_CODE[qkv.dtype], b, blk, num_heads, num_kv_heads, head_dim, kc.shape[2], cos.shape[0], window,
            qk_norm, ctypes.c_float(eps), keys_per_split,
            _ptr(qkv), _ptr(qw), _ptr(kw), _ptr(cos), _ptr(sin), _ptr(kc), _ptr(vc), _ptr(ctx), _ptr(out)))
        return out

    def context_kv_append(self, kv, kw, cos, sin, k_cache, v_cache, ctx, new_lens, *, num_kv_heads, head_dim,
                          qk_norm, eps, in_place=True) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = kv.shape
        k_out, v_out = (k_cache, v_cache) if in_place else (torch.empty_like(k_cache), torch.empty_like(v_cache))
        self._check(self.lib.dflash_math_context_kv_append(
            DTYPE_CODE[kv.dtype], b, n, num_kv_heads, head_dim, k_cache.shape[2], cos.shape[0], qk_norm,
            ctypes.c_float(eps), _ptr(kv), _ptr(kw), _ptr(cos), _ptr(sin), _ptr(k_cache), _ptr(v_cache), _ptr(ctx),
            _ptr(new_lens), _ptr(k_out), _ptr(v_out)))
        return k_out, v_out

    def accept_tokens(self, draft, target) -> tuple[torch.Tensor, torch.Tensor]:
        b, blk = target.shape
        accepted = torch.empty(b, dtype=torch.int32)
        bonus = torch.empty(b, dtype=torch.int32)
        self._check(self.lib.dflash_math_accept_tokens(b, blk, _ptr(draft), _ptr(target), _ptr(accepted), _ptr(bonus)))
        return accepted, bonus


@pytest.fixture(scope="module")
def math(host_build) -> MathLib:
    lib = MathLib(host_build.math_host)
    assert lib.lib.dflash_math_backend() == b"host"
    return lib


def make_inputs(dtype, batch, block, num_heads, num_kv_heads, head_dim, cache, ctx_lens, seed):
    """Random inputs; cache slots past each ctx_lens are NaN: the plugin must never read them."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, block, (num_heads + 2 * num_kv_heads) * head_dim, generator=g).to(dtype)
    qw = (1 + 0.2 * torch.randn(head_dim, generator=g)).to(dtype)
    kw = (1 + 0.2 * torch.randn(head_dim, generator=g)).to(dtype)
    cos, sin = rope_tables(cache + block + 5, head_dim)
    kc = torch.randn(batch, num_kv_heads, cache, head_dim, generator=g).to(dtype)
    vc = torch.randn(batch, num_kv_heads, cache, head_dim, generator=g).to(dtype)
    for s, n in enumerate(ctx_lens):
        kc[s, :, n:] = float("nan")
        vc[s, :, n:] = float("nan")
    ctx = torch.tensor(ctx_lens, dtype=torch.int32)
    return qkv, qw, kw, cos.contiguous(), sin.contiguous(), kc, vc, ctx


def _grid(count: int = 36) -> list[dict]:
    """Deterministic sample: every (dtype, head_dim, GQA ratio, window on/off) pair, other axes random."""
    rng = random.Random(5)
    cases = []
    for i in range(count):
        dtype = (torch.float32, torch.float16, torch.bfloat16)[i % 3]
        head_dim = (64, 128)[i // 3 % 2]
        ratio = (1, 4, 8)[i // 6 % 3]
        window = 0 if i // 18 % 2 == 0 else rng.choice((1, 3, 16, 200))
        num_kv_heads = rng.choice((1, 2))
        block = rng.choice((1, 2, 5, 8, 16))
        cache = rng.choice((0, 1, 40, 300, 1024, 2048))
        batch = rng.randint(1, 8)
        while batch > 1 and batch * ratio * num_kv_heads * block * (cache + block) * head_dim > 1.5e8:
            batch -= 1  # keep the whole file well under a minute on two cores
        ctx_lens = [rng.randint(0, cache) for _ in range(batch)]
        if batch > 1:
            ctx_lens[:2] = [0, cache]  # both extremes of the ragged batch
        cases.append(dict(
            dtype=dtype, batch=batch, block=block, num_heads=ratio * num_kv_heads, num_kv_heads=num_kv_heads,
            head_dim=head_dim, cache=cache, ctx_lens=ctx_lens, window=window, qk_norm=i % 2,
            keys_per_split=rng.choice((0, 0, 32, 96)), seed=i,
        ))
    return cases


def case_id(c: dict) -> str:
    return (f"{str(c['dtype']).split('.')[-1]}-d{c['head_dim']}-h{c['num_heads']}kv{c['num_kv_heads']}"
            f"-b{c['batch']}-B{c['block']}-S{c['cache']}-w{c['window']}-n{c['qk_norm']}-k{c['keys_per_split']}")


GRID = _grid()


@pytest.mark.parametrize("case", GRID, ids=[case_id(c) for c in GRID])
def test_block_attention_matches_reference(math, case):
    inputs = make_inputs(case["dtype"], case["batch"], case["block"], case["num_heads"], case["num_kv_heads"],
                         case["head_dim"], case["cache"], case["ctx_lens"], case["seed"])
    attrs = dict(num_heads=case["num_heads"], num_kv_heads=case["num_kv_heads"], head_dim=case["head_dim"],
                 window=case["window"], qk_norm=case["qk_norm"], eps=1e-6)
    got = math.block_attention(*inputs, **attrs, keys_per_split=case["keys_per_split"])
    want = dflash_block_attention(*inputs, **attrs)
    torch.testing.assert_close(got.float(), want.float(), **TOLERANCE[case["dtype"]])


def test_grid_covers_the_axes():
    """The sampled grid keeps every axis the kernel branches on."""
    assert {c["dtype"] for c in GRID} == set(DTYPE_CODE)
    assert {c["head_dim"] for c in GRID} == {64, 128}
    assert {c["num_heads"] // c["num_kv_heads"] for c in GRID} == {1, 4, 8}
    assert {c["window"] > 0 for c in GRID} == {True, False}
    assert {c["keys_per_split"] > 0 for c in GRID} == {True, False}
    assert max(c["batch"] for c in GRID) >= 6 and max(c["cache"] for c in GRID) == 2048
    assert {1, 16} <= {c["block"] for c in GRID}


def test_windowed_rows_that_see_nothing_in_a_split(math):
    """Small window, long block, forced small key splits: for many (row, split) pairs every key is
    outside the window, so those partials carry max=-inf and must drop out of the merge."""
    inputs = make_inputs(torch.float32, 2, 16, 4, 2, 64, 90, [20, 90], seed=7)
    attrs = dict(num_heads=4, num_kv_heads=2, head_dim=64, window=2, qk_norm=1, eps=1e-6)
    got = math.block_attention(*inputs, **attrs, keys_per_split=32)
    torch.testing.assert_close(got, dflash_block_attention(*inputs, **attrs), **TOLERANCE[torch.float32])


def test_row_tiles_with_a_partial_last_tile(math):
    """GQA group 8 x block 11 = 88 query rows per kv head: a CTA takes 64 rows, the next one 24."""
    inputs = make_inputs(torch.bfloat16, 2, 11, 16, 2, 128, 200, [150, 7], seed=13)
    attrs = dict(num_heads=16, num_kv_heads=2, head_dim=128, window=0, qk_norm=1, eps=1e-6)
    for keys_per_split in (0, 64):
        got = math.block_attention(*inputs, **attrs, keys_per_split=keys_per_split)
        torch.testing.assert_close(got.float(), dflash_block_attention(*inputs, **attrs).float(),
                                   **TOLERANCE[torch.bfloat16])


def test_invalid_context_lengths_give_nan_rows(math):
    """ctx_lens outside [0, S] or past the RoPE table: that sequence's rows are NaN, the others exact."""
    dtype = torch.float16
    inputs = list(make_inputs(dtype, 4, 4, 2, 1, 64, 50, [3, 0, 50, 10], seed=11))
    attrs = dict(num_heads=2, num_kv_heads=1, head_dim=64, window=0, qk_norm=1, eps=1e-6)
    want = dflash_block_attention(*inputs, **attrs)
    inputs[7] = torch.tensor([3, 51, 50, -1], dtype=torch.int32)  # 51 > S, -1 < 0
    for keys_per_split in (0, 32):  # direct output and the split merge
        got = math.block_attention(*inputs, **attrs, keys_per_split=keys_per_split)
        assert got[[1, 3]].isnan().all()
        torch.testing.assert_close(got[[0, 2]].float(), want[[0, 2]].float(), **TOLERANCE[dtype])
    cos, sin = inputs[3][:52], inputs[4][:52]  # RoPE table too short for sequence 2's block (50 + 4 > 52)
    got = math.block_attention(*inputs[:3], cos.contiguous(), sin.contiguous(), *inputs[5:7],
                               torch.tensor([3, 0, 50, 10], dtype=torch.int32), **attrs)
    assert got[2].isnan().all() and not got[[0, 1, 3]].isnan().any()


@pytest.mark.parametrize("dtype", list(DTYPE_CODE), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("window", [0, 5])
def test_kv_append_feeds_block_attention(math, dtype, window):
    """DFlashContextKVAppend stores exactly the keys the attention expects: appending the first L
    tokens of a sequence (in two ragged steps) and attending its last B tokens over that cache gives
    the reference's output for those B queries when all L + B tokens form one block at ctx 0."""
    nh, nkv, hd, blk, cap = 4, 2, 64, 4, 48
    lens = [9, 30, 0]  # context tokens per sequence
    b, total = len(lens), max(lens) + blk
    g = torch.Generator().manual_seed(3)
    qkv_all = torch.randn(b, total, (nh + 2 * nkv) * hd, generator=g).to(dtype)
    qw = (1 + 0.2 * torch.randn(hd, generator=g)).to(dtype)
    kw = (1 + 0.2 * torch.randn(hd, generator=g)).to(dtype)
    cos, sin = (t.contiguous() for t in rope_tables(cap + blk, hd))
    attrs = dict(num_heads=nh, num_kv_heads=nkv, head_dim=hd, window=window, qk_norm=1, eps=1e-6)

    k_cache = torch.zeros(b, nkv, cap, hd, dtype=dtype)
    v_cache = torch.zeros(b, nkv, cap, hd, dtype=dtype)
    kv = qkv_all[..., nh * hd:].contiguous()  # k heads then v heads of every token
    first = [n // 2 for n in lens]
    ctx = torch.zeros(b, dtype=torch.int32)
    for step, step_lens in enumerate((first, [n - f for n, f in zip(lens, first)])):
        rows = torch.zeros(b, max(step_lens), kv.shape[-1], dtype=dtype)  # ragged: padding rows stay zero
        for s, (start, count) in enumerate(zip(ctx.tolist(), step_lens)):
            rows[s, :count] = kv[s, start:start + count]
        new_lens = torch.tensor(step_lens, dtype=torch.int32)
        k_cache, v_cache = math.context_kv_append(rows, kw, cos, sin, k_cache, v_cache, ctx, new_lens,
                                                  num_kv_heads=nkv, head_dim=hd, qk_norm=1, eps=1e-6,
                                                  in_place=step == 0)
        ctx = ctx + new_lens
    assert ctx.tolist() == lens

    block = torch.stack([qkv_all[s, n:n + blk] for s, n in enumerate(lens)]).contiguous()
    got = math.block_attention(block, qw, kw, cos, sin, k_cache, v_cache, ctx, **attrs)
    for s, n in enumerate(lens):
        whole = qkv_all[s:s + 1, :n + blk].contiguous()
        empty = torch.zeros(1, nkv, 0, hd, dtype=dtype)
        want = dflash_block_attention(whole, qw, kw, cos, sin, empty, empty, torch.zeros(1, dtype=torch.int32),
                                      **attrs)[0, n:]
        # the appended keys were rounded to T once more than the reference's in-block keys
        tol = {k: 2 * v for k, v in TOLERANCE[dtype].items()}
        torch.testing.assert_close(got[s].float(), want.float(), **tol)


def test_kv_append_leaves_other_rows_alone(math):
    """Only rows n < new_lens[s] at positions ctx_lens[s] + n < S are written; the rest keep their bits."""
    nkv, hd, cap = 1, 64, 8
    g = torch.Generator().manual_seed(4)
    kv = torch.randn(3, 4, 2 * nkv * hd, generator=g)
    cos, sin = (t.contiguous() for t in rope_tables(cap, hd))
    k_cache = torch.randn(3, nkv, cap, hd, generator=g)
    v_cache = torch.randn(3, nkv, cap, hd, generator=g)
    k_old, v_old = k_cache.clone(), v_cache.clone()
    ctx = torch.tensor([1, 6, 2], dtype=torch.int32)
    new_lens = torch.tensor([2, 4, 0], dtype=torch.int32)  # sequence 1 runs past S after 2 rows
    k_new, v_new = math.context_kv_append(kv, torch.ones(hd), cos, sin, k_cache, v_cache, ctx, new_lens,
                                          num_kv_heads=nkv, head_dim=hd, qk_norm=0, eps=1e-6, in_place=False)
    written = torch.zeros(3, cap, dtype=torch.bool)
    written[0, 1:3] = True
    written[1, 6:8] = True
    assert torch.equal(k_new[:, 0][~written], k_old[:, 0][~written])
    assert torch.equal(v_new[:, 0][~written], v_old[:, 0][~written])
    assert torch.equal(v_new[0, 0, 1:3], kv[0, :2, hd:]) and torch.equal(v_new[1, 0, 6:8], kv[1, :2, hd:])
    assert not torch.equal(k_new[0, 0, 2], k_old[0, 0, 2])
    assert torch.equal(k_cache, k_old) and torch.equal(v_cache, v_old)  # separate outputs: inputs untouched


def test_accept_tokens(math):
    """Accepted length = leading drafts equal to the target's argmax; bonus = the next target token."""
    g = torch.Generator().manual_seed(8)
    for blk in (1, 2, 8, 16):
        target = torch.randint(0, 3, (64, blk), generator=g, dtype=torch.int32)
        draft = torch.where(torch.rand(64, blk - 1, generator=g) < 0.8, target[:, :-1],
                            torch.randint(0, 3, (64, blk - 1), generator=g, dtype=torch.int32)).contiguous()
        accepted, bonus = math.accept_tokens(draft, target)
        want = (draft == target[:, :-1]).int().cumprod(dim=1).sum(dim=1)
        assert torch.equal(accepted, want.int())
        assert torch.equal(bonus, target.gather(1, want[:, None].long())[:, 0])
        if blk == 16:
            assert len(set(accepted.tolist())) > 3  # the random draws do exercise several lengths


SPECIAL_FLOATS = [0.0, -0.0, 1.0, -2.5, 65504.0, 65519.0, 65520.0, 1e9, -1e9, 6.1e-5, 5.96e-8, 2.98e-8, 2.9802322e-8,
                  1e-30, 3.0e38, float("inf"), float("-inf"), 1.00048828125, 1.00146484375, 1.00390625, 1.01171875]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_host_conversions_match_torch_bit_for_bit(math, dtype):
    """The host build's fp32 <-> fp16/bf16 conversions round exactly like torch (nearest even)."""
    g = torch.Generator().manual_seed(9)
    values = torch.cat([torch.tensor(SPECIAL_FLOATS), torch.randn(20000, generator=g) * 10.0 ** torch.randint(
        -9, 6, (20000,), generator=g).float()])
    bits = torch.empty(values.numel(), dtype=torch.int16)
    assert math.lib.dflash_math_from_float(DTYPE_CODE[dtype], values.numel(), _ptr(values), _ptr(bits)) == 0
    assert torch.equal(bits, values.to(dtype).view(torch.int16))
    nan_bits = torch.empty(1, dtype=torch.int16)
    nan = torch.tensor([float("nan")])
    assert math.lib.dflash_math_from_float(DTYPE_CODE[dtype], 1, _ptr(nan), _ptr(nan_bits)) == 0
    assert nan_bits.view(dtype).isnan().all()

    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    floats = torch.empty(every.numel(), dtype=torch.float32)
    assert math.lib.dflash_math_to_float(DTYPE_CODE[dtype], every.numel(), _ptr(every), _ptr(floats)) == 0
    want = every.view(dtype).float()
    assert torch.equal(floats.isnan(), want.isnan())
    assert torch.equal(floats[~want.isnan()], want[~want.isnan()])


def test_invalid_arguments_are_reported(math):
    t = torch.zeros(1)
    status = math.lib.dflash_math_block_attention(0, 1, 1, 6, 4, 64, 0, 1, 0, 1, ctypes.c_float(1e-6), 0,
                                                  *(_ptr(t) for _ in range(8)), _ptr(t))
    assert status != 0
    assert "num_heads (6) must be a multiple of num_kv_heads (4)" in math.lib.dflash_math_last_error().decode()
