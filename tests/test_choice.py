"""Block-size choice: expected tokens per step from per-position acceptance, the fastest block against step costs
(plain decoding when no block wins), and `generate` acting on a drafter's acceptance.json with step costs measured
once and cached."""

from __future__ import annotations

import json

import pytest

from dflash_trt.bench.calibration import paired_costs, paired_step_costs
from dflash_trt.cli import main
from dflash_trt.decoding.choice import StepCosts, choose_block, tokens_per_step
from dflash_trt.pipeline import load_pipeline
from tiny import hf_config, save_hf_target, save_tiny_tokenizer, save_zlab_drafter


def test_tokens_per_step_adds_the_acceptance_of_the_drafted_positions():
    acceptance = [0.5, 0.25, 0.125]
    assert [tokens_per_step(acceptance, b) for b in (1, 2, 3, 4)] == [1.0, 1.5, 1.75, 1.875]
    with pytest.raises(ValueError):
        tokens_per_step(acceptance, 5)


def test_choose_block_takes_the_largest_expected_speedup_or_plain_decoding():
    costs = StepCosts(decode_ms=10.0, step_ms={2: 14.0, 3: 15.0, 4: 22.0})
    good = choose_block([0.8, 0.6, 0.1], costs)  # 10 * tokens / step: 18/14, 24/15, 25/22
    assert good.block == 3 and good.speedups == pytest.approx({2: 18 / 14, 3: 1.6, 4: 25 / 22})
    assert "B=3" in good.describe() and "1.60x" in good.describe()
    poor = choose_block([0.1, 0.05, 0.01], costs)  # 11/14, 11.5/15, 11.6/22: all below 1, best at B=2
    assert poor.block is None and "autoregressive" in poor.describe() and "0.79x, at B=2" in poor.describe()


def test_paired_costs_hold_through_a_slow_stretch_and_a_lucky_draw():
    """Each DFlash step is costed by its ratio to the plain step timed just before it (median over rounds), times
    the median plain step: a round where the whole machine ran 3x slower, one disturbed step and one draw far
    faster than the rest leave the costs where the undisturbed rounds put them (the fastest draw would not)."""
    decodes = {2: [10.0, 30.0, 10.0, 10.0, 10.0], 3: [10.0, 30.0, 10.0, 10.0, 10.0]}
    steps = {2: [12.0, 36.0, 12.0, 40.0, 12.0], 3: [15.0, 45.0, 15.0, 15.0, 9.0]}
    costs = paired_costs(decodes, steps)
    assert costs.decode_ms == 10.0 and costs.step_ms == pytest.approx({2: 12.0, 3: 15.0})


@pytest.fixture()
def pair(tmp_path, monkeypatch):
    monkeypatch.setenv("DFLASH_TRT_CACHE", str(tmp_path / "cache"))
    target = save_hf_target(tmp_path / "target", "qwen3")
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter(tmp_path / "drafter", hf_config("qwen3"), block_size=4, layer_ids=(0, 2))
    return target, drafter, tmp_path / "cache" / "calibration.json"


