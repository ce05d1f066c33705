"""Converted tensor names against a table written out by hand, independent of `dflash_trt.checkpoint.layout`.

The expected names follow TensorRT-LLM's Llama/Qwen converters (`tensorrt_llm/models/{llama,qwen}/convert.py`):
`vocab_embedding`, fused `attention.qkv` = [q; k; v] rows, `attention.dense` = o_proj, GatedMLP's
`mlp.fc` = gate_proj (the activated branch), `mlp.gate` = up_proj, `mlp.proj` = down_proj,
`input_layernorm`, `post_layernorm`, Qwen3's `attention.q_layernorm` / `k_layernorm`, `ln_f`, `lm_head`;
the drafter's `dflash.fc` / `dflash.hidden_norm`. Sources are written by transformers (targets) and by
z-lab's own `DFlashDraftModel` (drafter), in float32, and converted at tp 1 with the auto dtype, so every
output tensor must equal its HF source bytes exactly. Nothing here is computed from the layout module,
so swapping a name in the layout (e.g. mlp.fc / mlp.gate) fails these tests.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from dflash_trt.cli import main
from tiny import save_zlab_drafter

from .conftest import read_source

# One decoder layer of each target family: TensorRT-LLM name -> HF source tensors, in row order.
LLAMA_LAYER = {
    "transformer.layers.{i}.attention.qkv.weight": (
        "model.layers.{i}.self_attn.q_proj.weight",
        "model.layers.{i}.self_attn.k_proj.weight",
        "model.layers.{i}.self_attn.v_proj.weight",
    ),
    "transformer.layers.{i}.attention.dense.weight": ("model.layers.{i}.self_attn.o_proj.weight",),
    "transformer.layers.{i}.mlp.fc.weight": ("model.layers.{i}.mlp.gate_proj.weight",),
    "transformer.layers.{i}.mlp.gate.weight": ("model.layers.{i}.mlp.up_proj.weight",),
    "transformer.layers.{i}.mlp.proj.weight": ("model.layers.{i}.mlp.down_proj.weight",),
    "transformer.layers.{i}.input_layernorm.weight": ("model.layers.{i}.input_layernorm.weight",),
    "transformer.layers.{i}.post_layernorm.weight": ("model.layers.{i}.post_attention_layernorm.weight",),
}
QWEN2_LAYER = {
    **LLAMA_LAYER,
    "transformer.layers.{i}.attention.qkv.bias": (
        "model.layers.{i}.self_attn.q_proj.bias",
        "model.layers.{i}.self_attn.k_proj.bias",
        "model.layers.{i}.self_attn.v_proj.bias",
    ),
}
QWEN3_LAYER = {
    **LLAMA_LAYER,
    "transformer.layers.{i}.attention.q_layernorm.weight": ("model.layers.{i}.self_attn.q_norm.weight",),
    "transformer.layers.{i}.attention.k_layernorm.weight": ("model.layers.{i}.self_attn.k_norm.weight",),
}
DRAFTER_LAYER = {
    "transformer.layers.{i}.attention.qkv.weight": (
        "layers.{i}.self_attn.q_proj.weight",
        "layers.{i}.self_attn.k_proj.weight",
        "layers.{i}.self_attn.v_proj.weight",
    ),
    "transformer.layers.{i}.attention.q_layernorm.weight": ("layers.{i}.self_attn.q_norm.weight",),
    "transformer.layers.{i}.attention.k_layernorm.weight": ("layers.{i}.self_attn.k_norm.weight",),
    "transformer.layers.{i}.attention.dense.weight": ("layers.{i}.self_attn.o_proj.weight",),
    "transformer.layers.{i}.mlp.fc.weight": ("layers.{i}.mlp.gate_proj.weight",),
    "transformer.layers.{i}.mlp.gate.weight": ("layers.{i}.mlp.up_proj.weight",),
    "transformer.layers.{i}.mlp.proj.weight": ("layers.{i}.mlp.down_proj.weight",),
    "transformer.layers.{i}.input_layernorm.weight": ("layers.{i}.input_layernorm.weight",),
    "transformer.layers.{i}.post_layernorm.weight": ("layers.{i}.post_attention_layernorm.weight",),
}
LAYERS = {"llama": LLAMA_LAYER, "llama-tied": LLAMA_LAYER, "qwen2": QWEN2_LAYER, "qwen3": QWEN3_LAYER}


def _layers(layer: dict[str, tuple[str, ...]], n: int) -> dict[str, tuple[str, ...]]:
    return {k.format(i=i): tuple(s.format(i=i) for s in v) for i in range(n) for k, v in layer.items()}


def expected_target(family: str, num_layers: int) -> dict[str, tuple[str, ...]]:
    head = "model.embed_tokens.weight" if family.endswith("tied") else "lm_head.weight"
    return {
        "transformer.vocab_embedding.weight": ("model.embed_tokens.weight",),
        **_layers(LAYERS[family], num_layers),
        "transformer.ln_f.weight": ("model.norm.weight",),
        "lm_head.weight": (head,),
    }


def expected_drafter(num_layers: int) -> dict[str, tuple[str, ...]]:
    return {
        "dflash.fc.weight": ("fc.weight",),
        "dflash.hidden_norm.weight": ("hidden_norm.weight",),
        **_layers(DRAFTER_LAYER, num_layers),
        "transformer.ln_f.weight": ("norm.weight",),
    }


@pytest.fixture(scope="module")
def zlab_drafter(tiny_sources, tmp_path_factory):
    """A float32 drafter for the tiny targets, written by z-lab's `DFlashDraftModel.save_pretrained`."""
    target = json.loads((tiny_sources["llama"] / "config.json").read_text())
    return save_zlab_drafter(tmp_path_factory.mktemp("zlab") / "drafter", target, layer_ids=(0, 2), mask_token_id=249)


def _read(path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)


def _check(converted: dict[str, torch.Tensor], source: dict[str, torch.Tensor], expected: dict[str, tuple[str, ...]]):
    assert sorted(converted) == sorted(expected)
    for name, sources in expected.items():
        want = torch.cat([source[s] for s in sources])
        got = converted[name]
        assert got.dtype == want.dtype == torch.float32, name
        assert got.shape == want.shape, name
        assert got.contiguous().view(torch.uint8).equal(want.contiguous().view(torch.uint8)), f"{name} != {sources}"
    # the table uses every HF weight (a tied model stores no lm_head)
    assert {s for sources in expected.values() for s in sources} == set(source)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "llama-tied"])
def test_converted_tensors_come_from_the_hand_written_hf_sources(tiny_sources, zlab_drafter, tmp_path, family):
    out = tmp_path / "ckpt"
    cmd = ["convert", "--target", str(tiny_sources[family]), "--drafter", str(zlab_drafter), "--output", str(out)]
    assert main([*cmd, "--tp", "1"]) == 0
    layers = json.loads((tiny_sources[family] / "config.json").read_text())["num_hidden_layers"]
    _check(
        _read(out / "target" / "rank0.safetensors"), read_source(tiny_sources[family]), expected_target(family, layers)
    )
    drafter_layers = json.loads((zlab_drafter / "config.json").read_text())["num_hidden_layers"]
    _check(_read(out / "drafter" / "rank0.safetensors"), read_source(zlab_drafter), expected_drafter(drafter_layers))
