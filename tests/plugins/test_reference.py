"""The block-attention reference vs a naive per-token loop written from the op contract, vs the drafter."""

from __future__ import annotations

import math

import pytest
import torch

from dflash_trt.errors import UserError
from dflash_trt.models.layers import Rope
from dflash_trt.plugins.contracts import ACCEPT_TOKENS, BLOCK_ATTENTION, CONTRACTS
from dflash_trt.plugins.reference import dflash_block_attention

# |reference - float64 loop| bounds: the reference does fp32 math, then rounds the output to T once.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # atol = rtol


def make_inputs(b, blk, nh, nkv, d, ctx, lens, dtype, max_pos=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    cos, sin = Rope.build(d, 10_000.0, None, max_pos or ctx + blk)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return (
        (rnd(b, blk, (nh + 2 * nkv) * d) * 2).to(dtype),
        (1 + 0.2 * rnd(d)).to(dtype),
        (1 + 0.2 * rnd(d)).to(dtype),
        cos,
        sin,
        rnd(b, nkv, ctx, d).to(dtype),
        rnd(b, nkv, ctx, d).to(dtype),
        torch.tensor(lens, dtype=torch.int32),
    )


def naive(
    qkv, qw, kw, cos, sin, k_cache, v_cache, ctx_lens, *, num_heads, num_kv_heads, head_dim, window, qk_norm, eps
):
    """Literal reading of the contract: loops over sequences, queries, heads and keys, float64."""
    nh, nkv, d = num_heads, num_kv_heads, head_dim
    b, blk, _ = qkv.shape
    x = qkv.double()
    out = torch.zeros(b, blk, nh * d, dtype=torch.float64)

    def norm(v, w):
        return v / math.sqrt(float((v * v).mean()) + eps) * w.double() if qk_norm else v

    def rope(v, p):
        c, s = cos[p].double(), sin[p].double()
        v1, v2 = v[: d // 2], v[d // 2 :]
        return torch.cat([v1 * c - v2 * s, v2 * c + v1 * s])

    for s in range(b):
        n = int(ctx_lens[s])
        for i in range(blk):
            p_i = n + i
            for h in range(nh):
                kv = h // (nh // nkv)
                q = rope(norm(x[s, i, h * d : (h + 1) * d], qw), p_i)
                keys, vals = [], []
                for j in range(n):  # context keys
                    if window == 0 or abs(p_i - j) < window:
                        keys.append(k_cache[s, kv, j].double())
                        vals.append(v_cache[s, kv, j].double())
                for jj in range(blk):  # block keys, bidirectional
                    if window == 0 or abs(p_i - (n + jj)) < window:
                        k_off, v_off = (nh + kv) * d, (nh + nkv + kv) * d
                        keys.append(rope(norm(x[s, jj, k_off : k_off + d], kw), n + jj))
                        vals.append(x[s, jj, v_off : v_off + d])
                scores = torch.stack([q @ k for k in keys]) / math.sqrt(d)
                out[s, i, h * d : (h + 1) * d] = torch.softmax(scores, 0) @ torch.stack(vals)
    return out


CASES = [  # (num_heads, num_kv_heads, head_dim, window, qk_norm): GQA groups 1/4/8, both head dims
    (2, 2, 64, 0, 1),
    (8, 2, 64, 0, 1),
    (8, 1, 64, 0, 1),
    (2, 2, 128, 0, 1),
    (8, 2, 128, 0, 0),
    (8, 1, 128, 0, 1),
    (8, 2, 64, 3, 1),
    (8, 1, 128, 7, 1),
    (2, 2, 64, 1, 0),
    (8, 1, 64, 100, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("nh,nkv,d,window,qk_norm", CASES)
def test_matches_naive_loop(nh, nkv, d, window, qk_norm, dtype):
    lens = [0, 9, 4]  # ragged: empty context, full capacity, partial
    inputs = make_inputs(3, 4, nh, nkv, d, 9, lens, dtype)
    attrs = dict(num_heads=nh, num_kv_heads=nkv, head_dim=d, window=window, qk_norm=qk_norm, eps=1e-6)
    got = dflash_block_attention(*inputs, **attrs)
    assert got.dtype == dtype and got.shape == (3, 4, nh * d)
    want = naive(*inputs, **attrs)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_padding_slots_never_read():
    """Cache entries at or beyond ctx_lens (even NaN) do not affect the output."""
    inputs = list(make_inputs(2, 4, 8, 2, 64, 12, [3, 0], torch.float32))
    attrs = BLOCK_ATTENTION.resolve_attrs(num_heads=8, num_kv_heads=2, head_dim=64)
    clean = dflash_block_attention(*inputs, **attrs)
    for i in (5, 6):
        inputs[i] = inputs[i].clone()
        inputs[i][0, :, 3:] = float("nan")
        inputs[i][1] = float("inf")
    torch.testing.assert_close(dflash_block_attention(*inputs, **attrs), clean, atol=0, rtol=0)


def test_window_one_is_self_attention_on_values():
    """window=1 leaves each query only its own block key, so the output is its own v."""
    nh, nkv, d = 8, 2, 64
    inputs = make_inputs(2, 4, nh, nkv, d, 6, [6, 2], torch.float32)
    out = dflash_block_attention(*inputs, num_heads=nh, num_kv_heads=nkv, head_dim=d, window=1, qk_norm=1, eps=1e-6)
    v = inputs[0][..., (nh + nkv) * d :].unflatten(-1, (nkv, d))
    torch.testing.assert_close(out.unflatten(-1, (nh, d)), v.repeat_interleave(nh // nkv, dim=2))


def test_opcheck_custom_op():
    """The op's schema, fake kernel and eager kernel agree (torch.library.opcheck)."""
    inputs = make_inputs(2, 4, 8, 2, 64, 6, [1, 6], torch.float16)
    attrs = BLOCK_ATTENTION.resolve_attrs(num_heads=8, num_kv_heads=2, head_dim=64, window=3)
    torch.library.opcheck(torch.ops.dflash_trt.block_attention.default, inputs, attrs)


@pytest.mark.parametrize(
    "attrs,field",
    [
        (dict(num_heads=8, num_kv_heads=2, head_dim=96), "head_dim"),
        (dict(num_heads=8, num_kv_heads=3, head_dim=64), "multiple of num_kv_heads"),
        (dict(num_heads=8, num_kv_heads=2, head_dim=64, qk_norm=2), "qk_norm"),
        (dict(num_heads=8, num_kv_heads=2, head_dim=64, window=-1), "window"),
        (dict(num_heads=8, num_kv_heads=2, head_dim=64, eps=-1e-6), "eps"),
        (dict(num_heads=8, num_kv_heads=2, head_dim=64, eps=float("inf")), "eps"),
        (dict(num_heads=8, num_kv_heads=2, head_dim=64.0), "head_dim"),
        (dict(num_heads=8, head_dim=64), "num_kv_heads"),
        (dict(num_heads=8, num_kv_heads=2, head_dim=64, windw=4), "windw"),
    ],
)
def test_bad_attributes_are_user_errors(attrs, field):
    with pytest.raises(UserError, match=field) as err:
        BLOCK_ATTENTION.resolve_attrs(**attrs)
    assert "\n" not in str(err.value)


def test_contract_violations_rejected():
    attrs = BLOCK_ATTENTION.resolve_attrs(num_heads=8, num_kv_heads=2, head_dim=64)
    good = make_inputs(2, 4, 8, 2, 64, 6, [1, 6], torch.float32, max_pos=10)
    bad = {
        0: (good[0][..., :-1], "qkv"),  # wrong fused width
        3: (good[3].half(), "rope_cos"),  # tables must be fp32
        6: (good[6].half(), "v_cache"),  # T must agree across inputs
        7: (good[7].long(), "ctx_lens"),  # int32 only
    }
    for index, (tensor, name) in bad.items():
        args = list(good)
        args[index] = tensor
        with pytest.raises(ValueError, match=name):
            dflash_block_attention(*args, **attrs)
    args = list(good)
    args[7] = torch.tensor([7, 0], dtype=torch.int32)
    with pytest.raises(ValueError, match="ctx_lens"):
        dflash_block_attention(*args, **attrs)
    args[7] = torch.tensor([6, 0], dtype=torch.int32)
    args[3], args[4] = good[3][:9], good[4][:9]  # positions 6..9 need 10 table rows
    with pytest.raises(ValueError, match="RoPE table"):
        dflash_block_attention(*args, **attrs)


def test_contract_markdown_is_in_readme():
    """dflash_trt/plugins/README.md embeds every contract exactly as the code states it."""
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "dflash_trt" / "plugins" / "README.md").read_text()
    for op in CONTRACTS.values():
        assert op.to_markdown() in readme, f"{op.name}: regenerate with python -m dflash_trt.plugins.contracts"


def test_contract_binds_symbols_before_checking():
    """A dimension may use a symbol that a later input binds (draft_tokens [b, B - 1], target_tokens [b, B])."""
    symbols, types = ACCEPT_TOKENS.bind_inputs([(3, 15), (3, 16)], ["int32", "int32"], {})
    assert symbols == {"b": 3, "B": 16} and types == {}
    assert ACCEPT_TOKENS.output_shapes(symbols, {}) == [[3], [3]]
    with pytest.raises(ValueError, match=r"draft_tokens.*\[3, 14\]"):
        ACCEPT_TOKENS.bind_inputs([(3, 15), (3, 15)], ["int32", "int32"], {})


# --- the project's PyTorch drafter and an independent numpy implementation ---------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "nh,nkv,d,window,lens",
    [
        (8, 8, 64, 0, [0, 5, 13]),
        (8, 2, 128, 0, [13, 1]),
        (8, 1, 64, 4, [7, 0, 13]),
        (16, 2, 64, 9, [2, 13]),
    ],
)
def test_matches_independent_numpy_implementation(nh, nkv, d, window, lens, dtype):
    import numpy_reference

    blk, ctx, eps = 5, 13, 1e-6
    inputs = make_inputs(len(lens), blk, nh, nkv, d, ctx, lens, dtype)
    attrs = dict(num_heads=nh, num_kv_heads=nkv, head_dim=d, window=window, qk_norm=1, eps=eps)
    got = dflash_block_attention(*inputs, **attrs)
    want = numpy_reference.block_attention(*(t.float() if t.is_floating_point() else t for t in inputs), **attrs)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), torch.from_numpy(want).float(), atol=tol, rtol=tol)


def test_replaces_drafter_attention_core():
    """wo(op(wqkv(x))) equals the drafter's DraftAttention forward: same qkv layout, norms and RoPE."""
    from dflash_trt.config import DrafterConfig
    from dflash_trt.models.drafter import DraftAttention
    from dflash_trt.models.layers import Keys, Rope

    torch.manual_seed(0)
    nh, nkv, d, blk, ctx, window = 8, 2, 64, 6, 10, 5
    cfg = DrafterConfig(
        hidden_size=96,
        intermediate_size=128,
        num_layers=1,
        num_heads=nh,
        num_kv_heads=nkv,
        head_dim=d,
        block_size=blk,
        mask_token_id=0,
        target_layer_ids=(0,),
        num_target_layers=2,
        rms_norm_eps=1e-5,
    )
    attn = DraftAttention(cfg, window).eval()
    for norm in (attn.q_norm, attn.k_norm):
        norm.weight.data.uniform_(0.5, 1.5)
    lens = torch.tensor([10, 0, 4])
    k_cache, v_cache = torch.randn(3, nkv, ctx, d), torch.randn(3, nkv, ctx, d)
    rope = Rope.build(d, 10_000.0, None, ctx + blk)
    pos = lens[:, None] + torch.arange(blk)
    cos, sin = rope.at(pos)
    x = torch.randn(3, blk, 96)
    with torch.no_grad():
        want = attn(x, Keys.cached(k_cache, v_cache, lens), pos, cos, sin)
        core = dflash_block_attention(
            attn.wqkv(x),
            attn.q_norm.weight,
            attn.k_norm.weight,
            rope.cos,
            rope.sin,
            k_cache,
            v_cache,
            lens.int(),
            num_heads=nh,
            num_kv_heads=nkv,
            head_dim=d,
            window=window,
            qk_norm=1,
            eps=cfg.rms_norm_eps,
        )
        got = attn.wo(core)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
