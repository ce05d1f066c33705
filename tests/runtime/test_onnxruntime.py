"""The onnxruntime backend runs an engine directory's graphs through the unchanged loop: greedy tokens equal
the torch backend's, speculative sampling keeps the target's distribution, the CLI runs `generate` and `bench`
with `--engine DIR --backend onnxruntime`, and user errors exit 2 naming the file or field."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch

import distribution
from dflash_trt.bench.cli import drafter_name
from dflash_trt.cli import main
from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.decoding.speculative import Request, generate
from dflash_trt.pipeline import load_engine_pipeline, load_pipeline, torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from dflash_trt.runtime.torch import TorchTarget
from ort_engine import make_engine_dir
from tiny import hf_config, save_hf_target, save_tiny_tokenizer, save_zlab_drafter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ort")
    target = save_hf_target(root / "t", "qwen3", heads=8, kv_heads=2)
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter(root / "d", hf_config("qwen3", heads=8, kv_heads=2), block_size=8, layer_ids=(0, 2))
    engine = make_engine_dir(root / "engine", target_dir=target, drafter_dir=drafter, max_seq_len=320)
    return target, drafter, engine


def requests(vocab: int, n: int = 8, new: int = 20, seed: int = 0) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 24, (n,), generator=g).tolist()
    return [Request(torch.randint(3, vocab, (k,), generator=g).tolist(), new) for k in lengths]


def run_all(pipe, reqs, batch, block, params=SamplingParams()):
    out = []
    for i in range(0, len(reqs), batch):
        out += generate(pipe.target, pipe.drafter, reqs[i : i + batch], params, block)
    return [g.tokens for g in out]


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("block", [4, 8])
def test_greedy_tokens_equal_torch_backend(tiny, batch, block):
    target, drafter, engine = tiny
    ort, ref = load_engine_pipeline(engine), load_pipeline(target, drafter)
    reqs = requests(97)
    assert run_all(ort, reqs, batch, block) == run_all(ref, reqs, batch, block)


def test_autoregressive_equals_torch_backend(tiny):
    target, drafter, engine = tiny
    ort, ref = load_engine_pipeline(engine, use_drafter=False), load_pipeline(target, drafter, use_drafter=False)
    assert ort.drafter is None
    reqs = requests(97, n=4, seed=3)
    assert run_all(ort, reqs, 4, None) == run_all(ref, reqs, 4, None)


def test_generate_and_bench_cli(tiny, tmp_path, capsys):
    target, drafter, engine = tiny
    args = ["generate", "--prompt", "w1 w2 w3", "--max-new-tokens", "16", "--json"]
    assert main([*args, "--target", str(target), "--drafter", str(drafter)]) == 0
    want = json.loads(capsys.readouterr().out)["results"][0]["tokens"]
    assert main([*args, "--engine", str(engine), "--backend", "onnxruntime"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["tokens"] == want
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"w{i} w{i + 3} w{i + 1}"}) for i in range(3)))
    assert (
        main(
            [
                "bench",
                "--engine",
                str(engine),
                "--backend",
                "onnxruntime",
                "--datasets",
                str(prompts),
                "--num-prompts",
                "3",
                "--max-new-tokens",
                "8",
                "--batch-sizes",
                "2",
                "--block-sizes",
                "4",
                "--temperatures",
                "0",
                "--output-dir",
                str(tmp_path / "out"),
                "--name",
                "ort",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "out" / "ort.json").read_text())
    assert report["backend"] == "onnxruntime" and report["rows"][0]["identical_outputs"] == 3
    assert all(c["break_even_tau"] > 0 for c in report["step_costs"])


ACCEPTANCE = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]  # tokens per DFlash step at B=2..8: 1.9, 2.7, ... 5.2


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    """`dflash-trt build --no-verify` of the tiny pair, its drafter shipping an acceptance.json: an ONNX-only engine
    directory (no datacenter TensorRT here), built with DFLASH_TRT_PLUGIN_LIB pointing nowhere, so that a build
    which looked for the plugin library would fail."""
    target, drafter, _ = tiny
    root = tmp_path_factory.mktemp("ort_build")
    shutil.copytree(drafter, root / "drafter")
    (root / "drafter" / "acceptance.json").write_text(json.dumps({"position_acceptance": ACCEPTANCE}))
    recipe = root / "recipe.yaml"
    recipe.write_text("dtype: fp32\nmax_batch_size: 4\nmax_input_len: 64\nmax_seq_len: 320\n")
    argv = ["build", "--target", str(target), "--drafter", str(root / "drafter"), "--config", str(recipe)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFLASH_TRT_PLUGIN_LIB", str(root / "no-such-library.so"))
        assert main([*argv, "--output", str(root / "engine"), "--no-verify"]) == 0
    return target, root / "drafter", root / "engine"


def test_onnx_only_build_records_no_plugin_library_and_runs(built):
    target, drafter, engine = built
    config = json.loads((engine / "config.json").read_text())
    report = json.loads((engine / "build_report.json").read_text())
    assert config["plugin"] is None and report["plugin_library"] is None
    assert config["verification"] == {"builder": None, "skipped": "--no-verify"}
    assert json.loads((engine / "acceptance.json").read_text())["position_acceptance"] == ACCEPTANCE
    pipe = load_engine_pipeline(engine)
    assert drafter_name(pipe) == "DFlashDraftModel"  # as bench reports it: the architecture the build recorded
    reqs = requests(97, n=4, seed=5)
    assert run_all(pipe, reqs, 2, 4) == run_all(load_pipeline(target, drafter), reqs, 2, 4)


def test_training_data_generated_on_onnxruntime_equals_torch(built):
    """Drafter training data (`scripts/make_train_data.py --engine`): the target graph answers the prompts with the
    torch target's tokens, and the features it records for the drafter agree within fp32 (stored in fp16)."""
    from dflash_trt.runtime.engine_dir import read_engine_dir
    from dflash_trt.train import datagen

    target, drafter, engine = built
    prompts = [r.prompt for r in requests(97, n=6, seed=7)]
    layers = read_engine_dir(engine).drafter.target_layer_ids  # what the target graph captures: the drafter's
    assert layers == (0, 2)
    ort = load_engine_pipeline(engine, use_drafter=False).target
    got = datagen.generate_shard(ort, prompts, 16, (), SamplingParams(), 3)
    want = datagen.generate_shard(TorchTarget(load_target(target), layers), prompts, 16, (), SamplingParams(), 3)
    assert [g.tokens.tolist() for g in got] == [w.tokens.tolist() for w in want]
    assert [(g.start, len(g.tokens)) for g in got] == [(w.start, len(w.tokens)) for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.features.float(), w.features.float(), atol=2e-3, rtol=2e-3)


