#!/usr/bin/env python
"""Serving benchmark on the real Triton server (nvidia-pytriton's tritonserver, CPU, 127.0.0.1 only).

Levels (default): for each of AR and DFlash and each concurrency C in --concurrency, a `deploy triton --kind python`
repository of the embedded pair with max batch C is served and C client threads each send --requests-per-stream
streaming GRPC requests (chat-formatted prompts from the bench datasets, --max-tokens each), back to back. The DFlash
server chooses its block size (or plain decoding) when it loads, from the drafter's acceptance and this machine's step
costs at max batch C, and the row reports that choice (from the server's log). Reported:
total output tokens/s, TTFT, inter-token latency (ITL = decode time / (tokens - 1)), tokens/s per user
(tokens / end-to-end time, per request) and per-request tau (from the response's `tau` output). Writes
results/serve.{json,md,png}; the PNG is throughput vs interactivity (tokens/s/user on x, total tokens/s on y).

--soak MIN: one DFlash server at max batch 8, 8 streams sending requests for MIN minutes (bounded), counting requests
served and errors and sampling the server's RSS (tritonserver + its Python stubs) every --rss-every seconds.
Writes results/serve_soak.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from dflash_trt.bench.reporting import RunStart, write_report
from dflash_trt.cli import main as cli
from dflash_trt.deploy.client import grpc_generate, grpc_inputs, metrics
from dflash_trt.deploy.server import TritonServer

MODEL = "dflash"


def prompts(n: int) -> list[str]:
    """Chat-formatted prompts (the drafter was trained on chat), from the bench datasets."""
    from dflash_trt.bench.datasets import load
    from dflash_trt.embedded import ensure_default_target
    from dflash_trt.pipeline import load_tokenizer

    tok = load_tokenizer(ensure_default_target())
    half = n // 2 + 1
    rows = [p for pair in zip(load("humaneval", half), load("mtbench", half)) for p in pair][:n]
    return [
        tok.apply_chat_template([{"role": "user", "content": row}], add_generation_prompt=True, tokenize=False)
        for row in rows
    ]


def serve(root: Path, max_batch: int, drafter: bool, max_tokens: int) -> TritonServer:
    repo = root / f"repo-{'dflash' if drafter else 'ar'}-{max_batch}"
    args = [
        "deploy",
        "triton",
        "--kind",
        "python",
        "--output",
        str(repo),
        "--max-batch",
        str(max_batch),
        "--max-seq-len",
        "1024",
        "--max-tokens-limit",
        str(max_tokens),
    ]
    assert cli(args + ([] if drafter else ["--no-drafter"])) == 0
    logs = Path(tempfile.gettempdir()) / "dflash-bench-serve-logs"  # kept after the run
    logs.mkdir(exist_ok=True)
    return TritonServer(repo, log_path=logs / f"{repo.name}.log").start(300)


def chosen(srv: TritonServer) -> str:
    """What the model chose when it loaded (the server log's last "chose ... from the drafter's acceptance" line:
    the log is appended to across runs)."""
    for line in reversed(Path(srv.log_path).read_text(errors="replace").splitlines()):
        if " chose " in line and "from the drafter's acceptance" in line:
            return line.split(" chose ", 1)[1].split(" from the drafter's acceptance")[0]
    return "the drafter's trained block (no acceptance.json)"


def run_streams(
    srv: TritonServer, texts: list[str], streams: int, per_stream: int, max_tokens: int, until: float | None = None
) -> tuple[list, float]:
    """`streams` client threads, each sending its requests back to back; returns (replies, wall seconds)."""
    replies: list = []
    lock = threading.Lock()

    def client(i: int) -> None:
        k = 0
        while k < per_stream and (until is None or time.monotonic() < until):
            text = texts[(i * per_stream + k) % len(texts)]
            reply = grpc_generate(srv.grpc_url, MODEL, grpc_inputs(text, max_tokens), timeout_s=600)
            with lock:
                replies.append(reply)
            k += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies, time.perf_counter() - t0


def summarize(replies: list, wall: float) -> dict:
    ok = [r for r in replies if r.error is None and r.outputs]
    tokens = [int(r.outputs["output_tokens"][0]) for r in ok]
    itl = [(r.e2e_s - r.ttft_s) / (n - 1) for r, n in zip(ok, tokens) if n > 1]
    return {
        "requests": len(replies),
        "errors": len(replies) - len(ok),
        "output_tokens": sum(tokens),
        "wall_s": wall,
        "throughput_tok_s": sum(tokens) / wall,
        "tok_s_per_user": statistics.mean(n / r.e2e_s for r, n in zip(ok, tokens)),
        "ttft_ms_mean": 1e3 * statistics.mean(r.ttft_s for r in ok),
        "ttft_ms_p50": 1e3 * statistics.median(r.ttft_s for r in ok),
        "itl_ms_mean": 1e3 * statistics.mean(itl),
        "itl_ms_p50": 1e3 * statistics.median(itl),
        "tau_mean": statistics.mean(float(r.outputs["tau"][0]) for r in ok),
        "tau_per_request": [round(float(r.outputs["tau"][0]), 3) for r in ok],
    }


def levels(args, start: RunStart) -> None:
    texts = prompts(max(args.concurrency) * args.requests_per_stream)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for c in args.concurrency:
            for drafter in (False, True):
                srv = serve(Path(tmp), c, drafter, args.max_tokens)
                try:
                    grpc_generate(srv.grpc_url, MODEL, grpc_inputs(texts[0], 8), timeout_s=120)  # warm-up
                    replies, wall = run_streams(srv, texts, c, args.requests_per_stream, args.max_tokens)
                    steps = metrics(srv.metrics_url).get("dflash_steps_total", 0)
                    choice = chosen(srv) if drafter else "autoregressive decoding (--no-drafter)"
                finally:
                    srv.stop()
                row = {
                    "mode": "dflash" if drafter else "ar",
                    "concurrency": c,
                    "chosen": choice,
                    "steps": steps,
                    **summarize(replies, wall),
                }
                print({k: v for k, v in row.items() if k != "tau_per_request"}, flush=True)
                results.append(row)
    md = [
        "| mode | streams | requests | errors | total tok/s | tok/s/user | TTFT mean / p50 (ms) "
        "| ITL mean / p50 (ms) | tau mean | ran |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        md.append(
            f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['throughput_tok_s']:.1f} "
            f"| {r['tok_s_per_user']:.2f} | {r['ttft_ms_mean']:.0f} / {r['ttft_ms_p50']:.0f} "
            f"| {r['itl_ms_mean']:.0f} / {r['itl_ms_p50']:.0f} | {r['tau_mean']:.2f} | {r['chosen']} |"
        )
    ar = {r["concurrency"]: r["throughput_tok_s"] for r in results if r["mode"] == "ar"}
    ratios = ", ".join(
        f"{r['throughput_tok_s'] / ar[r['concurrency']]:.2f}x at {r['concurrency']}"
        for r in results
        if r["mode"] == "dflash"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for mode, marker in (("ar", "o"), ("dflash", "s")):
        rows = [r for r in results if r["mode"] == mode]
        ax.plot(
            [r["tok_s_per_user"] for r in rows],
            [r["throughput_tok_s"] for r in rows],
            marker=marker,
            label={"ar": "autoregressive", "dflash": "DFlash"}[mode],
        )
        for r in rows:
            ax.annotate(
                f"C={r['concurrency']}",
                (r["tok_s_per_user"], r["throughput_tok_s"]),
                fontsize=8,
                textcoords="offset points",
                xytext=(4, 4),
            )
    ax.set_xlabel("tokens/s per user (interactivity)")
    ax.set_ylabel("total output tokens/s (throughput)")
    ax.set_title("Triton (CPU) serving the embedded SmolLM2-135M pair")
    ax.grid(alpha=0.3)
    ax.legend()
    taus = [r["tau_mean"] for r in results if r["mode"] == "dflash"] or [0.0]
    tau_lo, tau_hi = min(taus), max(taus)
    text = (
        f"Real tritonserver 2.51 (nvidia-pytriton) on CPU, `deploy triton --kind python` repository of the "
        f"embedded SmolLM2-135M-Instruct + its trained drafter (fp32, torch), one server per row with max batch "
        f"= streams; {args.requests_per_stream} requests per stream, max_tokens {args.max_tokens}, greedy, "
        "chat-formatted HumanEval/MT-bench prompts, streaming GRPC clients (tritonclient) on 127.0.0.1.\n\n"
        + "\n".join(md)
        + "\n\nITL = (last response - first response) / (tokens - 1) per request; tokens/s/user = "
        "tokens / end-to-end time per request; tau = tokens committed per verify step (bonus included), per "
        f"request, averaged; ran = what the server ran (DFlash rows: its choice when it loaded). Served tau "
        f"{tau_lo:.2f}-{tau_hi:.2f}; DFlash server / AR server total tokens/s by streams: {ratios} (break-even "
        "tau in results/bench.md and results/verify_cost.md). The 10-minute soak is in "
        "[serve_soak.md](serve_soak.md).\n"
    )
    write_report(start, "serve", {"args": vars(args), "results": results}, text, fig)


def server_rss(srv: TritonServer) -> int:
    """RSS bytes of every process in the server's process group (server + stubs)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != srv.process.pid:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ProcessLookupError):
            continue
    return total


