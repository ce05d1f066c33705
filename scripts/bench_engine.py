"""torch vs onnxruntime backend (fp32 graphs, and the same graphs with `--weight-only int4`) on this CPU, side by
side on the same prompts: TPOT of autoregressive decoding and DFlash (block 4 and 8, batch 1 and 4), the cost of a
B-token verify, a one-token decode step and a drafter pass per backend, and the engine directory's export time and
graph sizes. Writes results/engine.{json,md,png}
(`dflash-trt build`'s TensorRT-RTX build times and plan sizes are results/engine_build.md).

The engine is an fp32 build of the embedded pair (`dflash-trt build --no-verify`, recipe written to a temporary
file) unless --engine names one. The four runs of each prompt batch (torch AR, onnxruntime AR, torch DFlash,
onnxruntime DFlash, and both int4 runs) are interleaved, their order rotated batch by batch, so machine noise hits
them alike.

    .venv/bin/python scripts/bench_engine.py [--engine DIR] [--num-prompts 4] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dflash_trt.bench import datasets  # noqa: E402
from dflash_trt.bench.calibration import step_costs  # noqa: E402
from dflash_trt.bench.reporting import RunStart, write_report  # noqa: E402
from dflash_trt.decoding.metrics import summarize  # noqa: E402
from dflash_trt.decoding.sampling import SamplingParams  # noqa: E402
from dflash_trt.decoding.speculative import generate  # noqa: E402
from dflash_trt.pipeline import load_engine_pipeline, load_pipeline  # noqa: E402

RECIPE = """max_batch_size: 8
max_input_len: 512
max_seq_len: 1024
block_size: 8
dtype: fp32
tp_size: 1
"""
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int4")
FP32 = ("torch", "onnxruntime")  # exact backends: all four of their runs must agree


def build_engine(out: Path) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(RECIPE)
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dflash_trt.cli",
            "build",
            "--config",
            f.name,
            "--output",
            str(out),
            "--no-verify",
            "--overwrite",
        ],
        check=True,
        cwd=ROOT,
    )
    return time.perf_counter() - start


def engine_facts(engine: Path) -> dict:
    onnx_dir = engine / "onnx" / "rank0"
    sizes = {p.name: p.stat().st_size for p in sorted(onnx_dir.iterdir()) if p.suffix in (".onnx", ".data")}
    info = json.loads((onnx_dir / "export.json").read_text())
    return {
        "engine": str(engine),
        "export_seconds": info.get("export_seconds"),
        "file_bytes": sizes,
        "dtype": info.get("dtype"),
        "opset": info.get("opset"),
    }


def main() -> None:
    start = RunStart.now()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, help="an fp32 engine directory of the embedded pair (default: build one)")
    ap.add_argument("--datasets", nargs="+", default=["humaneval", "mtbench"])
    ap.add_argument("--num-prompts", type=int, default=4, help="prompts per dataset")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--name", default="engine")
    ap.add_argument("--output-dir", type=Path, default=ROOT / "results")
    args = ap.parse_args()

    build_s = None
    engine = args.engine
    if engine is None:
        engine = Path(tempfile.mkdtemp(prefix="dflash_engine_")) / "smollm2-fp32"
        build_s = build_engine(engine)
    pipes = {
        "torch": load_pipeline(None, None),
        "onnxruntime": load_engine_pipeline(engine),
        "onnxruntime-int4": load_engine_pipeline(engine, weight_only="int4"),
    }
    ref = pipes["torch"]
    texts = [t for name in args.datasets for t in datasets.load(name, args.num_prompts)]
    requests = [ref.request(t, True, args.max_new_tokens) for t in texts]
    greedy = SamplingParams()
    rows = []
    for batch in args.batch_sizes:
        for block in args.block_sizes:
            gens = {(b, m): [] for b in BACKENDS for m in ("ar", "dflash")}
            wall = dict.fromkeys(gens, 0.0)
            runs = [(b, m) for m in ("ar", "dflash") for b in BACKENDS]
            for i in range(0, len(requests), batch):
                chunk = requests[i : i + batch]
                k = (i // batch) % len(runs)
                for backend, mode in runs[k:] + runs[:k]:
                    pipe = pipes[backend]
                    t0 = time.perf_counter()
                    gens[(backend, mode)] += generate(
                        pipe.target,
                        pipe.drafter if mode == "dflash" else None,
                        chunk,
                        greedy,
                        block if mode == "dflash" else None,
                    )
                    wall[(backend, mode)] += time.perf_counter() - t0
            s = {key: summarize(g, wall[key]) for key, g in gens.items()}
            row = {"batch": batch, "block": block, "requests": len(requests)}
            for backend in BACKENDS:
                row[backend] = {
                    "ar_tpot_ms": s[(backend, "ar")]["tpot_s"] * 1e3,
                    "dflash_tpot_ms": s[(backend, "dflash")]["tpot_s"] * 1e3,
                    "tau": s[(backend, "dflash")]["tau"],
                    "ar_tokens_per_s": s[(backend, "ar")]["tokens_per_s"],
                    "dflash_tokens_per_s": s[(backend, "dflash")]["tokens_per_s"],
                }
                row[backend]["tpot_speedup"] = row[backend]["ar_tpot_ms"] / row[backend]["dflash_tpot_ms"]
                pairs = list(zip(gens[(backend, "ar")], gens[(backend, "dflash")]))
                row[backend]["identical_ar_dflash"] = sum(a.tokens == d.tokens for a, d in pairs)
                row[backend]["first_divergence"] = sorted(
                    first_divergence(a.tokens, d.tokens) for a, d in pairs if a.tokens != d.tokens
                )
            row["identical_fp32"] = sum(
                len({tuple(gens[(b, m)][j].tokens) for b in FP32 for m in ("ar", "dflash")}) == 1
                for j in range(len(requests))
            )
            rows.append(row)
            parts = [
                f"{b} AR {row[b]['ar_tpot_ms']:.1f} ms, DFlash {row[b]['dflash_tpot_ms']:.1f} ms "
                f"(tau {row[b]['tau']:.2f})"
                for b in BACKENDS
            ]
            print(
                f"batch={batch} B={block}: "
                + "; ".join(parts)
                + f"; fp32 identical {row['identical_fp32']}/{len(requests)}",
                flush=True,
            )
    costs = {b: [step_costs(pipes[b], block) for block in args.block_sizes] for b in BACKENDS}
    data = {
        "engine": engine_facts(engine),
        "build_seconds": build_s,
        "max_new_tokens": args.max_new_tokens,
        "datasets": args.datasets,
        "num_prompts": args.num_prompts,
        "torch_draft_head_dtype": str(ref.drafter.head_dtype).removeprefix("torch."),
        "onnxruntime_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "rows": rows,
        "step_costs": costs,
    }
    paths = write_report(start, args.name, data, markdown(data), figure(data), args.output_dir)
    print("wrote " + ", ".join(map(str, paths)))


def first_divergence(a: list[int], b: list[int]) -> int:
    """The first output position where two generations differ (the shorter length if one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def markdown(data: dict) -> str:
    e = data["engine"]
    sizes = ", ".join(f"`{k}` {v / 2**20:.1f} MiB" for k, v in e["file_bytes"].items())
    export = ", ".join(f"{k} {v:.0f} s" for k, v in (e["export_seconds"] or {}).items())
    lines = [
        "# torch vs onnxruntime backend (embedded SmolLM2-135M-Instruct + its DFlash drafter, greedy)",
        "",
        f"Same prompts ({', '.join(data['datasets'])}, {data['num_prompts']} each, chat template, "
        f"{data['max_new_tokens']} new tokens), runs interleaved. TPOT = decode time per token after the first "
        "(prefill excluded). The torch drafter runs its LM head in "
        f"{data['torch_draft_head_dtype']}; onnxruntime runs the exported fp32 graphs "
        f"(opset {e['opset']}: Attention + RMSNormalization ops) with {data['onnxruntime_threads']} intra-op threads "
        f"(idle threads do not spin); onnxruntime-int4 runs the same graphs with `--weight-only int4` (MatMulNBits, "
        f"blocks of 32, int8 compute). OMP_WAIT_POLICY: {data['omp_wait_policy'] or 'unset (OpenMP default)'}.",
        "",
        "| batch | B | backend | AR TPOT | DFlash TPOT | tau | DFlash speedup | AR == DFlash | first divergence |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        for backend in BACKENDS:
            b = r[backend]
            lines.append(
                f"| {r['batch']} | {r['block']} | {backend} | {b['ar_tpot_ms']:.1f} ms | "
                f"{b['dflash_tpot_ms']:.1f} ms | {b['tau']:.2f} | {b['tpot_speedup']:.2f}x | "
                f"{b['identical_ar_dflash']}/{r['requests']} | "
                f"{', '.join(map(str, b.get('first_divergence', []))) or '-'} |"
            )
    lines += [
        "",
        "DFlash speedup = AR TPOT / DFlash TPOT on the same backend (> 1: DFlash is faster). AR == DFlash: prompts "
        "whose DFlash output equals AR's on that backend (exact in fp32; int8 compute may round differently at "
        "M = 1 and M = B); first divergence: for each prompt whose outputs differ, the first output token where "
        "they do. fp32 runs identical across torch and onnxruntime (all four): "
        + ", ".join(f"b={r['batch']} B={r['block']} {r['identical_fp32']}/{r['requests']}" for r in data["rows"])
        + ".",
        "",
        "## Verify cost vs decode cost (batch 1, context 256, medians)",
        "",
        "| backend | B | decode step | B-token verify | verify/decode | drafter pass | break-even tau |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, costs in data["step_costs"].items():
        for c in costs:
            lines.append(
                f"| {backend} | {c['block']} | {c['decode_ms']:.1f} ms | {c['verify_ms']:.1f} ms | "
                f"{c['verify_over_decode']:.2f} | {c['draft_ms']:.1f} ms | {c['break_even_tau']:.2f} |"
            )
    build = f"; whole `dflash-trt build --no-verify` {data['build_seconds']:.0f} s" if data["build_seconds"] else ""
    lines += [
        "",
        "## Engine directory",
        "",
        f"fp32 export of rank 0: {export}{build}. Files: {sizes}.",
        "TensorRT-RTX build times and plan sizes (fp16/bf16): see `engine_build.md`.",
    ]
    return "\n".join(lines) + "\n"


def figure(data: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tpot, ax_cost) = plt.subplots(1, 2, figsize=(12, 4))
    rows = data["rows"]
    labels = [f"b={r['batch']} B={r['block']}" for r in rows]
    width = 0.13
    for i, (backend, mode) in enumerate([(b, m) for b in BACKENDS for m in ("ar", "dflash")]):
        ax_tpot.bar(
            [x + (i - 2.5) * width for x in range(len(rows))],
            [r[backend][f"{mode}_tpot_ms"] for r in rows],
            width,
            label=f"{backend} {mode.upper() if mode == 'ar' else 'DFlash'}",
        )
    ax_tpot.set_xticks(range(len(rows)), labels)
    ax_tpot.set_ylabel("TPOT (ms)")
    ax_tpot.set_title("TPOT per backend (lower is better)")
    ax_tpot.legend(fontsize=8)
    cost_rows = [(b, c) for b, cs in data["step_costs"].items() for c in cs]
    for j, key in enumerate(("decode_ms", "verify_ms", "draft_ms")):
        ax_cost.bar(
            [x + (j - 1) * 0.25 for x in range(len(cost_rows))],
            [c[key] for _, c in cost_rows],
            0.25,
            label=key.removesuffix("_ms"),
        )
    ax_cost.set_xticks(range(len(cost_rows)), [f"{b}\nB={c['block']}" for b, c in cost_rows], fontsize=8)
    ax_cost.set_ylabel("ms (batch 1, context 256)")
    ax_cost.set_title("Step costs")
    ax_cost.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
