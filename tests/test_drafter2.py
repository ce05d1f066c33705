"""DFlash2 conformance with z-lab's `DFlash2DraftModel` (dflash 0.1.0) on the same random weights, and the
one-line errors of bad DFlash2 configs."""

from __future__ import annotations

import json

import dflash.model as dflash_model  # z-lab peer, installed by scripts/setup.sh (dflash==0.1.0): fail if missing
import pytest
import torch
import transformers

from dflash_trt.cli import main
from dflash_trt.config import DrafterConfig
from dflash_trt.models.drafter import output_logits
from dflash_trt.models.drafter2 import DFlash2Drafter, selector_scores
from dflash_trt.models.layers import Keys
from dflash_trt.pipeline import torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from tiny import hf_config, save_hf_target, save_tiny_tokenizer
from tiny_dflash2 import dflash2_hf_config, save_zlab_drafter2

SHAPES = {
    # family, draft kv heads, head_dim, block, context lengths, DFlash2 keys
    "llama-k2-sliding-default": (
        "llama",
        1,
        32,
        8,
        (11, 11),
        dict(kernel=2, group=16, top_k=4, rank=8, sliding_window=6),
    ),  # causal by default
    "qwen3-sliding": (
        "qwen3",
        2,
        16,
        16,
        (1, 30, 7),
        dict(
            kernel=3,
            group=8,
            top_k=16,
            rank=16,
            is_causal=False,
            sliding_window=12,
            output_multiplier=0.5,
            softcap=3.0,
            embedding_scale=1.5,
        ),
    ),
    "qwen2-causal": (
        "qwen2",
        4,
        16,
        4,
        (23,),
        dict(kernel=5, group=64, top_k=97, rank=4, is_causal=True, top_level=True),
    ),
}


def _zlab_reference(hf, zlab, ctx_lens, block, temperature):
    """Per row: z-lab's draft hidden states, greedy proposals, and its q along a walk (greedy when
    `_sample_probs` is patched to argmax) with candidates; plus the target features for our runner."""
    scale = float(dflash_model._draft_value(zlab.config, "input_embedding_scale", 1.0))
    rows = []
    for row, n in enumerate(ctx_lens):
        ctx = torch.randint(0, 97, (1, n))
        hs = hf(ctx, output_hidden_states=True).hidden_states
        f = torch.cat([hs[i + 1] for i in zlab.target_layer_ids], dim=-1)
        blk = torch.tensor([[11 + row] + [5] * (block - 1)])
        h = zlab(
            position_ids=torch.arange(n + block)[None],
            noise_embedding=hf.model.embed_tokens(blk) * scale,
            target_hidden=f,
        )[:, 1:]
        greedy, _, _ = zlab.propose(h, blk[:, 0], hf.lm_head, 0.0)
        walk, candidates, q = zlab.propose(h, blk[:, 0], hf.lm_head, temperature)
        rows.append(
            dict(
                features=f[0],
                hidden=h,
                greedy=greedy[0],
                walk=walk[0],
                candidates=candidates[0],
                q=q[0],
                anchor=blk[0, 0],
            )
        )
    return rows