def _set_costs(cache: Path, label: str, decode_ms: float, step_ms: float) -> None:
    """Hand-write the cached step costs of `label` (as if measured on a machine where they are these)."""
    entries = json.loads(cache.read_text())
    for key, entry in entries.items():
        if f" | {label} calibration" in key:
            entry |= {"decode_ms": decode_ms, "step_ms": dict.fromkeys(entry["step_ms"], step_ms)}
    cache.write_text(json.dumps(entries))


def test_auto_backend_runs_the_backend_the_step_costs_make_fastest(built, tmp_path, monkeypatch, steady_machine):
    """`--backend auto` weighs the pair on torch and on its onnxruntime graphs: each calibrated once, compared by
    the expected ms per token of its own block choice, the faster one kept."""
    from dflash_trt.bench.calibration import choose_backend
    from dflash_trt.runtime.onnxruntime import OrtTarget

    monkeypatch.setenv("DFLASH_TRT_CACHE", str(tmp_path))
    target, drafter, engine = built
    candidates = {
        "torch fp32": functools.partial(load_pipeline, target, drafter),
        "onnxruntime": functools.partial(load_engine_pipeline, engine),
    }
    logs = []
    choose_backend(candidates, logs.append)
    cache = tmp_path / "calibration.json"
    labels = sorted(key.split(" | ")[1].removesuffix(" calibration v5") for key in json.loads(cache.read_text()))
    assert labels == ["onnxruntime", "torch fp32"] and sum("calibrating" in line for line in logs) == 2

    # torch: DFlash B=8 at 20 / 5.2 = 3.8 ms per token; onnxruntime: 5.0 ms (its DFlash, 30 / 5.2, loses to AR)
    _set_costs(cache, "torch fp32", 10.0, 20.0)
    _set_costs(cache, "onnxruntime", 5.0, 30.0)
    logs.clear()
    label, pipe, expected, choice = choose_backend(candidates, logs.append)
    assert label == "torch fp32" and not isinstance(pipe.target, OrtTarget)
    assert choice.block == 8 and choice.ms_per_token == pytest.approx(20 / 5.2)  # the winner's, for auto_block
    assert expected == pytest.approx({"torch fp32": 20 / 5.2, "onnxruntime": 5.0})
    assert "calibrating" not in "".join(logs) and "torch fp32 3.8, onnxruntime 5.0" in logs[-1]
    _set_costs(cache, "onnxruntime", 5.0, 10.0)  # now its DFlash: 10 / 5.2 = 1.9 ms per token
    label, pipe, _, choice = choose_backend(candidates, logs.append)
    assert label == "onnxruntime" and isinstance(pipe.target, OrtTarget) and choice.block == 8
    assert "torch fp32 3.8, onnxruntime 1.9" in logs[-1]
    # a backend the requests do not fit is not weighed, however fast
    label, _, expected, _ = choose_backend(
        candidates, logs.append, refusal=lambda p: isinstance(p.target, OrtTarget) and "full"
    )
    assert (
        label == "torch fp32"
        and list(expected) == ["torch fp32"]
        and "not weighing the onnxruntime backend: full" in logs
    )

    # sampling (no block choice): compared by one plain decoding step each, the speed probe
    label, _, probes, choice = choose_backend(candidates, logs.append, greedy=False)
    assert sorted(probes) == ["onnxruntime", "torch fp32"] and label == min(probes, key=probes.get)
    assert choice is None


