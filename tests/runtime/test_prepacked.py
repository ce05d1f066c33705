"""`runtime.prepacked`: fp32 linears that run 4+ rows on oneDNN with a prepacked weight and 1-3 rows on MKL or
oneDNN (whichever this machine runs faster) equal a float64 product to fp32 rounding at every row count either way,
keep their forward hooks (tensor-parallel collectives), and are what the torch runners use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dflash_trt.pipeline import load_pipeline, torch_runners
from dflash_trt.runtime import prepacked
from dflash_trt.runtime.loading import load_drafter, load_target
from tiny import hf_config, save_hf_target, save_zlab_drafter

pytestmark = pytest.mark.skipif(not prepacked.available(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize("from_rows", [1, prepacked.ONEDNN_FROM_ROWS])
@pytest.mark.parametrize("shape", [(64, 32, True), (96, 576, False), (1536, 576, False)])
def test_every_row_count_equals_a_float64_product(shape, from_rows):
    out_features, in_features, bias = shape
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias)
    packed = prepacked.PrepackedLinear(linear)
    packed.from_rows = from_rows
    for rows in (1, 2, 3, 4, 5, 8, 17, 64):
        x = torch.randn(2, rows, in_features)
        exact = x.double() @ linear.weight.double().T + (linear.bias.double() if bias else 0)
        with torch.inference_mode():
            got = packed(x)
        assert got.shape == exact.shape and got.dtype == torch.float32
        assert ((got.double() - exact).abs().max() / exact.abs().max()).item() < 1e-5, rows


def test_forward_hooks_move_with_the_layer_and_only_fp32_linears_are_replaced():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8).to(torch.bfloat16), nn.Embedding(4, 8))
    seen = []
    model[0].register_forward_hook(lambda _m, _i, out: seen.append(out.shape) or out * 2)
    x = torch.randn(5, 8)
    want = model[0](x)
    prepacked.prepack_linears(model)
    assert isinstance(model[0], prepacked.PrepackedLinear) and type(model[1]) is nn.Linear
    with torch.inference_mode():
        torch.testing.assert_close(model[0](x), want, rtol=1e-5, atol=1e-5)
    assert seen == [torch.Size([5, 8])] * 2


def test_torch_runners_run_prepacked_linears(tmp_path):
    target = save_hf_target(tmp_path / "t", "qwen3")
    drafter = save_zlab_drafter(tmp_path / "d", hf_config("qwen3"), block_size=4, layer_ids=(0, 2))
    pipe = load_pipeline(target, drafter)
    for model in (pipe.target.model, pipe.drafter.model):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear | prepacked.PrepackedLinear)]
        assert linears and all(isinstance(m, prepacked.PrepackedLinear) for m in linears)
        # one measured choice per model: oneDNN from 1 row where it beats MKL there, else from 4
        assert len({m.from_rows for m in linears}) == 1 and linears[0].from_rows in (1, prepacked.ONEDNN_FROM_ROWS)


def test_drafts_run_the_targets_packed_head_or_a_cast_copy_of_it(tmp_path):
    """The drafter's LM head is the target's prepacked head itself in fp32 (it once kept the plain linear the
    target had before packing, on MKL: 3.5x slower at 5 rows on an AMD EPYC), or a private bf16 copy."""
    target_dir = save_hf_target(tmp_path / "t", "qwen3")
    drafter_dir = save_zlab_drafter(tmp_path / "d", hf_config("qwen3"), block_size=4, layer_ids=(0, 2))
    for head_dtype in (None, torch.bfloat16):
        model = load_target(target_dir)
        target, drafter = torch_runners(model, load_drafter(drafter_dir, model.cfg), head_dtype)
        if head_dtype is None:
            assert drafter.head is model.lm_head and isinstance(drafter.head, prepacked.PrepackedLinear)
        else:
            assert type(drafter.head) is nn.Linear and drafter.head.weight.dtype == torch.bfloat16
            x = torch.randn(3, model.cfg.hidden_size)
            with torch.inference_mode():
                torch.testing.assert_close(drafter.head(x.bfloat16()).float(), model.lm_head(x), rtol=0.05, atol=0.05)
