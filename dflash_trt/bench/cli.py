"""`dflash-trt bench`: tau, per-position acceptance and speedup of DFlash vs the autoregressive baseline.

Both run on the same backend, weights and prompts, interleaved batch by batch so machine noise hits them
alike. With no model arguments the embedded pair runs on the backend `generate` would choose (--backend auto: torch
or its cached onnxruntime graphs, whichever this machine's step costs make faster at the smallest batch).
Speedup is z-lab's: mean TPOT (decode only, prefill excluded) of the baseline / that of DFlash.
Without --block-sizes each drafter runs, at each batch size, at the block size its acceptance.json and this
machine's step costs at that batch recommend (as `generate` does; the best-expected block when plain decoding
is expected to win, so the table still measures DFlash), and the report says which. Several --drafter
directories are compared side by side on the same target and prompts. Optionally, side by side at batch 1 and
T=0: z-lab's own `dflash_generate` on identical weights (outputs must be identical), HF transformers' plain
greedy decoding with a static cache (our greedy output must equal it) and HF prompt-lookup decoding. Writes
JSON + Markdown + PNG to results/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dflash_trt.bench.calibration import choose_backend, choose_for, step_costs
from dflash_trt.bench.reporting import RESULTS, RunStart, write_report
from dflash_trt.config import read_json
from dflash_trt.decoding.metrics import summarize
from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.decoding.speculative import Request, generate
from dflash_trt.errors import UserError
from dflash_trt.pipeline import Pipeline, add_engine_args, backend_label, load_engine_args, load_pipeline


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `bench`."""
    p = sub.add_parser(
        "bench",
        help="benchmark tau and speedup vs the autoregressive baseline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", type=Path, help="HF target directory (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument(
        "--drafter",
        type=Path,
        nargs="+",
        help="z-lab drafter directories, compared side by side (default: the embedded drafter)",
    )
    add_engine_args(p)
    p.add_argument(
        "--datasets",
        nargs="+",
        default=["humaneval", "mtbench"],
        help='humaneval, mtbench, or .jsonl files of {"prompt": ...} (default: humaneval mtbench)',
    )
    p.add_argument("--num-prompts", type=int, default=16, help="prompts per dataset (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument(
        "--block-sizes",
        type=int,
        nargs="+",
        help="block sizes to run (default: the one acceptance.json and this machine's step costs recommend, "
        "else the drafter's trained one)",
    )
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--compare-zlab", action="store_true", help="also run z-lab's dflash_generate (batch 1, T=0)")
    p.add_argument(
        "--compare-hf",
        action="store_true",
        help="also run HF transformers greedy generate with a static cache (batch 1, T=0): its speed, and whether "
        "our outputs equal its",
    )
    p.add_argument(
        "--compare-prompt-lookup",
        action="store_true",
        help="also run HF transformers prompt-lookup decoding (batch 1, T=0)",
    )
    p.add_argument("--name", default="bench", help="report name: results/<name>.{json,md,png} (default bench)")
    p.add_argument("--output-dir", type=Path, default=RESULTS, help="where reports go (default results/)")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from dflash_trt.bench import datasets

    start = RunStart.now()
    torch.manual_seed(args.seed)
    compare = args.compare_zlab or args.compare_hf or args.compare_prompt_lookup
    from dflash_trt.engine.default import runs_embedded_pair, use_embedded_engine

    embedded = runs_embedded_pair(args)
    use_embedded_engine(args)
    if args.engine is not None and compare:
        raise UserError(
            "--compare-zlab/--compare-hf/--compare-prompt-lookup run HF directories; drop them with --engine or "
            "--backend onnxruntime"
        )
    if args.engine is not None and args.drafter:
        raise UserError("--engine brings its own drafter; drop --drafter")
    engine = load_engine_args(args, True)
    label = backend_label(args.engine is not None, args.backend, args.weight_only)  # fp32: bench has no --dtype
    expected: dict[str, float] = {}  # the backend choice's expected ms per token, per backend weighed
    if engine:
        pipes = [engine]
    elif args.backend == "auto" and embedded and not compare:
        from dflash_trt.engine.default import embedded_candidates

        candidates = embedded_candidates(True, _log)
        label, pipe, expected, _ = choose_backend(candidates, _log, min(args.batch_sizes), 0 in args.temperatures)
        pipes = [pipe]
    else:
        pipes = [load_pipeline(args.target, d) for d in args.drafter or [None]]
    if pipes[0].drafter is None:
        raise UserError("bench needs a drafter: pass --drafter DIR (no drafter is shipped for this target)")
    prompts = {name: datasets.load(name, args.num_prompts) for name in args.datasets}
    rows, drafters = [], []
    for pipe in pipes:
        name = drafter_name(pipe)
        chosen = {batch: _blocks(args, pipe, label, batch) for batch in args.batch_sizes}
        drafters.append(
            {
                "name": name,
                "dir": str(pipe.drafter_dir),
                "blocks": {str(b): blocks for b, (blocks, _) in chosen.items()},
                "choice": {str(b): why for b, (_, why) in chosen.items()},
            }
        )
        for batch, (blocks, why) in chosen.items():
            print(f"{name}, batch {batch}: B={blocks} ({why})")
        for dataset, texts in prompts.items():
            requests = [pipe.request(t, not args.no_chat, args.max_new_tokens) for t in texts]
            for temperature in args.temperatures:
                params = SamplingParams(temperature, args.top_k, args.top_p, args.seed)
                for batch in args.batch_sizes:
                    for block in chosen[batch][0]:
                        row = _run_pair(pipe, requests, params, batch, block)
                        rows.append({"dataset": dataset, "drafter": name, "temperature": temperature, "batch": batch})
                        rows[-1] |= row
                        print(_row_line(rows[-1]))
    first = str(min(args.batch_sizes))  # step costs (batch 1) and peers (batch 1) at the smallest batch's blocks
    costs = [{"drafter": d["name"]} | step_costs(p, b) for p, d in zip(pipes, drafters) for b in d["blocks"][first]]
    peers = _run_peers(args, pipes, [d["blocks"][first][0] for d in drafters], prompts) if compare else []
    pipe = pipes[0]
    data = {
        "target": str(pipe.target_dir),
        "drafters": drafters,
        "backend": label,
        "backend_choice": expected,
        "target_dtype": str(pipe.target.dtype).removeprefix("torch."),
        "draft_head_dtype": str(pipe.drafter.head_dtype).removeprefix("torch."),
        "max_new_tokens": args.max_new_tokens,
        "num_prompts": args.num_prompts,
        "rows": rows,
        "step_costs": costs,
        "peers": peers,
    }
    paths = write_report(start, args.name, data, _markdown(data), _figure(rows), args.output_dir)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _run_pair(pipe: Pipeline, requests: list[Request], params: SamplingParams, batch: int, block: int):
    """Baseline and DFlash over the same requests, alternating which goes first per batch."""
    ar, spec, wall = [], [], {"ar": 0.0, "dflash": 0.0}
    for i in range(0, len(requests), batch):
        chunk = requests[i : i + batch]
        order = [("ar", None, ar), ("dflash", pipe.drafter, spec)]
        for label, drafter, out in order if (i // batch) % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            out += generate(pipe.target, drafter, chunk, params, block if drafter else None)
            wall[label] += time.perf_counter() - start
    s_ar, s_spec = summarize(ar, wall["ar"]), summarize(spec, wall["dflash"])
    row = {
        "block": block,
        "tau": s_spec["tau"],
        "position_acceptance": s_spec["position_acceptance"],
        "histogram": s_spec["histogram"],
        "ar_tpot_ms": s_ar["tpot_s"] * 1e3,
        "dflash_tpot_ms": s_spec["tpot_s"] * 1e3,
        "tpot_speedup": s_ar["tpot_s"] / s_spec["tpot_s"],
        "ar_tokens_per_s": s_ar["tokens_per_s"],
        "dflash_tokens_per_s": s_spec["tokens_per_s"],
        "e2e_speedup": s_spec["tokens_per_s"] / s_ar["tokens_per_s"],
        "identical_outputs": sum(a.tokens == b.tokens for a, b in zip(ar, spec)),
        "requests": len(requests),
    }
    return row


def drafter_name(pipe: Pipeline) -> str:
    """The drafter's architecture as its config.json names it (DFlashDraftModel, DFlash2DraftModel; an engine
    directory's as `dflash-trt build` records it), with the size of its draft vocabulary when it drafts from one."""
    cfg = read_json(pipe.drafter_dir / "config.json")
    built = cfg.get("pretrained_config", {}).get("drafter", {})  # an engine directory's config.json
    name = (cfg.get("architectures") or [built.get("architecture", pipe.drafter_dir.name)])[0]
    return name if pipe.drafter.vocab is None else f"{name}, {len(pipe.drafter.vocab)}-token draft vocab"


def _blocks(args: argparse.Namespace, pipe: Pipeline, label: str, batch: int) -> tuple[list[int], str]:
    """Block sizes to run at `batch` and why: --block-sizes, else the block choice (`generate`'s at that batch),
    else the trained one."""
    if args.block_sizes:
        return args.block_sizes, "--block-sizes"
    choice = choose_for(pipe, label, _log, batch)
    if choice is None:
        return [pipe.drafter.block_size], "trained block size; the drafter ships no acceptance.json"
    best = choice.block or max(choice.speedups, key=choice.speedups.get)
    return [best], f"block choice for {label}: {choice.describe()}"


def _log(msg: str) -> None:
    print(f"dflash-trt: {msg}", flush=True)


def _row_line(r: dict) -> str:
    return (
        f"{r['dataset']:>10} T={r['temperature']:g} batch={r['batch']} B={r['block']}: tau={r['tau']:.2f} "
        f"TPOT {r['ar_tpot_ms']:.1f} -> {r['dflash_tpot_ms']:.1f} ms ({r['tpot_speedup']:.2f}x), "
        f"tok/s {r['ar_tokens_per_s']:.1f} -> {r['dflash_tokens_per_s']:.1f}"
    )


def _run_peers(args, pipes: list[Pipeline], blocks: list[int], prompts: dict) -> list[dict]:
    from dflash_trt.bench.peers import HFTarget, ZLabDFlash

    hf = HFTarget(pipes[0].target_dir)
    rows, static = [], {}  # static-cache runs per (dataset, prompt): the same for every drafter
    params = SamplingParams(0.0)
    for pipe, block in zip(pipes, blocks):
        zlab = ZLabDFlash(hf, pipe.drafter_dir) if args.compare_zlab else None
        for name, texts in prompts.items():
            requests = [pipe.request(t, not args.no_chat, args.max_new_tokens) for t in texts]
            ours_s, zlab_s, pld_s, identical, pld_tokens, pld_calls, ours_tokens = 0.0, 0.0, 0.0, 0, 0, 0, 0
            hf_s, hf_tokens, hf_identical = 0.0, 0, 0
            for i, r in enumerate(requests):
                start = time.perf_counter()
                ours = generate(pipe.target, pipe.drafter, [r], params, block)[0]
                ours_s += time.perf_counter() - start
                ours_tokens += len(ours.tokens)
                if zlab:
                    run = zlab.generate(r.prompt, r.max_new_tokens, r.stop_token_ids, block)
                    zlab_s += run.seconds
                    identical += run.tokens == ours.tokens
                if args.compare_hf:
                    if (name, i) not in static:
                        static[name, i] = hf.static_cache(r.prompt, r.max_new_tokens, r.stop_token_ids)
                    run = static[name, i]
                    hf_s += run.seconds
                    hf_tokens += len(run.tokens)
                    hf_identical += run.tokens == ours.tokens
                if args.compare_prompt_lookup:
                    run = hf.prompt_lookup(r.prompt, r.max_new_tokens, r.stop_token_ids)
                    pld_s += run.seconds
                    pld_tokens += len(run.tokens)
                    pld_calls += run.target_forwards
            row = {
                "dataset": name,
                "drafter": drafter_name(pipe),
                "block": block,
                "requests": len(requests),
                "ours_tokens_per_s": ours_tokens / ours_s,
            }
            if zlab:
                row |= {
                    "zlab_tokens_per_s": ours_tokens / zlab_s,
                    "ours_vs_zlab_speed": zlab_s / ours_s,
                    "zlab_identical_outputs": identical,
                    "zlab_drafter_class": type(zlab.drafter).__name__,
                }
            if args.compare_hf:
                row |= {"hf_static_tokens_per_s": hf_tokens / hf_s, "hf_static_identical_outputs": hf_identical}
            if args.compare_prompt_lookup:
                row |= {
                    "prompt_lookup_tau": pld_tokens / max(pld_calls, 1),
                    "prompt_lookup_tokens_per_s": pld_tokens / pld_s,
                }
            rows.append(row)
            print(
                f"peers {name}: "
                + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            )
    return rows


def _markdown(data: dict) -> str:
    choice = ", ".join(f"{backend} {ms:.1f}" for backend, ms in data["backend_choice"].items())
    first_batch = min(r["batch"] for r in data["rows"])
    lines = [
        f"# DFlash benchmark\n\nTarget `{data['target']}`, {data['backend']} backend, "
        f"{data['num_prompts']} prompts per dataset, up to {data['max_new_tokens']} new tokens, "
        f"{data['target_dtype']} target, "
        f"drafts' LM head {data['draft_head_dtype']} (lossless: drafts are only proposals; a drafter with a draft "
        "vocab runs only its rows). "
        "Speedup = baseline TPOT / DFlash TPOT (decode only, prefill excluded), same backend, run side by side.\n",
        *([f"Backend chosen by expected ms per token at batch {first_batch}: {choice}.\n"] if choice else []),
        *(
            f"- {d['name']} `{d['dir']}`: "
            + "; ".join(f"batch {b} B={d['blocks'][b]} ({d['choice'][b]})" for b in d["blocks"])
            for d in data["drafters"]
        ),
        "",
        "| dataset | drafter | T | batch | B | tau | accept@1,2,3 | AR TPOT ms | DFlash TPOT ms | TPOT speedup "
        "| AR tok/s | DFlash tok/s | greedy-identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        acc = ", ".join(f"{a:.2f}" for a in r["position_acceptance"][:3])
        same = f"{r['identical_outputs']}/{r['requests']}" if r["temperature"] == 0 else "n/a (sampled)"
        lines.append(
            f"| {r['dataset']} | {r['drafter']} | {r['temperature']:g} | {r['batch']} | {r['block']} | {r['tau']:.2f} "
            f"| {acc} | "
            f"{r['ar_tpot_ms']:.1f} | {r['dflash_tpot_ms']:.1f} | **{r['tpot_speedup']:.2f}x** | "
            f"{r['ar_tokens_per_s']:.1f} | {r['dflash_tokens_per_s']:.1f} | {same} |"
        )
    lines += [
        "\n## Cost of one step (batch 1, context 256)\n",
        "| drafter | B | decode ms | verify(B) ms | draft(B) ms | break-even tau |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['drafter']} | {c['block']} | {c['decode_ms']:.1f} | {c['verify_ms']:.1f} | {c['draft_ms']:.1f} "
        f"| {c['break_even_tau']:.2f} |"
        for c in data["step_costs"]
    ]
    lines.append("\nDFlash beats the baseline when tau > (t_verify(B) + t_draft(B)) / t_decode(1).")
    if data["peers"]:
        lines += [
            "\n## Side by side at batch 1, T=0 (same weights, same prompts)\n",
            "| dataset | drafter | B | ours tok/s | z-lab dflash_generate tok/s | ours / z-lab speed "
            "| identical to z-lab | HF static-cache AR tok/s | identical to HF | "
            "HF prompt-lookup tau | HF prompt-lookup tok/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in data["peers"]:

            def f(key, fmt="{:.2f}"):
                return fmt.format(p[key]) if key in p else "-"

            same, same_hf = (
                f"{p[key]}/{p['requests']}" if key in p else "-"
                for key in ("zlab_identical_outputs", "hf_static_identical_outputs")
            )
            lines.append(
                f"| {p['dataset']} | {p['drafter']} | {p['block']} | {p['ours_tokens_per_s']:.1f} "
                f"| {f('zlab_tokens_per_s', '{:.1f}')} | {f('ours_vs_zlab_speed')}x | {same} "
                f"| {f('hf_static_tokens_per_s', '{:.1f}')} | {same_hf} "
                f"| {f('prompt_lookup_tau')} | {f('prompt_lookup_tokens_per_s', '{:.1f}')} |"
            )
    return "\n".join(lines)


def _short(row: dict) -> str:
    return row["drafter"].removesuffix("DraftModel")


def _figure(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_hist, ax_bar) = plt.subplots(1, 2, figsize=(12, 4))
    for r in rows:
        if r["temperature"] == 0 and r["batch"] == min(x["batch"] for x in rows):
            total = sum(r["histogram"]) or 1
            ax_hist.plot(
                range(1, len(r["histogram"]) + 1),
                [h / total for h in r["histogram"]],
                marker="o",
                label=f"{r['dataset']} {_short(r)} B={r['block']}",
            )
    ax_hist.set_xlabel("tokens committed per verify step")
    ax_hist.set_ylabel("fraction of steps")
    ax_hist.set_title("Acceptance histogram (T=0)")
    ax_hist.legend()
    labels = [f"{r['dataset']} {_short(r)}\nT={r['temperature']:g} b={r['batch']} B={r['block']}" for r in rows]
    ax_bar.bar(range(len(rows)), [r["tpot_speedup"] for r in rows], color="tab:blue")
    ax_bar.axhline(1.0, color="grey", ls=":")
    ax_bar.set_xticks(range(len(rows)), labels, fontsize=7, rotation=45, ha="right")
    ax_bar.set_ylabel("TPOT speedup vs autoregressive")
    ax_bar.set_title("DFlash speedup (same backend)")
    fig.tight_layout()
    return fig