def _append_in_pieces(runner, rows, ctx_lens):
    """Context arrives in two pieces (prefill, then one step's committed tokens) to exercise the cache."""
    feats = [r["features"] for r in rows]
    batch, width = len(feats), feats[0].shape[-1]
    first = torch.tensor([max(1, n // 2) for n in ctx_lens])
    padded = torch.zeros(batch, max(ctx_lens), width)
    for row, f in enumerate(feats):
        padded[row, : len(f)] = f
    runner.append_context(padded, first)
    rest = torch.zeros(batch, int((torch.tensor(ctx_lens) - first).max()), width)
    for row, f in enumerate(feats):
        rest[row, : len(f) - first[row]] = f[first[row] :]
    runner.append_context(rest, torch.tensor(ctx_lens) - first)


@pytest.mark.parametrize("shape", SHAPES)
def test_draft_matches_zlab_dflash2(tmp_path, monkeypatch, shape):
    family, kv_heads, head_dim, block, ctx_lens, keys = SHAPES[shape]
    target_dir = save_hf_target(tmp_path / "t", family)
    drafter_dir = save_zlab_drafter2(
        tmp_path / "d",
        hf_config(family),
        block_size=block,
        kv_heads=kv_heads,
        head_dim=head_dim,
        layer_ids=(1, 3, 0),
        **keys,
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    zlab = dflash_model.DFlash2DraftModel.from_pretrained(drafter_dir, dtype=torch.float32).eval()
    target = load_target(target_dir)
    drafter = load_drafter(drafter_dir, target.cfg)
    assert isinstance(drafter, DFlash2Drafter)
    _, ours = torch_runners(target, drafter)
    temperature = 0.8
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = _zlab_reference(hf, zlab, ctx_lens, block, temperature)  # z-lab's own sampled walk
        monkeypatch.setattr(dflash_model, "_sample_probs", lambda probs: probs.argmax(-1))
        greedy_q = _zlab_reference(hf, zlab, ctx_lens, block, temperature)
        ours.reset(len(ctx_lens), max(ctx_lens) + block + 1)
        _append_in_pieces(ours, greedy_q, ctx_lens)
        logits = ours.draft(torch.tensor([[11 + row] + [5] * (block - 1) for row in range(len(ctx_lens))]))
    assert logits.shape == (len(ctx_lens), block - 1, 97)
    for row, ref in enumerate(greedy_q):
        # greedy: the loop's argmax over the drafter's output is z-lab's greedy selector walk
        assert torch.equal(logits[row].argmax(-1), ref["greedy"])
        assert torch.equal(ref["walk"], ref["greedy"])  # the patched walk is the greedy one
        # sampling: q = softmax(output / T) is z-lab's q along that walk, zero off its top-k candidates
        q_zlab = torch.zeros(block - 1, 97).scatter(-1, ref["candidates"], ref["q"].float())
        assert (torch.softmax(logits[row] / temperature, -1) - q_zlab).abs().max() <= 1e-5
    # the q of any walk, here z-lab's sampled one, from our selector on our own hidden states and logits
    for row, ref in enumerate(sampled):
        hidden = ref["hidden"]
        unary = output_logits(drafter.cfg, target.lm_head(hidden))
        preds = torch.cat([ref["anchor"][None], ref["walk"][:-1]])[None]
        with torch.no_grad():
            scores, candidates = selector_scores(drafter.selector, hidden, unary, preds)
        ours_q = torch.zeros(block - 1, 97).scatter(-1, candidates[0], torch.softmax(scores[0] / temperature, -1))
        q_zlab = torch.zeros(block - 1, 97).scatter(-1, ref["candidates"], ref["q"].float())
        assert (ours_q - q_zlab).abs().max() <= 1e-5
    finite = logits[torch.isfinite(logits)]
    assert finite.std() > 0.1  # the comparison is not between two constant outputs


def test_selector_changes_proposals(tmp_path):
    """The bigram selector is live: its greedy walk differs from the plain argmax of the logits somewhere,
    and the conv taps matter (zeroing them changes the drafts)."""
    target = load_target(save_hf_target(tmp_path / "t", "llama"))
    drafter = load_drafter(
        save_zlab_drafter2(tmp_path / "d", hf_config("llama"), block_size=16, top_k=8, codebook_std=1.0), target.cfg
    )
    _, runner = torch_runners(target, drafter)
    runner.reset(4, 64)
    with torch.no_grad():
        runner.append_context(
            torch.randn(4, 10, 2 * 64, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 7, 3, 9])
        )
        block = torch.tensor([[3 + r] + [5] * 15 for r in range(4)])
        proposals = runner.draft(block).argmax(-1)
        hidden = drafter(
            runner.embed(block),
            runner.caches.lens[:, None] + torch.arange(16),
            [Keys.cached(k, v, runner.caches.lens) for k, v in runner.caches.visible()],
            runner.rope,
        )[:, 1:]
        plain = target.lm_head(hidden).argmax(-1)
        assert (proposals != plain).any()
        for layer in drafter.layers:
            layer.attn_conv.base.zero_()
            layer.attn_conv.proj.weight.zero_()
        assert (runner.draft(block).argmax(-1) != proposals).any()


def test_dflash2_config_round_trips(tmp_path):
    cfg = DrafterConfig.from_dir(
        save_zlab_drafter2(
            tmp_path / "d",
            hf_config("qwen3"),
            kernel=3,
            group=8,
            top_k=5,
            rank=6,
            softcap=4.0,
            output_multiplier=0.25,
            is_causal=True,
        )
    )
    assert (cfg.arch, cfg.conv_kernel_size, cfg.conv_group_size, cfg.selector_top_k, cfg.selector_rank) == (
        "dflash2",
        3,
        8,
        5,
        6,
    )
    assert (cfg.final_logit_softcapping, cfg.output_multiplier, cfg.is_causal) == (4.0, 0.25, True)
    assert DrafterConfig.from_hf(cfg.to_hf()) == cfg


BAD = [
    ("conv_kernel_size", 0, "dflash_config.conv_kernel_size"),
    ("conv_kernel_size", "2", "dflash_config.conv_kernel_size"),
    ("conv_group_size", 24, "dflash_config.conv_group_size"),  # does not divide hidden_size 64
    ("selector_top_k", 1000, "dflash_config.selector_top_k"),  # above the vocab
    ("selector_rank", None, "dflash_config.selector_rank"),  # missing
    ("output_multiplier", -1.0, "dflash_config.output_multiplier"),
    ("final_logit_softcapping", -3, "dflash_config.final_logit_softcapping"),
    ("input_embedding_scale", "big", "dflash_config.input_embedding_scale"),
    ("is_causal", "yes", "is_causal"),
]


@pytest.fixture(scope="module")
def cli_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli2")
    target = save_hf_target(root / "t", "qwen3")
    save_tiny_tokenizer(target)
    return target, save_zlab_drafter2(root / "d", hf_config("qwen3"), block_size=8)


@pytest.mark.parametrize("key,value,field", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_dflash2_config_exits_2_with_one_line(cli_pair, tmp_path, capsys, key, value, field):
    target, good = cli_pair
    drafter = tmp_path / "d"
    drafter.mkdir()
    (drafter / "model.safetensors").symlink_to(good / "model.safetensors")
    cfg = json.loads((good / "config.json").read_text())
    if key == "is_causal":
        cfg[key] = value
    elif value is None:
        del cfg["dflash_config"][key]
    else:
        cfg["dflash_config"][key] = value
    (drafter / "config.json").write_text(json.dumps(cfg))
    code = main(
        ["generate", "--target", str(target), "--drafter", str(drafter), "--prompt", "w1 w2", "--max-new-tokens", "4"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(drafter / "config.json") in err and f"'{field}'" in err, err


def test_dflash2_keys_at_top_level_are_read(tmp_path):
    """z-lab reads every key from `dflash_config` first, then the top level."""
    cfg = dflash2_hf_config(hf_config("llama"), kernel=4, top_k=3, top_level=True)
    assert "conv_kernel_size" not in cfg["dflash_config"]
    parsed = DrafterConfig.from_hf(cfg)
    assert (parsed.conv_kernel_size, parsed.selector_top_k) == (4, 3)
    cfg["dflash_config"]["conv_kernel_size"] = 2  # dflash_config wins
    assert DrafterConfig.from_hf(cfg).conv_kernel_size == 2
    cfg["conv_group_size"] = 7
    with pytest.raises(Exception, match="'conv_group_size' is 7"):
        DrafterConfig.from_hf(cfg, "x/config.json")
