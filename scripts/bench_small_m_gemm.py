"""Why a B-token verify costs more than a decode step on this CPU under torch: the fp32 GEMMs of the embedded
target's layers at M = 1..16 rows (M = batch x block), three ways, with each weight streamed from memory (30
distinct copies per layer shape, as 30 layers are; the LM head once):

- `F.linear` (MKL's sgemm, what the torch backend runs);
- MKL with a prepacked weight (`torch.ops.mkl._mkl_linear` on `_mkl_reorder_linear_weight`, the cblas_sgemm_pack
  path that torch.compile's freezing uses for fp32);
- oneDNN with a prepacked weight (`torch.ops.mkldnn._linear_pointwise` on `_reorder_linear_weight`).

Reports ms per layer stack, effective GB/s of weight traffic and the cost relative to M = 1, plus each path's
largest relative error against a float64 product. Writes results/small_m_gemm.{json,md}.

    .venv/bin/python scripts/bench_small_m_gemm.py [--rows 1 2 3 4 6 8 12 16] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dflash_trt.bench.reporting import RunStart, write_report  # noqa: E402

# SmolLM2-135M: hidden 576, intermediate 1536, 9 q heads + 3 kv heads of 64, vocab 49152, 30 layers
SHAPES = {"wqkv": (960, 576, 30), "wo": (576, 576, 30), "w13": (3072, 576, 30), "w2": (576, 1536, 30)}
HEAD = {"lm_head": (49152, 576, 1)}


def paths(weights: list[torch.Tensor]) -> dict:
    """name -> callable(x, i) computing x @ weights[i].T."""
    mkl = [torch.ops.mkl._mkl_reorder_linear_weight(w, 1) for w in weights]
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w, 4) for w in weights]
    return {
        "F.linear (MKL)": lambda x, i: F.linear(x, weights[i]),
        "MKL prepacked": lambda x, i: torch.ops.mkl._mkl_linear(x, mkl[i], weights[i], None, x.shape[0]),
        "oneDNN prepacked": lambda x, i: torch.ops.mkldnn._linear_pointwise(x, onednn[i], None, "none", [], ""),
    }


def timed(call, n: int, repeats: int) -> float:
    """Median ms of calling call(i) for i in range(n)."""
    for i in range(n):
        call(i)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            call(i)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12, 16])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output-dir", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    start = RunStart.now()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    results = []
    for name, (n_out, n_in, copies) in (SHAPES | HEAD).items():
        weights = [torch.randn(n_out, n_in, generator=g) * n_in**-0.5 for _ in range(copies)]
        gigabytes = copies * n_out * n_in * 4 / 1e9
        for path, fn in paths(weights).items():
            for m in args.rows:
                x = torch.randn(m, n_in, generator=g)
                exact = x.double() @ weights[0].double().T
                error = ((fn(x, 0).double() - exact).abs().max() / exact.abs().max()).item()
                ms = timed(lambda i, x=x, fn=fn: fn(x, i), copies, args.repeats)
                results.append(
                    {"layer": name, "path": path, "rows": m, "ms": ms, "gb_per_s": gigabytes / ms * 1e3, "error": error}
                )
                print(f"{name} {path} M={m}: {ms:.2f} ms, {gigabytes / ms * 1e3:.1f} GB/s, rel err {error:.1e}")
    data = {"rows": args.rows, "threads": args.threads, "results": results}
    write_report(start, "small_m_gemm", data, markdown(data), out_dir=args.output_dir)


def markdown(data: dict) -> str:
    rows = data["rows"]
    lines = [
        "# fp32 GEMM cost by rows (M = batch x block), embedded target's layer shapes",
        "",
        f"{data['threads']} threads; each layer shape over its 30 distinct weights (the LM head once), so weights "
        "stream from memory as in a forward pass. Cell: ms (x M = 1). Effective bandwidth and errors in the JSON.",
        "",
        "| layer | path | " + " | ".join(f"M={m}" for m in rows) + " | max rel. error |",
        "|---|---|" + "---|" * len(rows) + "---|",
    ]
    by = {}
    for r in data["results"]:
        by.setdefault((r["layer"], r["path"]), []).append(r)
    for (layer, path), rs in by.items():
        base = rs[0]["ms"]
        cells = " | ".join(f"{r['ms']:.2f} ({r['ms'] / base:.2f}x)" for r in rs)
        lines.append(f"| {layer} | {path} | {cells} | {max(r['error'] for r in rs):.1e} |")
    totals = {}
    for r in data["results"]:
        totals.setdefault(r["path"], {}).setdefault(r["rows"], 0.0)
        totals[r["path"]][r["rows"]] += r["ms"]
    lines += ["", "Whole stack (30 layers + LM head):", "", "| path | " + " | ".join(f"M={m}" for m in rows) + " |"]
    lines.append("|---|" + "---|" * len(rows))
    for path, t in totals.items():
        lines.append(f"| {path} | " + " | ".join(f"{t[m]:.1f} ({t[m] / t[rows[0]]:.2f}x)" for m in rows) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
