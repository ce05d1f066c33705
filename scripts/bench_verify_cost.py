#!/usr/bin/env python
"""Verify-cost curve: CPU latency of one target forward over B new tokens (B = 1, 3, 4, 8, 16), batch 1.

DFlash's speedup on a given machine is tau * t_decode(1) / (t_verify(B) + t_draft(B)): this measures the
target side of that ratio on the embedded SmolLM2-135M-Instruct, with its fp32 linears on MKL's sgemm alone
(`mkl`) and as the torch runners run them (`prepacked`: oneDNN with prepacked weights from 4 rows on, see
`dflash_trt.runtime.prepacked`). Both targets and all B values are interleaved in random order within each
repetition so machine noise hits them alike; medians are reported.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from dflash_trt.bench.reporting import RunStart, write_report
from dflash_trt.dtypes import CLI_NAMES, torch_dtype


def main() -> None:
    start = RunStart.now()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", help="HF target directory (default: embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--context", type=int, nargs="+", default=[128, 512], help="committed tokens before the block")
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 3, 4, 8, 16], help="tokens per forward")
    ap.add_argument("--linears", nargs="+", choices=["mkl", "prepacked"], default=["mkl", "prepacked"])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--dtype", choices=sorted(CLI_NAMES), default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from dflash_trt.embedded import ensure_default_target
    from dflash_trt.runtime.loading import load_target
    from dflash_trt.runtime.prepacked import prepack_linears
    from dflash_trt.runtime.torch import TorchTarget

    directory = args.target or ensure_default_target()
    targets = {}
    for kind in args.linears:
        model = load_target(directory, torch_dtype(args.dtype))
        targets[kind] = TorchTarget(prepack_linears(model) if kind == "prepacked" else model)
    rng = random.Random(0)
    rows = []
    vocab = next(iter(targets.values())).vocab_size
    for ctx in args.context:
        prompt = torch.randint(0, vocab, (ctx,), generator=torch.Generator().manual_seed(ctx)).tolist()
        with torch.inference_mode():
            for target in targets.values():
                target.reset(1, ctx + max(args.blocks))
                target.prefill([prompt])
            runs = [(kind, b) for kind in targets for b in args.blocks]
            times = {run: [] for run in runs}
            for _ in range(3):  # warm-up
                for kind, b in runs:
                    targets[kind].verify(torch.randint(0, 1000, (1, b)))
            for _ in range(args.repeats):
                for kind, b in rng.sample(runs, len(runs)):
                    tokens = torch.randint(0, 1000, (1, b))
                    t0 = time.perf_counter()
                    targets[kind].verify(tokens)  # logits for all B positions, nothing committed
                    times[kind, b].append(time.perf_counter() - t0)
        for kind in targets:
            base = statistics.median(times[kind, args.blocks[0]])
            for b in args.blocks:
                med = statistics.median(times[kind, b])
                rows.append(
                    {
                        "linears": kind,
                        "context": ctx,
                        "block": b,
                        "ms": med * 1e3,
                        "ratio_to_first": med / base,
                        "ms_per_token": med * 1e3 / b,
                    }
                )
            print(
                f"{kind}, context {ctx}: "
                + ", ".join(
                    f"B={r['block']} {r['ms']:.1f}ms" for r in rows if r["context"] == ctx and r["linears"] == kind
                )
            )

    lines = ["| linears | context | B | ms per forward | x B=1 | ms per token |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['linears']} | {r['context']} | {r['block']} | {r['ms']:.1f} | {r['ratio_to_first']:.2f} "
        f"| {r['ms_per_token']:.2f} |"
        for r in rows
    ]
    note = (
        "\nA verify of B tokens costs `x B=1` decode steps: with a drafter pass costing t_draft, DFlash breaks "
        "even at tau = (t_verify(B) + t_draft) / t_decode(1).\n"
    )
    fig = _plot(rows)
    paths = write_report(
        start,
        "verify_cost",
        {"dtype": args.dtype, "rows": rows},
        f"# Verify cost on CPU, SmolLM2-135M-Instruct, batch 1, {args.dtype}\n\n" + "\n".join(lines) + "\n" + note,
        fig,
    )
    print("wrote " + ", ".join(map(str, paths)))


def _plot(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, ctx in sorted({(r["linears"], r["context"]) for r in rows}):
        pts = [r for r in rows if r["context"] == ctx and r["linears"] == kind]
        ax.plot(
            [r["block"] for r in pts], [r["ratio_to_first"] for r in pts], marker="o", label=f"{kind}, context {ctx}"
        )
    blocks = sorted({r["block"] for r in rows})
    ax.plot(blocks, blocks, ls=":", color="grey", label="linear in B")
    ax.set_xlabel("tokens per target forward (B)")
    ax.set_ylabel("latency / one-token decode")
    ax.set_title("Target verify cost, SmolLM2-135M, CPU")
    ax.set_ylim(0, max(r["ratio_to_first"] for r in rows) * 1.5)
    ax.legend()
    return fig


if __name__ == "__main__":
    main()