def generate(capsys, target, drafter) -> tuple[dict, str]:
    argv = ["generate", "--target", str(target), "--drafter", str(drafter), "--prompt", "w1 w2 w3"]
    assert main([*argv, "--max-new-tokens", "12", "--json"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_generate_follows_the_acceptance_and_caches_the_step_costs(pair, steady_machine, capsys):
    target, drafter, cache = pair
    _, err = generate(capsys, target, drafter)
    assert "chose" not in err and not cache.exists()  # no acceptance.json: the drafter's trained block, no calibration

    (drafter / "acceptance.json").write_text(json.dumps({"position_acceptance": [1.0, 1.0, 1.0]}))
    doc, err = generate(capsys, target, drafter)
    assert "calibrating step costs once" in err and "chose " in err
    entries = json.loads(cache.read_text())
    (key, entry), *others = entries.items()
    assert not others and sorted(entry["step_ms"]) == ["2", "3", "4"] and entry["decode_ms"] > 0

    # the same cache entry with known costs (as if calibrated on a machine where they are these): the choice
    # follows them and the acceptance, and nothing is measured again
    assert isinstance(entry["busy_cores"], float)  # how many cores other processes kept busy meanwhile
    assert entry["probe_ms"] > 0
    entry |= {"decode_ms": 10.0, "step_ms": {"2": 14.0, "3": 15.0, "4": 16.0}}
    cache.write_text(json.dumps({key: entry}))
    doc, err = generate(capsys, target, drafter)  # tokens per step 2, 3, 4 -> 20/14, 30/15, 40/16
    assert "calibrating" not in err and "chose DFlash B=4 (expected 2.50x" in err
    assert doc["summary"]["block_size"] == 4

    (drafter / "acceptance.json").write_text(json.dumps({"position_acceptance": [0.0, 0.0, 0.0]}))
    doc, err = generate(capsys, target, drafter)  # 10/14, 10/15, 10/16: plain decoding wins
    assert "chose autoregressive decoding (DFlash expected at best 0.71x, at B=2)" in err
    assert doc["summary"]["block_size"] == 1 and "[autoregressive]" in err

    (drafter / "acceptance.json").write_text(json.dumps({"position_acceptance": [2.0]}))
    assert main(["generate", "--target", str(target), "--drafter", str(drafter), "--prompt", "w1"]) == 2
    assert "position_acceptance" in capsys.readouterr().err


def test_generate_chooses_for_the_batch_it_decodes(pair, steady_machine, capsys, tmp_path):
    """Step costs are measured and cached per batch size: a verify of B tokens for b rows is a b*B-row GEMM, so
    a block that pays at batch 1 may not at batch 2; the choice follows the batch's own costs."""
    target, drafter, cache = pair
    (drafter / "acceptance.json").write_text(json.dumps({"position_acceptance": [0.5, 0.5, 0.5]}))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) for i in range(3)))
    argv = ["generate", "--target", str(target), "--drafter", str(drafter), "--max-new-tokens", "8", "--json"]
    for batch in ("1", "2"):
        assert main([*argv, "--prompts-file", str(prompts), "--batch-size", batch]) == 0
        assert f"batch {batch}" in capsys.readouterr().err
    entries = json.loads(cache.read_text())
    by_batch = {next(p for p in key.split(" | ") if p.startswith("batch ")): key for key in entries}
    assert sorted(by_batch) == ["batch 1", "batch 2"]

    cheap = {"decode_ms": 10.0, "step_ms": dict.fromkeys("234", 12.0), "probe_ms": 1.0}  # 1.5 tokens per 12 ms at B=2
    dear = {"decode_ms": 10.0, "step_ms": dict.fromkeys("234", 31.0), "probe_ms": 1.0}  # verifying 2 rows costs more
    cache.write_text(json.dumps({by_batch["batch 1"]: cheap, by_batch["batch 2"]: dear}))
    assert main([*argv, "--prompts-file", str(prompts), "--batch-size", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["block_size"] == 4  # 10 * 2.5 / 12 = 2.08x at B=4
    assert main([*argv, "--prompts-file", str(prompts), "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    assert "chose autoregressive decoding" in err and "batch 2" in err  # at best 10 * 2.5 / 31 = 0.81x
    assert json.loads(out)["summary"]["block_size"] == 1


def test_step_costs_are_measured_again_when_the_machine_decodes_at_another_speed(pair, capsys):
    """Every use of a cached entry first times a few one-token decodes (the speed probe); costs cached while the
    machine ran at another speed (a noisy neighbour, another process, another power state) are measured again,
    whichever way the speed moved, and so is an entry that recorded no probe."""
    target, drafter, cache = pair
    (drafter / "acceptance.json").write_text(json.dumps({"position_acceptance": [1.0]}))  # B=2 only: quick
    generate(capsys, target, drafter)  # calibrates
    (key, entry), *_ = json.loads(cache.read_text()).items()
    probe = entry["probe_ms"]
    for then, said in ((probe * 1000, f"took {probe * 1000:.1f} ms"), (probe / 1000, "ms when"), (None, "unrecorded")):
        stale = {k: v for k, v in entry.items() if k != "probe_ms"} | ({"probe_ms": then} if then else {})
        cache.write_text(json.dumps({key: stale}))
        _, err = generate(capsys, target, drafter)
        assert "measuring again" in err and said in err and "calibrating" in err, err
        assert json.loads(cache.read_text())[key]["probe_ms"] not in (then, None)  # replaced by today's probe


def test_calibration_steps_commit_nothing(pair):
    """The measured steps leave both caches at the prompt's length, so every round times the same state."""
    target, drafter, _ = pair
    pipe = load_pipeline(target, drafter)
    costs = paired_step_costs(pipe, [2, 4], batch=3, rounds=2)
    assert sorted(costs.step_ms) == [2, 4] and costs.decode_ms > 0
    assert pipe.target.caches.lens.tolist() == pipe.drafter.caches.lens.tolist() == [pipe.target.caches.lens[0]] * 3