def soak(args, start: RunStart) -> None:
    texts = prompts(64)
    samples = []
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        srv = serve(Path(tmp), 8, True, args.max_tokens)
        try:
            t0 = time.monotonic()
            until = t0 + 60 * args.soak
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    samples.append((time.monotonic() - t0, server_rss(srv)))
                    stop.wait(args.rss_every)

            sampler = threading.Thread(target=sample)
            sampler.start()
            replies, wall = run_streams(srv, texts, 8, 10**6, args.max_tokens, until=until)
            stop.set()
            sampler.join()
            final = metrics(srv.metrics_url)
        finally:
            code = srv.stop()
    s = summarize(replies, wall)
    rss = [r for _, r in samples]
    data = {
        "minutes": args.soak,
        "streams": 8,
        **s,
        "server_exit_code": code,
        "active_rows_at_end": final.get("dflash_active_rows"),
        "rss_mib": [(round(t, 1), round(r / 2**20, 1)) for t, r in samples],
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.plot([t / 60 for t, _ in samples], [r / 2**20 for r in rss])
    ax.set_xlabel("minutes")
    ax.set_ylabel("server RSS (MiB, tritonserver + stubs)")
    ax.set_title(f"{args.soak}-minute soak, 8 DFlash streams")
    ax.grid(alpha=0.3)
    text = (
        f"{args.soak}-minute soak: one tritonserver (max batch 8, DFlash, embedded pair) and 8 streaming GRPC "
        f"clients sending max_tokens {args.max_tokens} requests back to back.\n\n"
        f"| requests served | errors | output tokens | total tok/s | TTFT mean (ms) | ITL mean (ms) | tau mean "
        f"| RSS first / max / last (MiB) | active rows at end | server exit code |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {s['requests'] - s['errors']} | {s['errors']} | {s['output_tokens']} | {s['throughput_tok_s']:.1f} "
        f"| {s['ttft_ms_mean']:.0f} | {s['itl_ms_mean']:.0f} | {s['tau_mean']:.2f} "
        f"| {rss[0] / 2**20:.0f} / {max(rss) / 2**20:.0f} / {rss[-1] / 2**20:.0f} "
        f"| {final.get('dflash_active_rows', 0):.0f} | {code} |\n"
    )
    write_report(start, "serve_soak", {k: v for k, v in data.items() if k != "tau_per_request"}, text, fig)


def main() -> None:
    start = RunStart.now()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--requests-per-stream", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--soak", type=float, help="run the soak for this many minutes instead of the levels")
    ap.add_argument("--rss-every", type=float, default=10.0)
    args = ap.parse_args()
    soak(args, start) if args.soak else levels(args, start)


if __name__ == "__main__":
    main()
