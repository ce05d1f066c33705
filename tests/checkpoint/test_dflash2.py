"""DFlash2 drafters through the weight table: names written by hand, convert at tp 1/2 (conv and selector
tensors replicated), converted loading equals HF loading, z-lab export round trip, and aliased codebooks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dflash_trt.checkpoint.layout import drafter_weights, hf_from_internal, internal_from_hf, internal_from_trtllm
from dflash_trt.cli import main
from dflash_trt.config import DrafterConfig, TargetConfig
from dflash_trt.models.drafter2 import DFlash2Drafter
from dflash_trt.parallel.comm import Mapping
from dflash_trt.parallel.tensor_parallel import build_drafter
from dflash_trt.pipeline import torch_runners
from dflash_trt.runtime.loading import load_converted, load_drafter, load_target, read_tensors
from tiny_dflash2 import save_zlab_drafter2

from .conftest import TINY, read_source

# DFlash2's tensors beyond v1's: TensorRT-LLM name -> z-lab name, written out by hand.
DFLASH2_LAYER = {
    "transformer.layers.{i}.attention_conv.base_kernel": "layers.{i}.attention_conv.base_kernel",
    "transformer.layers.{i}.attention_conv.kernel_projection.weight": "layers.{i}.attention_conv.kernel_projection.weight",  # noqa: E501
    "transformer.layers.{i}.mlp_conv.base_kernel": "layers.{i}.mlp_conv.base_kernel",
    "transformer.layers.{i}.mlp_conv.kernel_projection.weight": "layers.{i}.mlp_conv.kernel_projection.weight",
}
SELECTOR = {
    "dflash.candidate_selector.predecessor_codebook.weight": "candidate_selector.predecessor_codebook.weight",
    "dflash.candidate_selector.successor_codebook.weight": "candidate_selector.successor_codebook.weight",
    "dflash.candidate_selector.hidden_projection.weight": "candidate_selector.hidden_projection.weight",
}


@pytest.fixture(scope="module")
def drafter2(tmp_path_factory):
    """A DFlash2 drafter for the tiny Qwen3 source (vocab 250, hidden 64), written by z-lab's class."""
    return save_zlab_drafter2(
        tmp_path_factory.mktemp("dflash2") / "d",
        TINY,
        heads=8,
        kv_heads=2,
        block_size=4,
        kernel=3,
        group=8,
        top_k=6,
        rank=8,
        mask_token_id=249,
        softcap=4.0,
    )


def _read(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)


@pytest.mark.parametrize("tp", [1, 2])
def test_convert_writes_replicated_conv_and_selector(tiny_sources, drafter2, tmp_path, tp):
    out = tmp_path / "ckpt"
    assert (
        main(
            [
                "convert",
                "--target",
                str(tiny_sources["qwen3"]),
                "--drafter",
                str(drafter2),
                "--output",
                str(out),
                "--tp",
                str(tp),
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "drafter" / "config.json").read_text())
    assert cfg["architecture"] == "DFlash2DraftModel"
    assert (cfg["dflash"]["conv_kernel_size"], cfg["dflash"]["selector_top_k"]) == (3, 6)
    src = read_source(drafter2)
    expected = {trt.format(i=i): src[hf.format(i=i)] for i in range(2) for trt, hf in DFLASH2_LAYER.items()}
    expected |= {trt: src[hf] for trt, hf in SELECTOR.items()}
    for rank in range(tp):
        got = _read(out / "drafter" / f"rank{rank}.safetensors")
        for name, tensor in expected.items():
            assert torch.equal(got[name], tensor), (rank, name)  # every rank holds the whole tensor
        d_cfg = DrafterConfig.from_dir(drafter2)
        model = build_drafter(d_cfg, Mapping(tp, rank))
        assert isinstance(model, DFlash2Drafter)
        model.load_state_dict(internal_from_trtllm(drafter_weights(d_cfg), got), strict=True)


def test_converted_dflash2_drafts_like_the_hf_directory(tiny_sources, drafter2, tmp_path):
    out = tmp_path / "ckpt"
    assert (
        main(
            [
                "convert",
                "--target",
                str(tiny_sources["qwen3"]),
                "--drafter",
                str(drafter2),
                "--output",
                str(out),
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    target = load_target(tiny_sources["qwen3"])
    pairs = [torch_runners(target, load_drafter(drafter2, target.cfg))]
    c_target, c_drafter, _ = load_converted(out)
    pairs.append(torch_runners(c_target, c_drafter))
    drafts = []
    for t, d in pairs:
        t.reset(2, 32)
        d.reset(2, 32)
        with torch.no_grad():
            _, features = t.prefill([[3, 14, 15, 92, 65], [35, 89, 79]])
            d.append_context(features, torch.tensor([5, 3]))
            drafts.append(d.draft(torch.tensor([[7, 249, 249, 249], [11, 249, 249, 249]])))
    assert torch.equal(drafts[0], drafts[1])
    assert torch.isfinite(drafts[0]).sum() == 2 * 3 * 6  # top-6 candidates per mask position


def test_dflash2_export_round_trip_and_codebook_alias(drafter2, tmp_path):
    """hf_from_internal inverts internal_from_hf for DFlash2; codebooks saved without `.weight` (as some
    published checkpoints are, remapped by z-lab's from_pretrained) load too."""
    cfg = DrafterConfig.from_dir(drafter2)
    src = read_tensors(drafter2)
    state = internal_from_hf(drafter_weights(cfg), src.__getitem__, drafter2)
    back = hf_from_internal(drafter_weights(cfg), state)
    assert back.keys() == src.keys() and all(torch.equal(back[k], src[k]) for k in src)
    aliased = tmp_path / "aliased"
    aliased.mkdir()
    (aliased / "config.json").write_text((drafter2 / "config.json").read_text())
    save_file(
        {k.removesuffix(".weight") if "codebook" in k else k: v for k, v in src.items()},
        str(aliased / "model.safetensors"),
    )
    target_cfg = TargetConfig.from_hf({**TINY, "architectures": ["Qwen3ForCausalLM"]})
    loaded = load_drafter(aliased, target_cfg)
    assert torch.equal(loaded.selector.pred.weight, src["candidate_selector.predecessor_codebook.weight"])
