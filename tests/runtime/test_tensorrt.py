"""The TensorRT backend. On this CPU-only machine: its engine-directory reading, profile choice, buffer plan and
which tensor binds where, and that it imports without TensorRT or CUDA. The GPU run (`gpu` marker) is written and
skips here: the backend itself is not executed on any machine of this project."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dflash_trt.engine.build import engine_config
from dflash_trt.engine.plan import make_build_plan, read_pair
from dflash_trt.engine.recipe import load_recipe
from dflash_trt.errors import UserError
from dflash_trt.export.graphs import past_names, present_names
from dflash_trt.runtime import tensorrt as rt
from dflash_trt.runtime.engine_dir import read_engine_dir

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"


def write_engine_dir(tmp_path: Path, **over):
    """An ENGINE_DIR config.json for Qwen3-8B + its b16 drafter (H100 recipe), as `build` writes it."""
    plan = make_build_plan(
        read_pair(CONFIGS / "qwen3-8b", CONFIGS / "qwen3-8b-dflash-b16"),
        load_recipe(ROOT / "build_configs" / "build_qwen3_8b_b16_h100.yaml", over),
    )
    plugin = {"library": "libdflash_trt_plugins.so", "sha256": "0" * 64, "backend": "cuda", "built_from": "/x.so"}
    engines = {g: [f"{g}/rank{r}.engine" for r in range(plan.tp)] for g in ("target", "drafter")}
    (tmp_path / "config.json").write_text(json.dumps(engine_config(plan, plugin, engines, {})))
    return plan, read_engine_dir(tmp_path)


def test_bindings_of_every_graph_and_profile(tmp_path):
    plan, eng = write_engine_dir(tmp_path)
    vocab, feat = 151936, 5 * 4096
    t_step, t_pre = rt.plan_bindings(eng, "target", "step"), rt.plan_bindings(eng, "target", "prefill")
    expected_names = {
        "input_ids",
        "cache_lens",
        "logits_index",
        "logits",
        "features",
        *past_names(36),
        *present_names(36),
    }
    assert set(t_step) == set(t_pre) == expected_names
    assert t_step["past_key_values.3.value"].role == "cache"
    assert t_step["past_key_values.3.value"].buffer == "target.cache.3.value"
    assert t_step["past_key_values.3.value"].shape == (8, 8, 8192, 128)
    assert {t_pre[n].buffer for n in past_names(36)} == {"target.scratch"}  # one zeroed scratch for every layer
    assert t_pre["past_key_values.0.key"].shape == (8, 8, 1, 128)
    assert t_step["logits"].shape == (8, 16, vocab) and t_pre["logits"].shape == (8, 1, vocab)
    assert t_step["features"].shape == (8, 16, feat) and t_pre["features"].shape == (8, 4096, feat)
    assert t_pre["present.35.key"].shape == (8, 4096, 8, 128) and t_step["present.0.key"].role == "output"
    assert t_step["input_ids"].dtype == "int64" and t_step["logits"].dtype == "bfloat16"
    d_step, d_pre = rt.plan_bindings(eng, "drafter", "step"), rt.plan_bindings(eng, "drafter", "prefill")
    assert set(d_step) == {
        "input_ids",
        "features",
        "feature_lens",
        "cache_lens",
        "logits",
        "draft_tokens",
        *past_names(5),
        *present_names(5),
    }
    # the drafter reads its persistent caches in both profiles (in-flight rows keep their context)
    assert all(
        d_pre[n].buffer == d_step[n].buffer == f"drafter.cache.{n.removeprefix('past_key_values.')}"
        for n in past_names(5)
    )
    assert d_step["logits"].shape == (8, 15, vocab) and d_pre["features"].shape == (8, 4096, feat)
    assert d_step["draft_tokens"].shape == (8, 15) and d_step["draft_tokens"].dtype == "int64"
    assert all(d_step[n].role == "output" for n in present_names(5))


def test_plugin_flavor_binds_present_to_the_context_caches(tmp_path):
    """attention: plugin: DFlashContextKVAppend writes the caches in place, so each present.* is its cache."""
    _, eng = write_engine_dir(tmp_path, attention="plugin")
    assert rt.in_place_context(eng)
    for phase in ("step", "prefill"):
        d = rt.plan_bindings(eng, "drafter", phase)
        for past, present in zip(past_names(5), present_names(5)):
            assert d[present].role == "cache" and d[present].buffer == d[past].buffer
            assert d[present].shape == d[past].shape
    target = rt.plan_bindings(eng, "target", "step")  # the target graph has no plugin flavor
    assert all(target[n].role == "output" for n in present_names(36))


def test_cache_bytes_equal_the_dry_run_plan(tmp_path):
    for tp in (1, 4):
        sub = tmp_path / f"tp{tp}"
        sub.mkdir()
        plan, eng = write_engine_dir(sub, tp_size=tp)
        sizes = rt.buffer_bytes(eng)
        mem = plan.memory[0]
        assert sizes["cache"] == mem.target_kv + mem.drafter_kv
        assert sizes["scratch"] == 8 * (8 // tp) * 1 * 128 * 2
        assert rt.plan_bindings(eng, "target", "step")["past_key_values.0.key"].shape == (8, 8 // tp, 8192, 128)


def test_profile_choice(tmp_path):
    _, eng = write_engine_dir(tmp_path)
    assert eng.profile_index("prefill") == 0 and eng.profile_index("step") == 1
    assert [rt.choose_phase(eng, "target", t) for t in (1, 16, 17, 4096)] == ["step", "step", "prefill", "prefill"]
    assert rt.choose_phase(eng, "drafter", 16) == "step" and rt.choose_phase(eng, "drafter", 100) == "prefill"
    with pytest.raises(UserError, match="4097 tokens exceed the engine's profiles"):
        rt.choose_phase(eng, "target", 4097)
    sub = tmp_path / "one"
    sub.mkdir()
    _, single = write_engine_dir(sub, profiles=["step"])
    assert single.profile_index("prefill") == 0 and rt.choose_phase(single, "target", 4096) == "step"


def test_store_writes_ragged_rows_at_their_lengths():
    """`_store` (present K/V -> caches at cache_lens + i for i < count) on CPU tensors."""
    caches = [(torch.zeros(3, 2, 6, 4), torch.zeros(3, 2, 6, 4))]
    k = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4) + 1
    v = -k
    rows, start, count = torch.tensor([2, 0]), torch.tensor([1, 4]), torch.tensor([3, 2])
    rt._store(caches, [k, v], rows, start, count)
    kc, vc = caches[0]
    assert torch.equal(kc[2, :, 1:4], k[0].transpose(0, 1)) and torch.equal(vc[2, :, 1:4], v[0].transpose(0, 1))
    assert torch.equal(kc[0, :, 4:6], k[1, :2].transpose(0, 1))
    assert kc[2, :, [0, 4, 5]].abs().sum() == 0 and kc[0, :, :4].abs().sum() == 0 and kc[1].abs().sum() == 0


def test_imports_without_tensorrt_or_cuda():
    code = (
        "import sys, torch; before = set(sys.modules); import dflash_trt.runtime.tensorrt; "
        "new = [m for m in set(sys.modules) - before if m.split('.')[0] in ('tensorrt', 'cuda')]; "
        "assert not new and 'tensorrt' not in sys.modules, new"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_without_tensorrt_it_refuses_in_one_line(tmp_path):
    if rt.available():
        pytest.skip("TensorRT and a GPU are present")
    with pytest.raises(UserError, match="needs datacenter TensorRT") as err:
        rt.load_runners(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.gpu
def test_greedy_generation_equals_the_torch_backend(tmp_path):
    """On a GPU host with TensorRT: build the embedded pair, run DFlash on the engines, compare with torch."""
    from dflash_trt.decoding.sampling import SamplingParams
    from dflash_trt.decoding.speculative import Request, generate
    from dflash_trt.pipeline import load_pipeline

    engine_dir = tmp_path / "engine"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dflash_trt.cli",
            "build",
            "--config",
            str(ROOT / "build_configs" / "build_smollm2_135m_cpu.yaml"),
            "--output",
            str(engine_dir),
        ],
        check=True,
        cwd=ROOT,
    )
    cfg = json.loads((engine_dir / "config.json").read_text())
    assert cfg["engines"]["target"] == ["target/rank0.engine"]
    target, drafter = rt.load_runners(engine_dir)
    pipe = load_pipeline(None, None, dtype="fp16")
    prompts = [pipe.encode("Write a Python function that reverses a string.", True), pipe.encode("2+2=", False)]
    greedy = SamplingParams(0.0, 0, 1.0, None)
    got = generate(target, drafter, [Request(p, 32, pipe.stop_ids()) for p in prompts], greedy, 8)
    want = generate(pipe.target, pipe.drafter, [Request(p, 32, pipe.stop_ids()) for p in prompts], greedy, 8)
    # fp16 engines vs the fp16 torch reference: the first tokens agree; a late fp16 tie may differ
    for g, w in zip(got, want):
        assert g.tokens[:8] == w.tokens[:8]
