"""The embedded pair (SmolLM2-135M-Instruct + the shipped drafter) in its cached engine directory, run on
onnxruntime: the graphs equal the torch runners (fp32 logits within 3e-4, features, written K/V), greedy generation
equals the torch backend token for token over 8 prompts at batch 4 (4 of them at batch 1), block 4 and 8, and
`generate` with no model arguments weighs both backends and runs the faster."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dflash_trt.cli import main
from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.decoding.speculative import generate
from dflash_trt.embedded import MODEL_NAME, ensure_default_target
from dflash_trt.engine.default import ensure_default_engine
from dflash_trt.models.layers import Keys
from dflash_trt.pipeline import EMBEDDED_DRAFTER, load_engine_pipeline, load_pipeline

pytestmark = pytest.mark.slow


def close(got, want, what: str) -> None:
    """fp32 agreement: within 3e-4, plus 1e-6 of the largest magnitude. SmolLM2's residual stream carries
    activations near 2.5e4 (one fp32 ulp: 2e-3), so logits of magnitude ~40 differ by up to ~1e-4 between two
    correct fp32 evaluation orders; the torch runners' multi-row GEMMs (oneDNN, `runtime.prepacked`) and
    onnxruntime's MLAS differ by up to 1.5e-4 on the drafter's K/V (magnitude ~36, fc over 2880 inputs)."""
    got, want = np.asarray(got), np.asarray(want)
    err, scale = np.abs(got - want).max(), np.abs(want).max()
    assert err <= 3e-4 + 1e-6 * scale, f"{what}: max abs error {err} at magnitude {scale}"


PROMPTS = [
    "Write a Python function that reverses a string.",
    "What is the capital of France?",
    "Explain recursion in one sentence.",
    "List three prime numbers.",
    "def fibonacci(n):",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Sort [3, 1, 2] in Python.",
]


@pytest.fixture(scope="module")
def engine():
    """The embedded pair's engine directory that `generate` weighs (built by scripts/setup.sh, or here)."""
    engine = ensure_default_engine(progress=False)
    assert (engine / "onnx" / "rank0" / "target.onnx.data").stat().st_size > 100e6  # weights are external
    return engine


def test_engine_dir_of_the_embedded_pair(engine):
    """What `build` writes for the embedded pair (here under engine.default.RECIPE, ONNX only): its config, the
    shipped drafter's acceptance.json for `generate`'s block choice, the tokenizer; no plugin library."""
    files = {str(p.relative_to(engine)) for p in engine.rglob("*") if p.is_file()}
    assert {"config.json", "onnx/rank0/export.json", "tokenizer/tokenizer.json", "acceptance.json"} <= files, files
    assert (engine / "acceptance.json").read_bytes() == (EMBEDDED_DRAFTER / "acceptance.json").read_bytes()
    cfg = json.loads((engine / "config.json").read_text())
    pre, bc = cfg["pretrained_config"], cfg["build_config"]
    shape = (
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_size",
        "vocab_size",
        "num_hidden_layers",
        "head_size",
    )
    assert tuple(pre[k] for k in shape) == (9, 3, 576, 49152, 30, 64) and pre["dtype"] == "float32"
    assert pre["drafter"]["architecture"] == "DFlashDraftModel" and pre["drafter"]["num_hidden_layers"] == 2
    assert (bc["max_batch_size"], bc["max_input_len"], bc["max_seq_len"], bc["max_draft_len"]) == (8, 512, 1024, 7)
    assert cfg["dflash"] == {
        "target_layer_ids": [1, 8, 14, 20, 27],
        "mask_token_id": 16,
        "block_size": 8,
        "drafter_block_size": 8,
    }
    assert cfg["plugin"] is None and cfg["engines"] == {"target": [], "drafter": []}


@pytest.fixture(scope="module")
def pipes(engine):
    return load_engine_pipeline(engine), load_pipeline(None, None)


