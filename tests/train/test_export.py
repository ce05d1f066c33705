"""A trained checkpoint is a z-lab checkpoint: the z-lab package loads it and drafts the same logits."""

from __future__ import annotations

import json

import torch
from dflash.model import DFlashDraftModel  # z-lab's package: installed by the set-up, a missing peer must fail

from dflash_trt.checkpoint.layout import drafter_weights, hf_from_internal, internal_from_hf
from dflash_trt.runtime.loading import load_drafter, load_target, read_tensors
from dflash_trt.runtime.torch import TorchDrafter, TorchTarget
from dflash_trt.train.export import save_zlab
from dflash_trt.train.recipe import resolve_target
from dflash_trt.train.trainer import drafter_config, init_drafter


def _trained_like(tiny_target, tiny_recipe, tmp_path):
    recipe = tiny_recipe(tiny_target, tmp_path, tmp_path / "out")
    target = load_target(resolve_target(recipe.target))
    drafter = init_drafter(drafter_config(recipe, target.cfg, embedded=False), target, [1, 3])
    with torch.no_grad():  # perturb every weight, so that no tensor is left at its initial value
        for p in drafter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return target, drafter


def test_inverse_state_dict_round_trip(tiny_target, tiny_recipe, tmp_path):
    _, drafter = _trained_like(tiny_target, tiny_recipe, tmp_path)
    state = drafter.state_dict()
    weights = drafter_weights(drafter.cfg)
    zlab = hf_from_internal(weights, state)
    assert torch.equal(
        zlab["layers.1.mlp.gate_proj.weight"], state["layers.1.mlp.w13.weight"][: drafter.cfg.intermediate_size]
    )
    back = internal_from_hf(weights, zlab.__getitem__, tmp_path)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_zlab_package_loads_checkpoint(tiny_target, tiny_recipe, tmp_path):
    target, drafter = _trained_like(tiny_target, tiny_recipe, tmp_path)
    out = save_zlab(drafter, tmp_path / "ckpt", dtype=torch.float32)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["DFlashDraftModel"] and cfg["block_size"] == 4
    assert cfg["dflash_config"] == {"target_layer_ids": [0, 2], "mask_token_id": 5}
    names = set(read_tensors(out))
    assert {
        "fc.weight",
        "hidden_norm.weight",
        "norm.weight",
        "layers.1.self_attn.q_norm.weight",
        "layers.0.mlp.gate_proj.weight",
        "layers.1.post_attention_layernorm.weight",
    } <= names
    assert len(names) == 3 + 2 * 11

    zlab = DFlashDraftModel.from_pretrained(out, dtype=torch.float32).eval()
    ours = load_drafter(out, target.cfg)
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in drafter.state_dict().items())
    target_runner = TorchTarget(target, ours.cfg.target_layer_ids)
    drafter_runner = TorchDrafter(ours, target.embed, target.lm_head)  # fp32 head, like the z-lab side
    tokens = torch.randint(0, 97, (1, 14), generator=torch.Generator().manual_seed(1))
    block = torch.tensor([[int(tokens[0, -1])] + [5] * 3])
    with torch.no_grad():
        target_runner.reset(1, 14)
        _, features = target_runner.prefill([tokens[0].tolist()])
        h = zlab(position_ids=torch.arange(14 + 4)[None], noise_embedding=target.embed(block), target_hidden=features)
        expected = target.lm_head(h[:, 1:])[0]
        drafter_runner.reset(1, 20)
        drafter_runner.append_context(features, torch.tensor([14]))
        logits = drafter_runner.draft(block)[0]
    assert (logits - expected).abs().max() < 1e-4 and logits.std() > 0.1


def test_bf16_checkpoint_is_small(tiny_target, tiny_recipe, tmp_path):
    _, drafter = _trained_like(tiny_target, tiny_recipe, tmp_path)
    out = save_zlab(drafter, tmp_path / "ckpt")
    assert all(t.dtype == torch.bfloat16 for t in read_tensors(out).values())
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