def _fail(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_user_errors_exit_2(tiny, tmp_path, capsys):
    target, _, engine = tiny
    gen = ["generate", "--prompt", "w1", "--max-new-tokens", "2"]
    _fail(capsys, [*gen, "--engine", str(tmp_path / "nope")], "nope", "engine directory not found")
    _fail(capsys, [*gen, "--engine", str(engine), "--backend", "tensorrt"], "--backend tensorrt")
    _fail(capsys, [*gen, "--backend", "onnxruntime", "--target", str(target)], "--engine")
    _fail(capsys, [*gen, "--engine", str(engine), "--target", str(tmp_path)], "--engine replaces --target")
    broken = tmp_path / "broken"
    shutil.copytree(engine, broken)
    (broken / "onnx" / "rank0" / "drafter.onnx").unlink()
    _fail(capsys, [*gen, "--engine", str(broken)], str(broken / "onnx" / "rank0" / "drafter.onnx"))
    for field, edit in (
        ("build_config.max_seq_len", lambda c: c["build_config"].pop("max_seq_len")),
        ("mapping.tp_size", lambda c: c["pretrained_config"]["mapping"].update(tp_size=2)),
        ("num_hidden_layers", lambda c: c["pretrained_config"].update(num_hidden_layers=9)),
    ):
        bad = tmp_path / field
        shutil.copytree(engine, bad, ignore=shutil.ignore_patterns("*.onnx*"))
        cfg = json.loads((engine / "config.json").read_text())
        edit(cfg)
        (bad / "config.json").write_text(json.dumps(cfg))
        for name in ("target", "drafter"):
            for suffix in (".onnx", ".onnx.data"):
                src = engine / "onnx" / "rank0" / f"{name}{suffix}"
                if src.exists():
                    (bad / "onnx" / "rank0" / src.name).symlink_to(src)
        _fail(capsys, [*gen, "--engine", str(bad)], str(bad / "config.json"), field.split(".")[-1])
    _fail(capsys, [*gen, "--engine", str(engine), "--prompt", "w1 " * 400], "max_seq_len")


VOCAB, ALPHA, N, PROMPT = 8, 1e-4, 6000, [1, 4, 6]


@pytest.fixture(scope="module")
def sampling_engine(tmp_path_factory):
    """The vocab-8 pair of tests/test_sampling.py, sharpened the same way, as an engine."""
    root = tmp_path_factory.mktemp("ort_sampling")
    tdir = save_hf_target(root / "t", "llama", vocab=VOCAB, hidden=32, layers=2)
    ddir = save_zlab_drafter(
        root / "d",
        hf_config("llama", vocab=VOCAB, hidden=32, layers=2),
        block_size=4,
        layer_ids=(0, 1),
        mask_token_id=7,
    )
    target = load_target(tdir)
    drafter = load_drafter(ddir, target.cfg)
    with torch.no_grad():
        target.lm_head.weight.mul_(4.0)
    from dflash_trt.export import export_pair

    export_pair(
        target,
        drafter,
        root / "engine" / "onnx" / "rank0",
        dtype=torch.float32,
        max_batch=N,
        max_seq_len=16,
        block_size=4,
    )
    from dflash_trt.runtime.onnxruntime import Graph, OrtDrafter, OrtTarget

    ort_t = OrtTarget(Graph(root / "engine/onnx/rank0/target.onnx"), N, 16, VOCAB)
    ort_d = OrtDrafter(Graph(root / "engine/onnx/rank0/drafter.onnx"), 4, 7)
    return torch_runners(target, drafter)[0], ort_t, ort_d


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=1.0, top_k=6, top_p=0.9, seed=4),
    ],
    ids=["t1", "topk_topp"],
)
def test_speculative_sampling_matches_target_distribution(sampling_engine, params):
    ref_target, ort_t, ort_d = sampling_engine
    counts, gens = distribution.sample_counts(ort_t, ort_d, params, PROMPT, VOCAB, N)
    first_steps = torch.tensor([g.step_lengths[0] for g in gens])
    assert 0.05 < (first_steps > 1).float().mean() < 0.95  # both accept and reject paths are exercised
    assert distribution.chi_square_pvalue(counts, distribution.exact_joint(ref_target, params, PROMPT, VOCAB)) > ALPHA