def test_graphs_equal_torch_runners(pipes):
    ort, ref = pipes
    prompts = [ref.encode(p, chat=True) for p in PROMPTS[:3]]
    lens = torch.tensor([len(p) for p in prompts])
    for runner in (ort.target, ref.target, ort.drafter, ref.drafter):
        runner.reset(3, 128)
    (l_ort, f_ort), (l_ref, f_ref) = ort.target.prefill(prompts), ref.target.prefill(prompts)
    close(l_ort, l_ref, "prefill logits")
    for row, n in enumerate(lens.tolist()):
        close(f_ort[row, :n], f_ref[row, :n], f"prefill features row {row}")
    for i, (k, v) in enumerate(ref.target.caches.kv):
        for row, n in enumerate(lens.tolist()):
            close(ort.target.caches.kv[2 * i][row, :, :n], k[row, :, :n], f"target layer {i} k row {row}")
            close(ort.target.caches.kv[2 * i + 1][row, :, :n], v[row, :, :n], f"target layer {i} v row {row}")
    ort.drafter.append_context(f_ort, lens)
    ref.drafter.append_context(f_ref, lens)
    block = torch.full((3, 8), ref.drafter.mask_token_id)
    block[:, 0] = l_ref.argmax(-1)
    draft_ort = ort.drafter.draft(block)
    # the torch runner's draft head is bf16 on CPUs with bf16 matmul: the reference here is its fp32 pass
    assert ref.drafter.model.cfg.input_embedding_scale == 1.0 and not ref.drafter.model.cfg.is_dflash2
    with torch.no_grad():
        context = [Keys.cached(k, v, lens) for k, v in ref.drafter.caches.visible()]
        hidden_ref = ref.drafter.model(
            ref.drafter.embed(block), lens[:, None] + torch.arange(8), context, ref.drafter.rope
        )
        draft_ref = ref.target.model.lm_head(hidden_ref[:, 1:])
    vocab = ort.drafter.vocab  # the shipped draft vocabulary: the graph's head covers only its rows
    assert vocab is not None and vocab.tolist() == ref.drafter.vocab.tolist()
    close(draft_ort[..., vocab], draft_ref[..., vocab], "draft logits")
    outside = torch.ones(draft_ref.shape[-1], dtype=torch.bool)
    outside[vocab] = False
    assert torch.isneginf(draft_ort[..., outside]).all()
    for i, (k, v) in enumerate(ref.drafter.caches.kv):
        for row, n in enumerate(lens.tolist()):
            close(ort.drafter.caches.kv[2 * i][row, :, :n], k[row, :, :n], f"drafter layer {i} k row {row}")
            close(ort.drafter.caches.kv[2 * i + 1][row, :, :n], v[row, :, :n], f"drafter layer {i} v row {row}")
    (v_ort, vf_ort), (v_ref, vf_ref) = ort.target.verify(block), ref.target.verify(block)
    close(v_ort, v_ref, "verify logits")
    close(vf_ort, vf_ref, "verify features")


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("block", [4, 8])
def test_greedy_tokens_equal_torch_backend(pipes, batch, block):
    ort, ref = pipes
    # batch 1 runs half the prompts (rows never interact there); batch 4 runs them all, two batches
    requests = [ref.request(p, True, 24) for p in PROMPTS[: 4 * batch]]
    got, want = [], []
    for i in range(0, len(requests), batch):
        got += generate(ort.target, ort.drafter, requests[i : i + batch], SamplingParams(), block)
        want += generate(ref.target, ref.drafter, requests[i : i + batch], SamplingParams(), block)
    assert [g.tokens for g in got] == [w.tokens for w in want]
    assert [g.step_lengths for g in got] != [[1] * len(g.tokens) for g in got]  # drafts were accepted


@pytest.fixture(scope="module")
def own_calibration(engine, tmp_path_factory):
    """A cache holding the real target and engines but a calibration of these tests' own."""
    cache = tmp_path_factory.mktemp("cache")
    for entry in (engine.parent, ensure_default_target(progress=False)):
        (cache / entry.name).symlink_to(entry)
    return cache


