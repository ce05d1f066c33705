"""`dflash-trt build` of the embedded recipe in fp16 and bf16 on this CPU: export and TensorRT-RTX build times, graph
and plan sizes, fused attention per graph; plus the `--dry-run` memory plans of the shipped recipes.
Writes results/engine_build.{json,md,png} (the torch vs onnxruntime comparison is results/engine.md).

    .venv/bin/python scripts/bench_build.py [--dtypes fp16 bf16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dflash_trt.bench.reporting import RunStart, write_report  # noqa: E402
from dflash_trt.checkpoint.plan import human_bytes  # noqa: E402
from dflash_trt.engine.plan import format_plan, make_build_plan, read_pair  # noqa: E402
from dflash_trt.engine.recipe import load_recipe  # noqa: E402

RECIPE = ROOT / "build_configs" / "build_smollm2_135m_cpu.yaml"
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
DRY_RUNS = {
    "build_qwen3_8b_b16_h100": ("qwen3-8b", "qwen3-8b-dflash-b16"),
    "build_qwen3_8b_b16_b200": ("qwen3-8b", "qwen3-8b-dflash-b16"),
    "build_llama3.1_8b_h100": ("llama-3.1-8b-instruct", "llama-3.1-8b-instruct-dflash"),
    "build_gpt_oss_120b_tp8_b300": ("gpt-oss-120b", "gpt-oss-120b-dflash"),
}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_once(dtype: str, tmp: Path, plugin_lib: str | None) -> dict:
    recipe = tmp / f"smollm2_{dtype}.yaml"
    recipe.write_text(RECIPE.read_text().replace("dtype: fp16", f"dtype: {dtype}"))
    out = tmp / f"engine-{dtype}"
    cmd = [sys.executable, "-m", "dflash_trt.cli", "build", "--config", str(recipe), "--output", str(out)]
    if plugin_lib:
        cmd += ["--plugin-lib", plugin_lib]
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode:
        raise SystemExit(f"build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "build_report.json").read_text())
    export = report["export"]["rank0"]
    graphs = {}
    for rep in report["verification"]:
        g = rep["graph"]
        kernels = sorted({k.split("_0x")[0] for k in rep["fused_attention"].values()})
        graphs[g] = {
            "export_seconds": round(export["export_seconds"][g], 1),
            "onnx_bytes": export["onnx_bytes"][g],
            "onnx_data_bytes": export["data_bytes"][g],
            "rtx_build_seconds": rep["build_seconds"],
            "rtx_plan_bytes": rep["plan_bytes"],
            "rtx_engine_layers": rep["engine_layers"],
            "network_layers": rep["network_layers"],
            "attention_nodes": len(rep["attention_nodes"]),
            "attention_fused": len(rep["fused_attention"]),
            "fused_kernels": kernels,
            "activation_bytes": rep["activation_bytes"],
            "weights_bytes": rep["weights_bytes"],
        }
    return {
        "dtype": dtype,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "load_seconds": export["load_seconds"],
        "graphs": graphs,
        "message": report["message"],
        "engine_dir_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }


def markdown(runs: list[dict], dry: dict[str, str]) -> str:
    lines = [
        "# `dflash-trt build`: export and TensorRT-RTX build of the embedded pair (CPU)",
        "",
        "SmolLM2-135M-Instruct (30 layers) + its shipped DFlash drafter (2 layers), recipe "
        "`build_configs/build_smollm2_135m_cpu.yaml` (batch <= 4, prompt <= 512, max_seq_len 1024, block 8, "
        "profiles prefill + step). No datacenter TensorRT here: every graph is built with TensorRT-RTX 1.7.1 on "
        "the CPU to verify it (plans measured and dropped), no engine is written. Times are wall clock on a "
        "shared 2-core machine (the load average is in the header); CPU seconds are the build process's own. "
        "The torch vs onnxruntime comparison of the same graphs is in [engine.md](engine.md).",
        "",
        "| dtype | graph | export s | ONNX (graph + weights) | TRT-RTX build s | plan | engine layers | "
        "attention fused | kernel | activation memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for g, r in run["graphs"].items():
            lines.append(
                f"| {run['dtype']} | {g} | {r['export_seconds']} | {human_bytes(r['onnx_bytes'])} + "
                f"{human_bytes(r['onnx_data_bytes'])} | {r['rtx_build_seconds']:.1f} | "
                f"{human_bytes(r['rtx_plan_bytes'])} | {r['rtx_engine_layers']} | "
                f"{r['attention_fused']}/{r['attention_nodes']} | "
                f"{', '.join(r['fused_kernels'])} | {human_bytes(r['activation_bytes'] or 0)} |"
            )
    lines += ["", "| dtype | whole build wall s | CPU s | ENGINE_DIR size |", "|---|---|---|---|"]
    lines += [
        f"| {r['dtype']} | {r['wall_seconds']} | {r['cpu_seconds']} | {human_bytes(r['engine_dir_bytes'])} |"
        for r in runs
    ]
    lines += [
        "",
        "Fused attention is read from each build: every ONNX `Attention` node became a TensorRT "
        "`IAttention` with `decomposable` off (TensorRT refuses such a build unless a dedicated kernel exists), "
        "and the engine's layer list (ProfilingVerbosity.DETAILED) names the kernel implementing each node. "
        "TensorRT-RTX plans target SM75-SM89 and SM120/SM121 only: they verify the graphs, they are not the "
        "H100/B200/B300 engines.",
        "",
        "## `--dry-run` plans of the shipped recipes (config.json only)",
        "",
    ]
    for name, text in dry.items():
        lines += [f"### {name}", "", "```", text, "```", ""]
    return "\n".join(lines)


def figure(runs: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['dtype']}\n{g}" for r in runs for g in r["graphs"]]
    xs = range(len(labels))
    export = [r["graphs"][g]["export_seconds"] for r in runs for g in r["graphs"]]
    rtx = [r["graphs"][g]["rtx_build_seconds"] for r in runs for g in r["graphs"]]
    ax1.bar([x - 0.2 for x in xs], export, 0.4, label="ONNX export")
    ax1.bar([x + 0.2 for x in xs], rtx, 0.4, label="TensorRT-RTX build")
    ax1.set_xticks(list(xs), labels)
    ax1.set_ylabel("seconds (wall)")
    ax1.legend()
    ax1.set_title("time per graph")
    onnx_mb = [
        (r["graphs"][g]["onnx_bytes"] + r["graphs"][g]["onnx_data_bytes"]) / 2**20 for r in runs for g in r["graphs"]
    ]
    plan_mb = [r["graphs"][g]["rtx_plan_bytes"] / 2**20 for r in runs for g in r["graphs"]]
    ax2.bar([x - 0.2 for x in xs], onnx_mb, 0.4, label="ONNX + weights")
    ax2.bar([x + 0.2 for x in xs], plan_mb, 0.4, label="TensorRT-RTX plan")
    ax2.set_xticks(list(xs), labels)
    ax2.set_ylabel("MiB")
    ax2.legend()
    ax2.set_title("size per graph")
    fig.tight_layout()
    return fig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"])
    ap.add_argument("--plugin-lib", help="default: the build's own choice")
    args = ap.parse_args()
    start = RunStart.now()
    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        runs = [build_once(d, Path(tmp), args.plugin_lib) for d in args.dtypes]
    dry = {}
    for name, (target, drafter) in DRY_RUNS.items():
        plan = make_build_plan(
            read_pair(CONFIGS / target, CONFIGS / drafter), load_recipe(ROOT / "build_configs" / f"{name}.yaml")
        )
        text = format_plan(plan)
        dry[name] = text.splitlines()[1].strip() + "\n" + text.split("\nmemory per rank:\n", 1)[1]
    paths = write_report(start, "engine_build", {"runs": runs, "dry_runs": dry}, markdown(runs, dry), figure(runs))
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
