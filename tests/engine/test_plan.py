"""`build --dry-run`: shapes and memory per rank from config files alone, checked against independent formulas."""

from __future__ import annotations

import json

import pytest
from engine_paths import CONFIGS, RECIPES

from dflash_trt.checkpoint.plan import make_plan
from dflash_trt.cli import main
from dflash_trt.engine.plan import MXFP4_BITS, make_build_plan, read_pair
from dflash_trt.engine.recipe import load_recipe
from dflash_trt.export.graphs import past_names

PAIRS = {
    "build_qwen3_8b_b16_h100": ("qwen3-8b", "qwen3-8b-dflash-b16"),
    "build_qwen3_8b_b16_b200": ("qwen3-8b", "qwen3-8b-dflash-b16"),
    "build_llama3.1_8b_h100": ("llama-3.1-8b-instruct", "llama-3.1-8b-instruct-dflash"),
    "build_gpt_oss_120b_tp8_b300": ("gpt-oss-120b", "gpt-oss-120b-dflash"),
}


def plan_of(recipe: str, **over):
    target, drafter = PAIRS[recipe]
    return make_build_plan(
        read_pair(CONFIGS / target, CONFIGS / drafter), load_recipe(RECIPES / f"{recipe}.yaml", over)
    )


@pytest.mark.parametrize("recipe", PAIRS)
def test_dry_run_prints_the_plan_and_writes_nothing(recipe, tmp_path, capsys):
    target, drafter = PAIRS[recipe]
    out = tmp_path / "engine"
    code = main(
        [
            "build",
            "--target",
            str(CONFIGS / target),
            "--drafter",
            str(CONFIGS / drafter),
            "--config",
            str(RECIPES / f"{recipe}.yaml"),
            "--output",
            str(out),
            "--dry-run",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert not out.exists() and list(tmp_path.iterdir()) == []
    plan = plan_of(recipe)
    assert text.count("\n| ") == plan.tp + 1  # header + one row per rank
    assert f"tp {plan.tp}, dtype bfloat16" in text and "target/prefill:" in text and "drafter/step:" in text
    code = main(
        [
            "build",
            "--target",
            str(CONFIGS / target),
            "--drafter",
            str(CONFIGS / drafter),
            "--config",
            str(RECIPES / f"{recipe}.yaml"),
            "--dry-run",
            "--json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert len(data["memory_per_rank"]) == plan.tp and data["block_size"] == plan.block_size


def test_qwen3_weights_match_the_converter_and_kv_by_hand():
    plan = plan_of("build_qwen3_8b_b16_h100")
    conv = make_plan(CONFIGS / "qwen3-8b", CONFIGS / "qwen3-8b-dflash-b16", tp=1, pp=1, dtype="bf16")
    mem = plan.memory[0]
    assert mem.target_weights == conv.models[0].rank_bytes(0)
    # the drafter engine carries the target's embedding and LM head (untied): 2 x vocab x hidden x 2 bytes
    assert mem.drafter_weights == conv.models[1].rank_bytes(0) + 2 * 151936 * 4096 * 2
    assert 8.1e9 < mem.target_weights / 2 < 8.3e9  # Qwen3-8B has 8.19B parameters
    batch, seq = 8, 8192
    assert mem.target_kv == batch * seq * 36 * 2 * 8 * 128 * 2
    assert mem.drafter_kv == batch * seq * 5 * 2 * 8 * 128 * 2
    assert plan.block_size == 16 and plan.max_num_tokens == 8 * 4096


def test_tp_shards_weights_and_kv_heads():
    one, four = plan_of("build_qwen3_8b_b16_h100"), plan_of("build_qwen3_8b_b16_h100", tp_size=4)
    conv = make_plan(CONFIGS / "qwen3-8b", CONFIGS / "qwen3-8b-dflash-b16", tp=4, pp=1, dtype="bf16")
    assert [m.target_weights for m in four.memory] == [conv.models[0].rank_bytes(r) for r in range(4)]
    assert four.memory[0].target_kv * 4 == one.memory[0].target_kv  # 8 KV heads -> 2 per rank
    eight_kv = plan_of("build_qwen3_8b_b16_h100", tp_size=16).kv_heads_per_rank  # tp > kv heads: duplicated
    assert eight_kv == {"target": 1, "drafter": 1}
    past = four.profiles["target"]["step"][past_names(36)[0]]
    assert past == ((1, 2, 1, 128), (4, 2, 8192, 128), (8, 2, 8192, 128))


def test_gpt_oss_tp8_by_hand():
    """gpt-oss-120b at tp 8 from its published config.json: dense parts in bf16, experts at MXFP4."""
    plan = plan_of("build_gpt_oss_120b_tp8_b300")
    h, layers, vocab, experts, ffn, tp = 2880, 36, 201088, 128, 2880, 8
    q_rows, kv_rows = 64 * 64 // tp, 1 * 64  # 64 heads / 8; 8 KV heads -> 1 per rank
    attn = (q_rows + 2 * kv_rows) * (h + 1) + h * q_rows  # fused qkv weight + bias (attention_bias), o_proj rows
    norms = 2 * h
    dense = layers * (attn + norms) * 2 + 2 * (vocab // tp) * h * 2 + h * 2  # + embedding, lm_head, final norm
    moe = layers * (experts * 3 * h * (ffn // tp) * MXFP4_BITS / 8 + (experts * h + experts) * 2)
    mem = plan.memory[0]
    assert mem.target_weights == dense + int(moe)
    total = sum(m.target_weights for m in plan.memory)
    assert 60e9 < total < 70e9  # the published MXFP4 checkpoint is ~65 GB
    assert mem.target_kv == 32 * 16384 * layers * 2 * 1 * 64 * 2
    assert len(plan.memory) == 8 and plan.kv_heads_per_rank == {"target": 1, "drafter": 1}
    assert any("planned from config.json only" in n for n in plan.notes)
    assert any("MXFP4" in n for n in plan.notes)
    assert not plan.pair.exportable


def test_profiles_cover_prefill_and_step():
    plan = plan_of("build_llama3.1_8b_h100")
    t, d = plan.profiles["target"], plan.profiles["drafter"]
    assert t["prefill"]["input_ids"] == ((1, 1), (1, 1024), (8, 4096))
    assert t["step"]["input_ids"] == ((1, 1), (4, 10), (8, 10))
    assert t["step"]["logits_index"] == ((1, 1), (4, 10), (8, 10))
    assert t["prefill"]["logits_index"][2] == (8, 1)
    assert d["step"]["input_ids"] == ((1, 2), (4, 10), (8, 10))
    assert d["prefill"]["features"][2] == (8, 4096, 5 * 4096)
    only_step = plan_of("build_llama3.1_8b_h100", profiles=["step"])
    assert list(only_step.profiles["target"]) == ["step"]
    assert only_step.profiles["target"]["step"]["input_ids"][2] == (8, 4096)  # step then also serves prompts