def test_generate_without_model_arguments_weighs_torch_and_onnxruntime(engine, own_calibration, monkeypatch, capsys):
    """The README's command: the embedded pair on torch and on its cached onnxruntime graphs, the faster one run,
    its tokens those of that backend run on purpose."""
    monkeypatch.setenv("DFLASH_TRT_CACHE", str(own_calibration))
    argv = ["generate", "--prompt", PROMPTS[0], "--max-new-tokens", "12", "--block-size", "4", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    chosen = re.search(r"chose the (torch fp32|onnxruntime) backend \(expected ms per token at batch 1: (.*)\)", err)
    assert chosen and {"torch fp32", "onnxruntime"} == {p.rsplit(" ", 1)[0] for p in chosen[2].split(", ")}, err
    forced = ["--engine", str(engine)] if chosen[1] == "onnxruntime" else ["--backend", "torch"]
    assert main([*argv, *forced]) == 0
    want = json.loads(capsys.readouterr().out)["results"][0]["tokens"]
    assert json.loads(out)["results"][0]["tokens"] == want


def test_generate_weighs_only_the_backends_its_requests_fit(own_calibration, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DFLASH_TRT_CACHE", str(own_calibration))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS + PROMPTS[:1]))
    argv = ["generate", "--prompts-file", str(prompts), "--batch-size", "9", "--max-new-tokens", "2", "--json"]
    assert main([*argv, "--block-size", "4"]) == 0  # the cached graphs hold 8 rows
    out, err = capsys.readouterr()
    assert "not weighing the onnxruntime backend: 9 requests in one batch" in err
    assert "chose the torch fp32 backend (expected ms per token at batch 9: torch fp32 " in err
    assert len(json.loads(out)["results"]) == 9


def test_bench_without_model_arguments_reports_its_backend_choice(own_calibration, monkeypatch, tmp_path):
    monkeypatch.setenv("DFLASH_TRT_CACHE", str(own_calibration))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPTS[4]}) + "\n")
    argv = ["bench", "--datasets", str(prompts), "--num-prompts", "1", "--max-new-tokens", "8", "--batch-sizes", "1"]
    argv += ["--block-sizes", "4", "--temperatures", "0", "--output-dir", str(tmp_path), "--name", "auto"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "auto.json").read_text())
    expected = report["backend_choice"]
    assert sorted(expected) == ["onnxruntime", "torch fp32"] and report["backend"] == min(expected, key=expected.get)
    assert report["rows"][0]["identical_outputs"] == 1 and report["drafters"][0]["name"].startswith("DFlashDraftModel")
    assert "Backend chosen by expected ms per token at batch 1: " in (tmp_path / "auto.md").read_text()


def test_backend_onnxruntime_without_model_arguments_runs_the_cached_graphs(
    engine, own_calibration, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("DFLASH_TRT_CACHE", str(own_calibration))
    argv = ["generate", "--chat", "--prompt", PROMPTS[1], "--max-new-tokens", "8", "--block-size", "4", "--json"]
    assert main([*argv, "--backend", "onnxruntime"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main([*argv, "--engine", str(engine)]) == 0
    want = json.loads(capsys.readouterr().out)
    assert got["results"][0]["tokens"] == want["results"][0]["tokens"] and len(want["results"][0]["tokens"]) == 8
    assert Path(got["target"]).resolve() == Path(want["target"]).resolve() == engine.resolve()
    bare = tmp_path / "cache"  # the target converted, its graphs not built
    bare.mkdir()
    (bare / MODEL_NAME).symlink_to(ensure_default_target(progress=False))
    monkeypatch.setenv("DFLASH_TRT_CACHE", str(bare))
    assert main([*argv, "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert "no onnxruntime graphs of the embedded pair" in err and "python -m dflash_trt.engine.default" in err
