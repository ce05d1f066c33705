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

from dflash_trt.models.layers import Rope
from dflash_trt.plugins.reference import dflash_block_attention

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

    def block_attention(
        self,
        qkv,
        qw,
        kw,
        cos,
        sin,
        kc,
        vc,
        ctx,
        *,
        num_heads,
        num_kv_heads,
        head_dim,
        window,
        qk_norm,
        eps,
        keys_per_split=0,
    ) -> torch.Tensor:
        b, blk, _ = qkv.shape
        out = torch.empty(b, blk, num_heads * head_dim, dtype=qkv.dtype)
        self._check(
            self.lib.dflash_math_block_attention(
                DTYPE_CODE[qkv.dtype],
                b,
                blk,
                num_heads,
                num_kv_heads,
                head_dim,
                kc.shape[2],
                cos.shape[0],
                window,
                qk_norm,
                ctypes.c_float(eps),
                keys_per_split,
                _ptr(qkv),
                _ptr(qw),
                _ptr(kw),
                _ptr(cos),
                _ptr(sin),
                _ptr(kc),
                _ptr(vc),
                _ptr(ctx),
                _ptr(out),
            )
        )
        return out

    def paged_block_attention(
        self,
        qkv,
        qw,
        kw,
        cos,
        sin,
        pool,
        page_table,
        ctx,
        *,
        num_heads,
        num_kv_heads,
        head_dim,
        window,
        qk_norm,
        eps,
        keys_per_split=0,
    ) -> torch.Tensor:
        b, blk, _ = qkv.shape
        out = torch.empty(b, blk, num_heads * head_dim, dtype=qkv.dtype)
        self._check(
            self.lib.dflash_math_paged_block_attention(
                DTYPE_CODE[qkv.dtype],
                b,
                blk,
                num_heads,
                num_kv_heads,
                head_dim,
                pool.shape[1],
                pool.shape[2],
                page_table.shape[2],
                cos.shape[0],
                window,
                qk_norm,
                ctypes.c_float(eps),
                keys_per_split,
                _ptr(qkv),
                _ptr(qw),
                _ptr(kw),
                _ptr(cos),
                _ptr(sin),
                _ptr(pool),
                _ptr(page_table),
                _ptr(ctx),
                _ptr(out),
            )
        )
        return out

    def context_kv_append(
        self, kv, kw, cos, sin, k_cache, v_cache, ctx, new_lens, *, num_kv_heads, head_dim, qk_norm, eps
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Appends in place (the plugin's only mode); returns the updated caches."""
        b, n, _ = kv.shape
        self._check(
            self.lib.dflash_math_context_kv_append(
                DTYPE_CODE[kv.dtype],
                b,
                n,
                num_kv_heads,
                head_dim,
                k_cache.shape[2],
                cos.shape[0],
                qk_norm,
                ctypes.c_float(eps),
                _ptr(kv),
                _ptr(kw),
                _ptr(cos),
                _ptr(sin),
                _ptr(k_cache),
                _ptr(v_cache),
                _ptr(ctx),
                _ptr(new_lens),
            )
        )
        return k_cache, v_cache

    def paged_kv_append(
        self, kv, kw, cos, sin, pool, page_table, ctx, new_lens, *, num_kv_heads, head_dim, qk_norm, eps
    ) -> torch.Tensor:
        b, n, _ = kv.shape
        self._check(
            self.lib.dflash_math_paged_kv_append(
                DTYPE_CODE[kv.dtype],
                b,
                n,
                num_kv_heads,
                head_dim,
                pool.shape[1],
                pool.shape[2],
                page_table.shape[2],
                cos.shape[0],
                qk_norm,
                ctypes.c_float(eps),
                _ptr(kv),
                _ptr(kw),
                _ptr(cos),
                _ptr(sin),
                _ptr(pool),
                _ptr(page_table),
                _ptr(ctx),
                _ptr(new_lens),
            )
        )
        return pool

    def plan(self, batch, block, num_heads, num_kv_heads, head_dim, cache, window=0) -> dict:
        out = (ctypes.c_int32 * 4)()
        ws = (ctypes.c_int64 * 2)()
        self._check(
            self.lib.dflash_math_block_attention_plan(
                batch, block, num_heads, num_kv_heads, head_dim, cache, window, out, ws
            )
        )
        return dict(
            rows_per_tile=out[0],
            row_tiles=out[1],
            num_splits=out[2],
            min_keys_per_split=out[3],
            workspace=ws[0],
            max_workspace=ws[1],
        )

    def last_stats(self) -> dict:
        out = (ctypes.c_int64 * 3)()
        self.lib.dflash_math_last_stats(out)
        return dict(ctas=out[0], ctas_with_work=out[1], merges=out[2])

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


# (compute capability, SMs, opt-in shared memory per CTA, shared memory per SM) of devices the plans are checked for
H100 = (9, 0, 132, 227 * 1024, 228 * 1024)
RTX_5090 = (12, 0, 170, 99 * 1024, 100 * 1024)  # consumer Blackwell: 99 KB per CTA
T4 = (7, 5, 40, 64 * 1024, 64 * 1024)


@pytest.fixture
def device(math):
    """Plan the host math for another device; restores the default (an H100) afterwards."""

    def set_device(spec):
        math.lib.dflash_math_set_device(*spec)

    yield set_device
    math.lib.dflash_math_set_device(0, 0, 0, 0, 0)


def make_inputs(dtype, batch, block, num_heads, num_kv_heads, head_dim, cache, ctx_lens, seed):
    """Random inputs; cache slots past each ctx_lens are NaN: the plugin must never read them."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, block, (num_heads + 2 * num_kv_heads) * head_dim, generator=g).to(dtype)
    qw = (1 + 0.2 * torch.randn(head_dim, generator=g)).to(dtype)
    kw = (1 + 0.2 * torch.randn(head_dim, generator=g)).to(dtype)
    cos, sin = Rope.build(head_dim, 1_000_000.0, None, cache + block + 5)
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
        cases.append(
            dict(
                dtype=dtype,
                batch=batch,
                block=block,
                num_heads=ratio * num_kv_heads,
                num_kv_heads=num_kv_heads,
                head_dim=head_dim,
                cache=cache,
                ctx_lens=ctx_lens,
                window=window,
                qk_norm=i % 2,
                keys_per_split=rng.choice((0, 0, 32, 96)),
                seed=i,
            )
        )
    return cases


def case_id(c: dict) -> str:
    return (
        f"{str(c['dtype']).split('.')[-1]}-d{c['head_dim']}-h{c['num_heads']}kv{c['num_kv_heads']}"
        f"-b{c['batch']}-B{c['block']}-S{c['cache']}-w{c['window']}-n{c['qk_norm']}-k{c['keys_per_split']}"
    )


GRID = _grid()


@pytest.mark.parametrize("case", GRID, ids=[case_id(c) for c in GRID])
def test_block_attention_matches_reference(math, case):
    inputs = make_inputs(
        case["dtype"],
        case["batch"],
        case["block"],
        case["num_heads"],
        case["num_kv_heads"],
        case["head_dim"],
        case["cache"],
        case["ctx_lens"],
        case["seed"],
    )
    attrs = dict(
        num_heads=case["num_heads"],
        num_kv_heads=case["num_kv_heads"],
        head_dim=case["head_dim"],
        window=case["window"],
        qk_norm=case["qk_norm"],
        eps=1e-6,
    )
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
        torch.testing.assert_close(
            got.float(), dflash_block_attention(*inputs, **attrs).float(), **TOLERANCE[torch.bfloat16]
        )


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
    got = math.block_attention(
        *inputs[:3],
        cos.contiguous(),
        sin.contiguous(),
        *inputs[5:7],
        torch.tensor([3, 0, 50, 10], dtype=torch.int32),
        **attrs,
    )
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
    cos, sin = (t.contiguous() for t in Rope.build(hd, 1_000_000.0, None, cap + blk))
    attrs = dict(num_heads=nh, num_kv_heads=nkv, head_dim=hd, window=window, qk_norm=1, eps=1e-6)

    k_cache = torch.zeros(b, nkv, cap, hd, dtype=dtype)
    v_cache = torch.zeros(b, nkv, cap, hd, dtype=dtype)
    kv = qkv_all[..., nh * hd :].contiguous()  # k heads then v heads of every token
    first = [n // 2 for n in lens]
    ctx = torch.zeros(b, dtype=torch.int32)
    for step, step_lens in enumerate((first, [n - f for n, f in zip(lens, first)])):
        rows = torch.zeros(b, max(step_lens), kv.shape[-1], dtype=dtype)  # ragged: padding rows stay zero
        for s, (start, count) in enumerate(zip(ctx.tolist(), step_lens)):
            rows[s, :count] = kv[s, start : start + count]
        new_lens = torch.tensor(step_lens, dtype=torch.int32)
        k_cache, v_cache = math.context_kv_append(
            rows, kw, cos, sin, k_cache, v_cache, ctx, new_lens, num_kv_heads=nkv, head_dim=hd, qk_norm=1, eps=1e-6
        )
        ctx = ctx + new_lens
    assert ctx.tolist() == lens

    block = torch.stack([qkv_all[s, n : n + blk] for s, n in enumerate(lens)]).contiguous()
    got = math.block_attention(block, qw, kw, cos, sin, k_cache, v_cache, ctx, **attrs)
    for s, n in enumerate(lens):
        whole = qkv_all[s : s + 1, : n + blk].contiguous()
        empty = torch.zeros(1, nkv, 0, hd, dtype=dtype)
        want = dflash_block_attention(
            whole, qw, kw, cos, sin, empty, empty, torch.zeros(1, dtype=torch.int32), **attrs
        )[0, n:]
        # the appended keys were rounded to T once more than the reference's in-block keys
        tol = {k: 2 * v for k, v in TOLERANCE[dtype].items()}
        torch.testing.assert_close(got[s].float(), want.float(), **tol)


def test_kv_append_leaves_other_rows_alone(math):
    """Only rows n < new_lens[s] at positions ctx_lens[s] + n < S are written; the rest keep their bits."""
    nkv, hd, cap = 1, 64, 8
    g = torch.Generator().manual_seed(4)
    kv = torch.randn(3, 4, 2 * nkv * hd, generator=g)
    cos, sin = (t.contiguous() for t in Rope.build(hd, 1_000_000.0, None, cap))
    k_cache = torch.randn(3, nkv, cap, hd, generator=g)
    v_cache = torch.randn(3, nkv, cap, hd, generator=g)
    k_old, v_old = k_cache.clone(), v_cache.clone()
    ctx = torch.tensor([1, 6, 2], dtype=torch.int32)
    new_lens = torch.tensor([2, 4, 0], dtype=torch.int32)  # sequence 1 runs past S after 2 rows
    k_new, v_new = math.context_kv_append(
        kv,
        torch.ones(hd),
        cos,
        sin,
        k_cache,
        v_cache,
        ctx,
        new_lens,
        num_kv_heads=nkv,
        head_dim=hd,
        qk_norm=0,
        eps=1e-6,
    )
    assert k_new is k_cache and v_new is v_cache  # in place: the plugin never copies the cache
    written = torch.zeros(3, cap, dtype=torch.bool)
    written[0, 1:3] = True
    written[1, 6:8] = True
    assert torch.equal(k_new[:, 0][~written], k_old[:, 0][~written])
    assert torch.equal(v_new[:, 0][~written], v_old[:, 0][~written])
    assert torch.equal(v_new[0, 0, 1:3], kv[0, :2, hd:]) and torch.equal(v_new[1, 0, 6:8], kv[1, :2, hd:])
    assert not torch.equal(k_new[0, 0, 2], k_old[0, 0, 2])


def test_accept_tokens(math):
    """Accepted length = leading drafts equal to the target's argmax; bonus = the next target token."""
    g = torch.Generator().manual_seed(8)
    for blk in (1, 2, 8, 16):
        target = torch.randint(0, 3, (64, blk), generator=g, dtype=torch.int32)
        draft = torch.where(
            torch.rand(64, blk - 1, generator=g) < 0.8,
            target[:, :-1],
            torch.randint(0, 3, (64, blk - 1), generator=g, dtype=torch.int32),
        ).contiguous()
        accepted, bonus = math.accept_tokens(draft, target)
        want = (draft == target[:, :-1]).int().cumprod(dim=1).sum(dim=1)
        assert torch.equal(accepted, want.int())
        assert torch.equal(bonus, target.gather(1, want[:, None].long())[:, 0])
        if blk == 16:
            assert len(set(accepted.tolist())) > 3  # the random draws do exercise several lengths


SPECIAL_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -2.5,
    65504.0,
    65519.0,
    65520.0,
    1e9,
    -1e9,
    6.1e-5,
    5.96e-8,
    2.98e-8,
    2.9802322e-8,
    1e-30,
    3.0e38,
    float("inf"),
    float("-inf"),
    1.00048828125,
    1.00146484375,
    1.00390625,
    1.01171875,
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_host_conversions_match_torch_bit_for_bit(math, dtype):
    """The host build's fp32 <-> fp16/bf16 conversions round exactly like torch (nearest even)."""
    g = torch.Generator().manual_seed(9)
    values = torch.cat(
        [
            torch.tensor(SPECIAL_FLOATS),
            torch.randn(20000, generator=g) * 10.0 ** torch.randint(-9, 6, (20000,), generator=g).float(),
        ]
    )
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
    status = math.lib.dflash_math_block_attention(
        0, 1, 1, 6, 4, 64, 0, 1, 0, 1, ctypes.c_float(1e-6), 0, *(_ptr(t) for _ in range(8)), _ptr(t)
    )
    assert status != 0
    assert "num_heads (6) must be a multiple of num_kv_heads (4)" in math.lib.dflash_math_last_error().decode()


# --- paged layout -----------------------------------------------------------------------------------------


def to_paged(k_cache, v_cache, tokens_per_page, seed, spare_pages=3):
    """The contiguous caches [b, kv, S, d] as a pool [2, pages, tpp, kv, d] + page table [b, 2, max_pages]:
    key and value pages shuffled independently, unused slots NaN (the plugin must never read them)."""
    b, nkv, cap, d = k_cache.shape
    max_pages = -(-cap // tokens_per_page)
    pages = b * max_pages + spare_pages
    g = torch.Generator().manual_seed(seed)
    pool = torch.full((2, pages, tokens_per_page, nkv, d), float("nan"), dtype=k_cache.dtype)
    table = torch.empty(b, 2, max_pages, dtype=torch.int32)
    for which, cache in enumerate((k_cache, v_cache)):
        table[:, which] = torch.randperm(pages, generator=g)[: b * max_pages].view(b, max_pages).int()
        for s in range(b):
            for p in range(cap):
                pool[which, table[s, which, p // tokens_per_page], p % tokens_per_page] = cache[s, :, p]
    return pool, table


def from_paged(pool, table, capacity):
    """The inverse of to_paged: contiguous [b, kv, capacity, d] caches read through the page table."""
    tpp = pool.shape[2]
    pos = torch.arange(capacity)
    caches = []
    for which in range(2):
        pages = table[:, which, pos // tpp].long()  # [b, capacity]
        caches.append(pool[which][pages, pos % tpp].permute(0, 2, 1, 3).contiguous())
    return caches


@pytest.mark.parametrize("dtype", list(DTYPE_CODE), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("tokens_per_page,window,keys_per_split", [(16, 0, 0), (5, 0, 32), (64, 7, 64)])
def test_paged_block_attention_equals_contiguous(math, dtype, tokens_per_page, window, keys_per_split):
    """DFlashPagedBlockAttention reads the same keys through the page table: bit-identical outputs to the
    contiguous layout (same math, same order), and within tolerance of the reference."""
    cache = 320
    inputs = make_inputs(dtype, 3, 8, 8, 2, 64, cache, [0, 319, 150], seed=21)
    attrs = dict(num_heads=8, num_kv_heads=2, head_dim=64, window=window, qk_norm=1, eps=1e-6)
    pool, table = to_paged(inputs[5], inputs[6], tokens_per_page, seed=4)
    got = math.paged_block_attention(*inputs[:5], pool, table, inputs[7], **attrs, keys_per_split=keys_per_split)
    assert torch.equal(got, math.block_attention(*inputs, **attrs, keys_per_split=keys_per_split))
    torch.testing.assert_close(got.float(), dflash_block_attention(*inputs, **attrs).float(), **TOLERANCE[dtype])


def test_paged_block_attention_missing_page_gives_nan(math):
    """A page id outside the pool for a position the context uses makes that sequence NaN, the others exact."""
    inputs = make_inputs(torch.float32, 3, 4, 4, 1, 64, 40, [33, 33, 8], seed=22)
    attrs = dict(num_heads=4, num_kv_heads=1, head_dim=64, window=0, qk_norm=1, eps=1e-6)
    pool, table = to_paged(inputs[5], inputs[6], 8, seed=5)
    table[0, 1, 4] = -1  # sequence 0: no value page for positions 32..39, which it uses
    table[2, 0, 3] = pool.shape[1]  # sequence 2: a bad page past its context (8), never read
    got = math.paged_block_attention(*inputs[:5], pool, table, inputs[7], **attrs)
    assert got[0].isnan().all() and not got[1:].isnan().any()
    torch.testing.assert_close(got[1:], dflash_block_attention(*inputs, **attrs)[1:], **TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", list(DTYPE_CODE), ids=lambda d: str(d).split(".")[-1])
def test_paged_kv_append_equals_contiguous(math, dtype):
    """DFlashPagedKVAppend writes the same bits as DFlashContextKVAppend, through the page table, and
    nothing else in the pool."""
    nkv, hd, cap, tpp = 2, 128, 24, 6
    g = torch.Generator().manual_seed(6)
    kv = torch.randn(3, 5, 2 * nkv * hd, generator=g).to(dtype)
    kw = (1 + 0.2 * torch.randn(hd, generator=g)).to(dtype)
    cos, sin = (t.contiguous() for t in Rope.build(hd, 1_000_000.0, None, cap))
    k_cache = torch.randn(3, nkv, cap, hd, generator=g).to(dtype)
    v_cache = torch.randn(3, nkv, cap, hd, generator=g).to(dtype)
    pool, table = to_paged(k_cache, v_cache, tpp, seed=7)
    spare = torch.ones(pool.shape[1], dtype=torch.bool)
    spare[table.flatten().long()] = False
    untouched = pool[:, spare].clone()
    ctx = torch.tensor([0, 21, 9], dtype=torch.int32)
    new_lens = torch.tensor([5, 5, 3], dtype=torch.int32)  # sequence 1 runs past the capacity after 3 rows
    args = dict(num_kv_heads=nkv, head_dim=hd, qk_norm=1, eps=1e-6)
    math.context_kv_append(kv, kw, cos, sin, k_cache, v_cache, ctx, new_lens, **args)
    assert math.paged_kv_append(kv, kw, cos, sin, pool, table, ctx, new_lens, **args) is pool
    k_paged, v_paged = from_paged(pool, table, cap)
    assert torch.equal(k_paged, k_cache) and torch.equal(v_paged, v_cache)
    assert torch.equal(torch.nan_to_num(pool[:, spare], 7.0), torch.nan_to_num(untouched, 7.0))


# --- planning (SM count, batch, actual lengths) and devices ----------------------------------------------


def test_plan_splits_only_to_fill_the_device(math, device):
    """Splits come from the SM count and the grid (batch x kv heads x row tiles), not from the cache
    capacity: at batch 64 nothing is split and no workspace is used; at batch 1 the keys are split."""
    device(H100)
    qwen = dict(num_heads=32, num_kv_heads=8, head_dim=128)
    big = math.plan(64, 16, **qwen, cache=32768)
    assert big["num_splits"] == 1 and big["workspace"] == 0 and big["rows_per_tile"] == 64
    assert math.plan(1, 16, **qwen, cache=4096)["num_splits"] == 17  # ceil(4112 keys / 256)
    assert math.plan(1, 16, **qwen, cache=32768)["num_splits"] == 32  # 8 CTAs unsplit: 132 SMs x 2 // 8 = 33 > 32
    mid = math.plan(8, 16, **qwen, cache=4096)
    assert mid["num_splits"] == 4  # 64 CTAs unsplit: 264 // 64
    short = math.plan(1, 16, **qwen, cache=200)
    assert short["num_splits"] == 1  # 216 keys: fewer than 256 keys per split would not pay
    # What getWorkspaceSize reserves for a profile up to batch 64 x 32k (was 545 MB): bounded by
    # 256 SMs x 2 CTAs x 64 rows of (head_dim + 2) fp32 partials, whatever the batch and context.
    bound = 256 * 2 * 64 * 130 * 4 + 256 * 4
    assert 0 < big["max_workspace"] <= bound and big["max_workspace"] < 20e6


def test_consumer_device_gets_smaller_row_tiles(math, device):
    """99 KB of shared memory per CTA (sm_120 consumer parts): 64-row tiles (106 KB) do not fit, 32-row
    tiles do, and the result is the same attention."""
    device(RTX_5090)
    plan = math.plan(2, 16, 32, 8, 128, 1024)
    assert plan["rows_per_tile"] == 32 and plan["row_tiles"] == 2
    smem = (2 * 32 * 129 + 2 * 32 * 129 + 32 * 33 + 3 * 32 + 1) * 4
    assert smem <= 99 * 1024 < (2 * 64 * 129 + 2 * 32 * 129 + 64 * 33 + 3 * 64 + 1) * 4
    inputs = make_inputs(torch.float16, 2, 16, 8, 2, 128, 300, [300, 41], seed=23)
    attrs = dict(num_heads=8, num_kv_heads=2, head_dim=128, window=0, qk_norm=1, eps=1e-6)
    got = math.block_attention(*inputs, **attrs, keys_per_split=64)
    torch.testing.assert_close(
        got.float(), dflash_block_attention(*inputs, **attrs).float(), **TOLERANCE[torch.float16]
    )


def test_unsupported_device_is_refused(math, device):
    device(T4)
    with pytest.raises(AssertionError, match=r"compute capability 7\.5 is not supported: the kernels need 8\.0"):
        math.plan(1, 16, 32, 8, 128, 1024)
    inputs = make_inputs(torch.float32, 1, 2, 2, 1, 64, 8, [3], seed=1)
    with pytest.raises(AssertionError, match="compute capability 7.5"):
        math.block_attention(*inputs, num_heads=2, num_kv_heads=1, head_dim=64, window=0, qk_norm=1, eps=1e-6)
    device((8, 0, 108, 1024, 1024))  # a device with too little shared memory for even one row
    with pytest.raises(AssertionError, match="allows 1024 bytes of shared memory per CTA; head_dim 128 needs"):
        math.plan(1, 16, 32, 8, 128, 1024)


def test_ctas_exit_early_and_the_last_split_merges(math, device):
    """Each CTA splits its own sequence's actual key range: a short sequence uses one split and the CTAs of
    its other splits exit before loading or norming anything; the last CTA of each split row tile merges
    (no second kernel)."""
    device(H100)
    inputs = make_inputs(torch.float32, 2, 16, 8, 2, 64, 2000, [0, 2000], seed=24)
    attrs = dict(num_heads=8, num_kv_heads=2, head_dim=64, window=0, qk_norm=1, eps=1e-6)
    plan = math.plan(2, 16, 8, 2, 64, 2000)
    assert plan["num_splits"] == 8 and plan["row_tiles"] == 1  # ceil(2016 / 256) = 8 splits launched
    got = math.block_attention(*inputs, **attrs)
    stats = math.last_stats()
    # 2 sequences x 2 kv heads x 8 splits launched; sequence 0 (16 keys) works in 1 split, sequence 1 in 8
    assert stats == dict(ctas=32, ctas_with_work=2 * (1 + 8), merges=2)
    torch.testing.assert_close(got, dflash_block_attention(*inputs, **attrs), **TOLERANCE[torch.float32])
