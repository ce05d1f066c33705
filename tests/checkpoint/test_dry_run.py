"""--dry-run plans for the published configs: shapes checked by hand, from config.json alone (no weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dflash_trt.checkpoint.plan import make_plan
from dflash_trt.cli import main

CONFIGS = Path(__file__).parents[1] / "fixtures" / "configs"
QWEN3 = (CONFIGS / "qwen3-8b", CONFIGS / "qwen3-8b-dflash-b16")
LLAMA = (CONFIGS / "llama-3.1-8b-instruct", CONFIGS / "llama-3.1-8b-instruct-dflash")


def rank(pair, tp: int, role: str, r: int) -> dict[str, tuple[tuple[int, ...], str]]:
    plan = make_plan(*pair, tp=tp, pp=1, dtype="auto")
    model = {m.role: m for m in plan.models}[role]
    return {s.name: (s.shape, s.dtype) for s in model.specs[r]}


def test_qwen3_8b_tp4_rank1_by_hand():
    t = rank(QWEN3, 4, "target", 1)
    assert (
        len(t) == 1 + 36 * 9 + 2
    )  # embedding, 9 tensors per layer (qkv, q/k norm, dense, 3 mlp, 2 norms), ln_f, lm_head
    assert t["transformer.layers.7.attention.qkv.weight"] == ((1536, 4096), "BF16")  # (32 + 8 + 8) * 128 / 4
    assert t["transformer.layers.7.attention.dense.weight"] == ((4096, 1024), "BF16")  # row-parallel: 4096 / 4 inputs
    assert t["transformer.layers.7.attention.q_layernorm.weight"] == ((128,), "BF16")
    assert t["transformer.layers.7.attention.k_layernorm.weight"] == ((128,), "BF16")
    assert t["transformer.layers.35.mlp.fc.weight"] == ((3072, 4096), "BF16")  # 12288 / 4
    assert t["transformer.layers.35.mlp.gate.weight"] == ((3072, 4096), "BF16")
    assert t["transformer.layers.35.mlp.proj.weight"] == ((4096, 3072), "BF16")
    assert t["transformer.layers.0.input_layernorm.weight"] == ((4096,), "BF16")
    assert t["transformer.vocab_embedding.weight"] == ((37984, 4096), "BF16")  # 151936 / 4
    assert t["lm_head.weight"] == ((37984, 4096), "BF16")
    assert t["transformer.ln_f.weight"] == ((4096,), "BF16")
    assert "transformer.layers.0.attention.qkv.bias" not in t

    d = rank(QWEN3, 4, "drafter", 1)
    assert len(d) == 2 + 5 * 9 + 1
    assert d["dflash.fc.weight"] == ((4096, 5 * 4096), "BF16")  # replicated
    assert d["dflash.hidden_norm.weight"] == ((4096,), "BF16")
    assert d["transformer.layers.4.attention.qkv.weight"] == ((1536, 4096), "BF16")
    assert d["transformer.layers.4.mlp.proj.weight"] == ((4096, 3072), "BF16")
    assert "transformer.vocab_embedding.weight" not in d and "lm_head.weight" not in d


def test_qwen3_8b_tp8_one_kv_head_per_rank_and_total_size():
    t = rank(QWEN3, 8, "target", 5)
    assert t["transformer.layers.0.attention.qkv.weight"] == ((768, 4096), "BF16")  # (4 + 1 + 1) * 128
    assert t["lm_head.weight"] == ((18992, 4096), "BF16")  # 151936 / 8
    plan = make_plan(*QWEN3, tp=1, pp=1, dtype="auto")
    assert plan.models[0].rank_bytes(0) == 8_190_735_360 * 2  # Qwen3-8B's published parameter count, bf16


def test_llama_31_8b_by_hand():
    t = rank(LLAMA, 2, "target", 0)
    assert len(t) == 1 + 32 * 7 + 2  # no q/k norms for Llama
    assert t["transformer.layers.31.attention.qkv.weight"] == ((3072, 4096), "BF16")  # (32 + 8 + 8) * 128 / 2
    assert t["transformer.layers.31.mlp.fc.weight"] == ((7168, 4096), "BF16")  # 14336 / 2
    assert t["lm_head.weight"] == ((64128, 4096), "BF16")  # 128256 / 2
    t8 = rank(LLAMA, 8, "target", 7)
    assert t8["transformer.vocab_embedding.weight"] == ((16032, 4096), "BF16")
    assert t8["transformer.layers.0.mlp.proj.weight"] == ((4096, 1792), "BF16")
    d = rank(LLAMA, 4, "drafter", 3)
    assert d["dflash.fc.weight"] == ((4096, 20480), "BF16")
    assert d["transformer.layers.0.attention.q_layernorm.weight"] == ((128,), "BF16")
    assert make_plan(*LLAMA, tp=1, pp=1, dtype="auto").drafter.target_layer_ids == (1, 8, 15, 22, 29)


@pytest.mark.parametrize("pair", [QWEN3, LLAMA], ids=["qwen3-8b", "llama-3.1-8b"])
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_dry_run_prints_every_rank(pair, tp, capsys, tmp_path):
    out = tmp_path / "never-written"
    assert (
        main(
            [
                "convert",
                "--target",
                str(pair[0]),
                "--drafter",
                str(pair[1]),
                "--tp",
                str(tp),
                "--dry-run",
                "--output",
                str(out),
                "--dtype",
                "fp16",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    for role in ("target", "drafter"):
        for r in range(tp):
            assert f"{role}/rank{r}.safetensors:" in text
    assert "F16" in text and "BF16" not in text
    assert f"over {2 * tp} rank files" in text
    assert not out.exists() and list(tmp_path.iterdir()) == []
