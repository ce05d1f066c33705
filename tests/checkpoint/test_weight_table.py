"""The three conversions driven by the weight table, each against an expectation built by hand here.

- `internal_from_hf`: the reference model's parameters = HF tensors, q/k/v and gate/up concatenated by hand;
- `hf_from_internal`: the exact inverse (HF file -> internal -> the same HF tensors), fused rows split by hand;
- `internal_from_trtllm`: a rank file of a real conversion = the HF tensors sharded by hand (heads, KV-head
  duplication, FFN slices, zero-padded vocab rows), and the result loads into that rank's model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dflash_trt.checkpoint.layout import (
    drafter_entries,
    drafter_weights,
    hf_from_internal,
    internal_from_hf,
    internal_from_trtllm,
    target_entries,
    target_weights,
)
from dflash_trt.cli import main
from dflash_trt.config import DrafterConfig, TargetConfig
from dflash_trt.errors import UserError
from dflash_trt.models.drafter import DFlashDrafter
from dflash_trt.models.target import Transformer
from dflash_trt.parallel.comm import Mapping
from dflash_trt.parallel.tensor_parallel import build_drafter, build_target

from .conftest import drafter_config, read_source

FAMILIES = ["llama", "qwen2", "qwen3", "llama-tied"]


def hand_layer(src: dict, hf: str, out: str, *, bias: bool, qk_norm: bool) -> dict[str, torch.Tensor]:
    """One decoder layer of the reference model from HF tensors, written out by hand."""
    a = f"{hf}self_attn."
    state = {
        f"{out}attn.wqkv.weight": torch.cat(
            [src[a + "q_proj.weight"], src[a + "k_proj.weight"], src[a + "v_proj.weight"]]
        ),
        f"{out}attn.wo.weight": src[a + "o_proj.weight"],
        f"{out}attn_norm.weight": src[f"{hf}input_layernorm.weight"],
        f"{out}mlp_norm.weight": src[f"{hf}post_attention_layernorm.weight"],
        f"{out}mlp.w13.weight": torch.cat([src[f"{hf}mlp.gate_proj.weight"], src[f"{hf}mlp.up_proj.weight"]]),
        f"{out}mlp.w2.weight": src[f"{hf}mlp.down_proj.weight"],
    }
    if bias:
        state[f"{out}attn.wqkv.bias"] = torch.cat(
            [src[a + "q_proj.bias"], src[a + "k_proj.bias"], src[a + "v_proj.bias"]]
        )
    if qk_norm:
        state[f"{out}attn.q_norm.weight"] = src[a + "q_norm.weight"]
        state[f"{out}attn.k_norm.weight"] = src[a + "k_norm.weight"]
    return state


def hand_target(cfg: TargetConfig, src: dict) -> dict[str, torch.Tensor]:
    state = {
        "embed.weight": src["model.embed_tokens.weight"],
        "norm.weight": src["model.norm.weight"],
        "lm_head.weight": src["model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"],
    }
    for i in range(cfg.num_layers):
        state |= hand_layer(src, f"model.layers.{i}.", f"layers.{i}.", bias=cfg.qkv_bias, qk_norm=cfg.qk_norm)
    return state


def hand_drafter(cfg: DrafterConfig, src: dict) -> dict[str, torch.Tensor]:
    state = {
        "fc.weight": src["fc.weight"],
        "hidden_norm.weight": src["hidden_norm.weight"],
        "norm.weight": src["norm.weight"],
    }
    for i in range(cfg.num_layers):
        state |= hand_layer(src, f"layers.{i}.", f"layers.{i}.", bias=cfg.qkv_bias, qk_norm=True)
    return state


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("family", FAMILIES)
def test_internal_from_hf_target(tiny_sources, family):
    directory = tiny_sources[family]
    cfg, src = TargetConfig.from_dir(directory), read_source(directory)
    state = internal_from_hf(target_weights(cfg), src.__getitem__, directory)
    assert_same(state, hand_target(cfg, src))
    Transformer(cfg).load_state_dict(state, strict=True)  # the internal names are the model's own


def test_internal_from_hf_drafter(tiny_sources):
    directory = tiny_sources["drafter"]
    cfg, src = DrafterConfig.from_dir(directory), read_source(directory)
    state = internal_from_hf(drafter_weights(cfg), src.__getitem__, directory)
    assert_same(state, hand_drafter(cfg, src))
    DFlashDrafter(cfg).load_state_dict(state, strict=True)


def test_internal_from_hf_names_the_missing_or_misshapen_tensor(tiny_sources):
    directory = tiny_sources["qwen3"]
    cfg, src = TargetConfig.from_dir(directory), read_source(directory)
    weights = target_weights(cfg)
    missing = {k: v for k, v in src.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(UserError) as err:
        internal_from_hf(weights, missing.__getitem__, directory)
    assert str(err.value) == (
        f"{directory}: tensor 'model.layers.1.mlp.up_proj.weight' is missing; "
        "the checkpoint does not match its config.json"
    )
    bad = {**src, "model.layers.2.self_attn.k_norm.weight": torch.ones(3)}
    with pytest.raises(UserError) as err:
        internal_from_hf(weights, bad.__getitem__, directory)
    assert str(err.value) == (
        f"{directory}: tensor 'model.layers.2.self_attn.k_norm.weight' has shape [3], config.json implies [128]"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_from_internal_inverts_internal_from_hf(tiny_sources, family):
    directory = tiny_sources[family]
    cfg, src = TargetConfig.from_dir(directory), read_source(directory)
    back = hf_from_internal(target_weights(cfg), hand_target(cfg, src))
    assert_same(back, src)  # a tied target writes model.embed_tokens.weight once, and no lm_head


def test_hf_from_internal_refuses_a_tied_head_that_differs(tiny_sources):
    cfg = TargetConfig.from_dir(tiny_sources["llama-tied"])
    state = hand_target(cfg, read_source(tiny_sources["llama-tied"]))
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="lm_head.weight"):
        hf_from_internal(target_weights(cfg), state)


@pytest.mark.parametrize("bias", [False, True])
def test_hf_from_internal_splits_a_drafter_by_hand(bias):
    cfg = drafter_config(qkv_bias=bias)
    torch.manual_seed(0)
    model = DFlashDrafter(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    state = model.state_dict()
    hf = hf_from_internal(drafter_weights(cfg), state)
    q, kv, ffn = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    want = {
        "fc.weight": state["fc.weight"],
        "hidden_norm.weight": state["hidden_norm.weight"],
        "norm.weight": state["norm.weight"],
    }
    for i in range(cfg.num_layers):
        s, a = f"layers.{i}.", f"layers.{i}.self_attn."
        wqkv, w13 = state[s + "attn.wqkv.weight"], state[s + "mlp.w13.weight"]
        want |= {
            a + "q_proj.weight": wqkv[:q],
            a + "k_proj.weight": wqkv[q : q + kv],
            a + "v_proj.weight": wqkv[q + kv :],
            a + "o_proj.weight": state[s + "attn.wo.weight"],
            a + "q_norm.weight": state[s + "attn.q_norm.weight"],
            a + "k_norm.weight": state[s + "attn.k_norm.weight"],
            s + "mlp.gate_proj.weight": w13[:ffn],
            s + "mlp.up_proj.weight": w13[ffn:],
            s + "mlp.down_proj.weight": state[s + "mlp.w2.weight"],
            s + "input_layernorm.weight": state[s + "attn_norm.weight"],
            s + "post_attention_layernorm.weight": state[s + "mlp_norm.weight"],
        }
        if bias:
            b = state[s + "attn.wqkv.bias"]
            want |= {a + "q_proj.bias": b[:q], a + "k_proj.bias": b[q : q + kv], a + "v_proj.bias": b[q + kv :]}
    assert_same(hf, want)
    assert_same(internal_from_hf(drafter_weights(cfg), hf.__getitem__, "drafter"), dict(state))


# ---- internal_from_trtllm: one rank file of a real conversion against the sharding rules applied by hand ----


def hand_rank(state: dict[str, torch.Tensor], cfg, tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s slice of a full internal state, written out from TRT-LLM's rules without `sharding`."""
    d = cfg.head_dim
    q_rows = cfg.num_heads // tp * d
    if tp <= cfg.num_kv_heads:  # each rank owns num_kv_heads / tp whole KV heads
        kv_heads = cfg.num_kv_heads // tp
        first_kv = rank * kv_heads
    else:  # each KV head is duplicated on tp / num_kv_heads consecutive ranks
        kv_heads = 1
        first_kv = rank // (tp // cfg.num_kv_heads)
    q_all, kv_all = cfg.num_heads * d, cfg.num_kv_heads * d
    f = cfg.intermediate_size // tp
    ffn = cfg.intermediate_size
    out = {}
    for name, t in state.items():
        if name.endswith("attn.wqkv.weight") or name.endswith("attn.wqkv.bias"):
            qp, kp, vp = t[:q_all], t[q_all : q_all + kv_all], t[q_all + kv_all :]
            kv = slice(first_kv * d, (first_kv + kv_heads) * d)
            out[name] = torch.cat([qp[rank * q_rows : (rank + 1) * q_rows], kp[kv], vp[kv]])
        elif name.endswith("mlp.w13.weight"):
            out[name] = torch.cat([t[:ffn][rank * f : (rank + 1) * f], t[ffn:][rank * f : (rank + 1) * f]])
        elif name.endswith("attn.wo.weight"):
            out[name] = t[:, rank * q_rows : (rank + 1) * q_rows]
        elif name.endswith("mlp.w2.weight"):
            out[name] = t[:, rank * f : (rank + 1) * f]
        elif name in ("embed.weight", "lm_head.weight"):
            rows = -(-cfg.vocab_size // tp)
            padded = torch.cat([t, t.new_zeros(rows * tp - t.shape[0], t.shape[1])])
            out[name] = padded[rank * rows : (rank + 1) * rows]
        else:  # norms, the drafter's fc and hidden_norm: replicated
            out[name] = t
    return out


def _read(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("family", ["qwen2", "llama-tied", "qwen3-sharded"])
def test_internal_from_trtllm_is_the_hand_sharded_rank(tiny_sources, tmp_path, family, tp):
    out = tmp_path / "ckpt"
    args = ["--target", str(tiny_sources[family]), "--drafter", str(tiny_sources["drafter"])]
    assert main(["convert", *args, "--output", str(out), "--tp", str(tp), "--dtype", "fp32"]) == 0
    t_cfg, d_cfg = TargetConfig.from_dir(tiny_sources[family]), DrafterConfig.from_dir(tiny_sources["drafter"])
    t_full = hand_target(t_cfg, read_source(tiny_sources[family]))
    d_full = {k: v.float() for k, v in hand_drafter(d_cfg, read_source(tiny_sources["drafter"])).items()}
    for rank in range(tp):
        mapping = Mapping(tp, rank)
        t = internal_from_trtllm(target_weights(t_cfg), _read(out / "target" / f"rank{rank}.safetensors"))
        assert_same(t, hand_rank(t_full, t_cfg, tp, rank))
        build_target(t_cfg, mapping).load_state_dict(t, strict=True)
        d = internal_from_trtllm(drafter_weights(d_cfg), _read(out / "drafter" / f"rank{rank}.safetensors"))
        assert_same(d, hand_rank(d_full, d_cfg, tp, rank))
        build_drafter(d_cfg, mapping).load_state_dict(d, strict=True)


def test_internal_from_trtllm_names_a_missing_tensor(tiny_sources):
    cfg = replace(TargetConfig.from_dir(tiny_sources["llama"]), num_layers=1)
    tensors = {
        e.name: torch.zeros(e.shape) for e in target_entries(cfg) if e.name != "transformer.layers.0.mlp.gate.weight"
    }
    with pytest.raises(
        UserError, match=r"^ckpt/target/rank0.safetensors: tensor 'transformer.layers.0.mlp.gate.weight'"
    ):
        internal_from_trtllm(target_weights(cfg), tensors, "ckpt/target/rank0.safetensors")


def test_entries_keep_the_file_order(tiny_sources):
    """Rank files list tensors in TRT-LLM order; w13's parts are [mlp.fc; mlp.gate] (gate_proj rows first)."""
    t_cfg = TargetConfig.from_dir(tiny_sources["qwen2"])
    w13 = next(w for w in target_weights(t_cfg) if w.internal == "layers.0.mlp.w13.weight")
    assert [p.name for p in w13.parts] == ["transformer.layers.0.mlp.fc.weight", "transformer.layers.0.mlp.gate.weight"]
    names = [e.name for e in target_entries(t_cfg)]
    assert names[:3] == [
        "transformer.vocab_embedding.weight",
        "transformer.layers.0.attention.qkv.weight",
        "transformer.layers.0.attention.qkv.bias",
    ]
    assert names[-2:] == ["transformer.ln_f.weight", "lm_head.weight"]
    assert [n.removeprefix("transformer.layers.2.") for n in names if ".layers.2." in n] == [
        "attention.qkv.weight",
        "attention.qkv.bias",
        "attention.dense.weight",
        "mlp.fc.weight",
        "mlp.gate.weight",
        "mlp.proj.weight",
        "input_layernorm.weight",
        "post_layernorm.weight",
    ]
    d_names = [e.name for e in drafter_entries(DrafterConfig.from_dir(tiny_sources["drafter"]))]
    assert d_names[:3] == ["dflash.fc.weight", "dflash.hidden_norm.weight", "transformer.layers.0.attention.qkv.weight"]
    assert d_names[-1] == "transformer.ln_f.weight"
