"""`dflash-trt bench` runs end to end on a tiny model, with its peers (z-lab, HF static cache, HF prompt lookup),
and writes its reports."""

from __future__ import annotations

import json

from dflash_trt.cli import main
from dflash_trt.pipeline import draft_head_dtype
from tiny import hf_config, save_hf_target, save_tiny_tokenizer, save_zlab_drafter


def test_bench_end_to_end(tmp_path):
    target = save_hf_target(tmp_path / "t", "qwen3")
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter(tmp_path / "d", hf_config("qwen3"), block_size=8, layer_ids=(0, 2))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"w{i} w{i + 3} w{i + 1}"}) for i in range(4)))
    code = main(
        [
            "bench",
            "--target",
            str(target),
            "--drafter",
            str(drafter),
            "--datasets",
            str(prompts),
            "--num-prompts",
            "3",
            "--max-new-tokens",
            "12",
            "--batch-sizes",
            "1",
            "2",
            "--block-sizes",
            "4",
            "8",
            "--temperatures",
            "0",
            "1",
            "--compare-zlab",
            "--compare-hf",
            "--compare-prompt-lookup",
            "--output-dir",
            str(tmp_path / "out"),
            "--name",
            "tiny",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert len(report["rows"]) == 2 * 2 * 2
    expected_head = "bfloat16" if draft_head_dtype("fp32") is not None else "float32"
    assert report["target_dtype"] == "float32" and report["draft_head_dtype"] == expected_head
    for row in report["rows"]:
        assert 1.0 <= row["tau"] <= row["block"]
        assert len(row["position_acceptance"]) == row["block"] - 1
        if row["temperature"] == 0:
            assert row["identical_outputs"] == row["requests"] == 3
    peer = report["peers"][0]
    assert peer["zlab_identical_outputs"] == 3 and peer["prompt_lookup_tau"] >= 1.0
    assert peer["zlab_drafter_class"] == "DFlashDraftModel"
    assert peer["hf_static_identical_outputs"] == 3 and peer["hf_static_tokens_per_s"] > 0  # ours == HF greedy
    assert all(c["break_even_tau"] > 0 for c in report["step_costs"])
    assert (tmp_path / "out" / "tiny.png").stat().st_size > 0
    assert "| dataset |" in (tmp_path / "out" / "tiny.md").read_text()


def test_bench_compares_v1_and_dflash2_drafters_side_by_side(tmp_path, monkeypatch):
    """Two --drafter directories on one target: rows and z-lab peers for each (z-lab's own class per checkpoint:
    DFlash2DraftModel for the DFlash2 drafter); without --block-sizes each runs at its block choice, or at its
    trained block size when it ships no acceptance.json."""
    from tiny_dflash2 import save_zlab_drafter2

    monkeypatch.setenv("DFLASH_TRT_CACHE", str(tmp_path / "cache"))
    target = save_hf_target(tmp_path / "t", "qwen3")
    save_tiny_tokenizer(target)
    v1 = save_zlab_drafter(tmp_path / "v1", hf_config("qwen3"), block_size=8, layer_ids=(0, 2))
    v2 = save_zlab_drafter2(tmp_path / "v2", hf_config("qwen3"), block_size=4, layer_ids=(0, 2))
    (v2 / "acceptance.json").write_text(json.dumps({"position_acceptance": [1.0, 1.0, 1.0]}))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"w{i} w{i + 2}"}) for i in range(3)))
    argv = ["bench", "--target", str(target), "--drafter", str(v1), str(v2), "--datasets", str(prompts)]
    argv += ["--num-prompts", "3", "--max-new-tokens", "12", "--batch-sizes", "1", "--temperatures", "0"]
    argv += ["--compare-zlab", "--output-dir", str(tmp_path / "out"), "--name", "v2"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "v2.json").read_text())
    first, second = report["drafters"]
    assert (first["name"], first["blocks"]) == ("DFlashDraftModel", {"1": [8]})
    assert "no acceptance.json" in first["choice"]["1"]
    assert second["name"] == "DFlash2DraftModel" and second["choice"]["1"].startswith("block choice for torch fp32")
    assert second["blocks"]["1"][0] in (2, 3, 4)
    assert [(r["drafter"], r["identical_outputs"]) for r in report["rows"]] == [
        ("DFlashDraftModel", 3),
        ("DFlash2DraftModel", 3),
    ]
    assert [(p["zlab_drafter_class"], p["zlab_identical_outputs"]) for p in report["peers"]] == [
        ("DFlashDraftModel", 3),
        ("DFlash2DraftModel", 3),
    ]
    assert [c["drafter"] for c in report["step_costs"]] == ["DFlashDraftModel", "DFlash2DraftModel"]
    assert "| DFlash2DraftModel |" in (tmp_path / "out" / "v2.md").read_text()


def test_bench_runs_each_batch_at_its_own_block_choice(tmp_path, monkeypatch, steady_machine):
    """Without --block-sizes, each batch size runs at the block its own step costs recommend (seeded here, as if
    measured: verifying 2 rows costs more), or at the best-expected block when plain decoding would win."""
    monkeypatch.setenv("DFLASH_TRT_CACHE", str(tmp_path / "cache"))
    target = save_hf_target(tmp_path / "t", "qwen3")
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter(tmp_path / "d", hf_config("qwen3"), block_size=4, layer_ids=(0, 2))
    (drafter / "acceptance.json").write_text(json.dumps({"position_acceptance": [0.5, 0.5, 0.5]}))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"w{i} w{i + 2}"}) for i in range(2)))
    argv = ["bench", "--target", str(target), "--drafter", str(drafter), "--datasets", str(prompts)]
    argv += ["--num-prompts", "2", "--max-new-tokens", "8", "--batch-sizes", "1", "2", "--temperatures", "0"]
    argv += ["--output-dir", str(tmp_path / "out")]
    assert main(argv) == 0  # calibrates batch 1 and batch 2
    cache = tmp_path / "cache" / "calibration.json"
    keys = {next(p for p in key.split(" | ") if p.startswith("batch ")): key for key in json.loads(cache.read_text())}
    other = {"probe_ms": 1.0, "decode_ms": 10.0}
    cheap = {"step_ms": {"2": 12.0, "3": 12.0, "4": 12.0}} | other  # 10 * 2.5 / 12 at B=4: the best
    dear = {"step_ms": {"2": 31.0, "3": 61.0, "4": 91.0}} | other  # 15 / 31 at B=2: the best, below 1
    cache.write_text(json.dumps({keys["batch 1"]: cheap, keys["batch 2"]: dear}))
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    (d,) = report["drafters"]
    assert d["blocks"] == {"1": [4], "2": [2]} and "autoregressive" in d["choice"]["2"]
    assert [(r["batch"], r["block"]) for r in report["rows"]] == [(1, 4), (2, 2)]
