"""Training DFlash2 drafters: the training forward is the inference forward per block, the initial convs and
selector are no-ops (a fresh DFlash2 drafter starts as its v1 layers), a tiny run fits its data and exports a
checkpoint z-lab's DFlash2DraftModel loads, and recipe errors name the field."""

from __future__ import annotations

import dflash.model as dflash_model  # z-lab peer
import pytest
import torch

from dflash_trt.config import DrafterConfig
from dflash_trt.decoding.speculative import Request, generate
from dflash_trt.errors import UserError
from dflash_trt.models.drafter import DFlashDrafter
from dflash_trt.models.drafter2 import DFlash2Drafter
from dflash_trt.models.layers import Keys
from dflash_trt.pipeline import torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from dflash_trt.runtime.torch import TorchTarget
from dflash_trt.train.forward import Batch, block_hidden, drafter_rope, init_dflash2
from dflash_trt.train.trainer import Trainer
from tiny import hf_config, save_hf_target
from tiny_dflash2 import save_zlab_drafter2

BLOCK, MASK = 5, 5
V2 = dict(architecture="dflash2", conv_kernel_size=2, conv_group_size=16, selector_rank=8, selector_top_k=8)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("fwd2")
    target = load_target(save_hf_target(root / "t", "qwen3"))
    drafter = load_drafter(
        save_zlab_drafter2(root / "d", hf_config("qwen3"), block_size=BLOCK, layer_ids=(1, 3), kernel=3, group=8),
        target.cfg,
    )
    return target, drafter


def _batch(features, tokens, anchors):
    a = torch.tensor([anchors])
    block_ids = torch.full((1, len(anchors), BLOCK), MASK)
    block_ids[0, :, 0] = tokens[0, a[0]]
    return Batch(
        features,
        torch.tensor([0]),
        block_ids,
        a,
        torch.ones_like(a, dtype=torch.bool),
        torch.zeros(1, len(anchors), BLOCK - 1, dtype=torch.long),
    )


def _inference_hidden(target, drafter, features, anchor, token):
    _, runner = torch_runners(target, drafter)
    runner.reset(1, anchor + BLOCK + 1)
    runner.append_context(features[:, :anchor], torch.tensor([anchor]))
    block = torch.tensor([[token] + [MASK] * (BLOCK - 1)])
    context = [Keys.cached(k, v, runner.caches.lens) for k, v in runner.caches.visible()]
    return drafter(target.embed(block), anchor + torch.arange(BLOCK)[None], context, runner.rope)[0]


@torch.no_grad()
def test_training_forward_matches_inference(pair):
    """Blocks sharing one training forward do not see each other through the convs: each equals inference."""
    target, drafter = pair
    tokens = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(0))
    runner, _ = torch_runners(target, drafter)
    runner.reset(1, 20)
    features = runner.verify(tokens)[1]
    anchors = [2, 6, 7, 15]  # adjacent blocks overlap in positions
    hidden = block_hidden(drafter, target.embed, _batch(features, tokens, anchors), drafter_rope(drafter))
    for i, a in enumerate(anchors):
        expected = _inference_hidden(target, drafter, features, a, int(tokens[0, a]))
        assert (hidden[i] - expected).abs().max() <= 1e-5


@torch.no_grad()
def test_initial_dflash2_drafter_is_its_v1_layers(pair):
    target, v2_loaded = pair
    v1_cfg = DrafterConfig(**{**v2_loaded.cfg.__dict__, "arch": "dflash"})
    v1 = DFlashDrafter(v1_cfg)
    v1.load_state_dict({k: v for k, v in v2_loaded.state_dict().items() if "conv" not in k and "selector" not in k})
    v2 = DFlash2Drafter(v2_loaded.cfg)
    v2.load_state_dict(v2_loaded.state_dict())
    init_dflash2(v2)
    tokens = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(1))
    runner = TorchTarget(target, v1.cfg.target_layer_ids)  # v1 and v2 both unpacked: the same kernels
    runner.reset(1, 20)
    features = runner.verify(tokens)[1]
    batch = _batch(features, tokens, [3, 9])
    h1 = block_hidden(v1, target.embed, batch, drafter_rope(v1))
    h2 = block_hidden(v2, target.embed, batch, drafter_rope(v2))
    assert torch.equal(h1, h2)
    assert not torch.equal(h2, block_hidden(v2_loaded, target.embed, batch, drafter_rope(v2)))  # convs matter


def test_dflash2_training_fits_and_exports_a_zlab_checkpoint(tiny_target, tiny_data, tiny_recipe, tmp_path):
    trainer = Trainer(
        tiny_recipe(
            tiny_target,
            tiny_data,
            tmp_path / "out",
            steps=20,
            eval_every=10,
            checkpoint_every=10,
            lr=1e-2,
            min_lr=1e-3,
            **V2,
        )
    )
    assert isinstance(trainer.drafter, DFlash2Drafter)
    trainer.val_seqs = trainer.train_seqs[:8]  # a fit test, as test_training_fits_its_training_data
    before = trainer.evaluate()
    trainer.run()
    after = trainer.log["val"][-1]
    assert after["loss"] < 0.9 * before["loss"]
    assert after["tau_est"] > before["tau_est"]
    selector = trainer.drafter.selector.proj.weight
    assert selector.abs().max() > 0  # the selector learned a bigram term from its zero start
    best = tmp_path / "out" / "best"
    zlab = dflash_model.DFlash2DraftModel.from_pretrained(best, dtype=torch.float32)
    assert int(dflash_model._draft_value(zlab.config, "selector_top_k")) == 8
    target = load_target(tiny_target)
    drafter = load_drafter(best, target.cfg)
    assert isinstance(drafter, DFlash2Drafter)
    t_runner, d_runner = torch_runners(target, drafter)
    requests = [Request([7, 8, 9], 16), Request([30, 31], 16)]
    assert [g.tokens for g in generate(t_runner, d_runner, requests)] == [
        g.tokens for g in generate(t_runner, None, requests)
    ]


@pytest.mark.parametrize(
    "over,field",
    [
        (dict(architecture="dflash3"), "architecture"),
        (dict(V2, conv_group_size=24), "conv_group_size"),  # does not divide hidden 64
        (dict(V2, selector_top_k=0), "selector_top_k"),
        (dict(V2, selector_top_k=500), "selector_top_k"),  # above the vocab (97)
    ],
)
def test_dflash2_recipe_errors_name_the_field(tiny_target, tiny_data, tiny_recipe, tmp_path, over, field):
    with pytest.raises(UserError, match=f"recipe field '{field}'"):
        Trainer(tiny_recipe(tiny_target, tiny_data, tmp_path / "out", **over))
