"""`dflash-trt` command line: generate, bench, train, convert, inspect, build.

Every module that defines subcommands (this one for `generate`, `bench/cli.py`, `train/cli.py`,
`checkpoint/cli.py`, `engine/cli.py`) exposes `add_parser(sub)`, which registers its parser(s) on the subparsers
object, and one handler `run_<command>(args) -> int` per command, set as the parser's `func`.
Errors a user can cause print one line naming the file or field and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dflash_trt.errors import UserError

if TYPE_CHECKING:
    from dflash_trt.decoding.speculative import Request
    from dflash_trt.pipeline import Pipeline


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `generate`."""
    p = sub.add_parser(
        "generate",
        help="generate text with DFlash speculative decoding (or the autoregressive baseline)",
        description="Generate with a target model and its DFlash drafter. With no model arguments it runs the "
        "embedded SmolLM2-135M-Instruct target and, when present, the drafter shipped with the package. "
        "Prints the text (streamed for a single prompt) and one metrics line on stderr.",
    )
    p.add_argument(
        "--target", type=Path, help="Hugging Face target directory (default: embedded SmolLM2-135M-Instruct)"
    )
    p.add_argument("--drafter", type=Path, help="z-lab DFlash drafter directory (default: the embedded drafter)")
    p.add_argument("--no-drafter", action="store_true", help="run the autoregressive baseline")
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="a `dflash-trt convert` output instead of --target/--drafter; run under "
        "`mpirun -n TP` for a tensor-parallel checkpoint (each rank loads only its shard)",
    )
    p.add_argument("--tokenizer", type=Path, help="tokenizer directory for --checkpoint (default: its source target)")
    from dflash_trt.pipeline import add_engine_args

    add_engine_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="prompt text (default: a short chat question)")
    src.add_argument(
        "--prompts-file",
        type=Path,
        help='JSONL, one {"prompt": ...} or {"messages": [...]} per line (optional "max_new_tokens")',
    )
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    add_sampling_args(p)
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per prompt (default 128)")
    p.add_argument(
        "--block-size",
        type=int,
        help="DFlash block size B (default, greedy: the B, or plain decoding, that the drafter's acceptance.json "
        "and this machine's cached step costs make fastest; else the drafter's trained size)",
    )
    p.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (default 1)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="weight dtype (default fp32)")
    p.add_argument("--json", action="store_true", help="print one JSON document with texts, tokens and metrics")
    p.set_defaults(func=run_generate)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); >0 samples losslessly")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, help="random seed for sampling")


def _log(msg: str) -> None:
    print(f"dflash-trt: {msg}", file=sys.stderr, flush=True)


def run_generate(args: argparse.Namespace) -> int:
    from dflash_trt.decoding.metrics import format_summary, summarize
    from dflash_trt.decoding.sampling import SamplingParams
    from dflash_trt.decoding.speculative import generate
    from dflash_trt.engine.default import runs_embedded_pair, use_embedded_engine
    from dflash_trt.pipeline import backend_label, load_engine_args, load_pipeline, read_prompts_file

    embedded = runs_embedded_pair(args)
    use_embedded_engine(args)
    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    if args.batch_size < 1:
        raise UserError(f"--batch-size is {args.batch_size}; use 1 or more")
    rows = (
        read_prompts_file(args.prompts_file)
        if args.prompts_file
        else [{"prompt": args.prompt or "What is the capital of France?"}]
    )
    chat = args.chat or (args.prompt is None and args.prompts_file is None)
    batch = min(args.batch_size, len(rows))
    label = backend_label(args.engine is not None, args.backend, args.weight_only, args.dtype)
    engine_pipe = load_engine_args(args, not args.no_drafter)
    choice = None  # the block choice made while choosing the backend
    if engine_pipe is not None:
        pipe = engine_pipe
    elif args.backend == "auto" and embedded:
        from dflash_trt.bench.calibration import choose_backend
        from dflash_trt.engine.default import embedded_candidates

        candidates = embedded_candidates(not args.no_drafter, _log)
        greedy = params.greedy and args.block_size is None
        label, pipe, _, choice = choose_backend(candidates, _log, batch, greedy, lambda p: _unfit(p, rows, args, chat))
    elif args.checkpoint:
        from dflash_trt.parallel.comm import init_distributed
        from dflash_trt.pipeline import load_converted_pipeline

        if args.target or args.drafter:
            raise UserError("--checkpoint replaces --target/--drafter; pass one or the other")
        mapping = init_distributed()
        if not mapping.is_first:  # only rank 0 prints
            sys.stdout = sys.stderr = open(os.devnull, "w")
        pipe = load_converted_pipeline(args.checkpoint, args.tokenizer, mapping, not args.no_drafter, args.dtype)
    else:
        pipe = load_pipeline(args.target, args.drafter, use_drafter=not args.no_drafter, dtype=args.dtype)
    if pipe.drafter is None and not args.no_drafter:
        _log("no drafter given or shipped for this target: running the autoregressive baseline")
    drafter, block = pipe.drafter, args.block_size
    if drafter is not None and block is None and params.greedy:
        from dflash_trt.bench.calibration import auto_block

        drafter, block = auto_block(pipe, label, _log, batch, choice)
    requests = _requests(pipe, rows, args, chat)
    stream = len(requests) == 1 and not args.json
    printer = _StreamPrinter(pipe.tokenizer) if stream else None
    gens = []
    start = time.perf_counter()
    for i in range(0, len(requests), args.batch_size):
        gens += generate(pipe.target, drafter, requests[i : i + args.batch_size], params, block, on_tokens=printer)
    summary = summarize(gens, time.perf_counter() - start)
    texts = [pipe.tokenizer.decode(g.tokens, skip_special_tokens=True) for g in gens]
    if args.json:
        json.dump(
            {
                "target": str(pipe.target_dir),
                "drafter": str(pipe.drafter_dir) if pipe.drafter_dir else None,
                "summary": summary,
                "results": [{"text": t, **g.to_dict()} for t, g in zip(texts, gens)],
            },
            sys.stdout,
            indent=2,
        )
        print()
    elif stream:
        print()
    else:
        for text in texts:
            print(text, end="\n\n")
    mode = f"dflash B={gens[0].block_size}" if drafter else "autoregressive"
    print(f"[{mode}] {format_summary(summary)}", file=sys.stderr)
    return 0


def _unfit(pipe: Pipeline, rows: list[dict], args: argparse.Namespace, chat: bool) -> str | None:
    """Why `pipe` cannot hold the requests of `rows` at --batch-size and its drafter's block, or None."""
    from dflash_trt.decoding.speculative import check_requests

    try:
        for i in range(0, len(rows), args.batch_size):
            chunk = _requests(pipe, rows[i : i + args.batch_size], args, chat)
            check_requests(chunk, pipe.drafter.block_size if pipe.drafter else 1, pipe.target.capacity)
    except UserError as exc:
        return str(exc)
    return None


def _requests(pipe: Pipeline, rows: list[dict], args: argparse.Namespace, chat: bool) -> list[Request]:
    """The requests of prompts-file rows (or --prompt), tokenized by `pipe`."""
    from dflash_trt.decoding.speculative import Request

    return [
        Request(
            pipe.encode(r.get("messages", r.get("prompt")), chat),
            int(r.get("max_new_tokens", args.max_new_tokens)),
            pipe.stop_ids(),
        )
        for r in rows
    ]


class _StreamPrinter:
    """Prints decoded text as tokens are committed (single prompt)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.tokens, self.shown = tokenizer, [], ""

    def __call__(self, row: int, new_tokens: list[int]) -> None:
        self.tokens += new_tokens
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        sys.stdout.write(text[len(self.shown) :])
        sys.stdout.flush()
        self.shown = text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dflash-trt",
        description="DFlash block-diffusion speculative decoding: PyTorch reference runtime, drafter training, "
        "TensorRT-LLM checkpoint conversion.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser(sub)
    from dflash_trt.bench import cli as bench_cli
    from dflash_trt.checkpoint import cli as checkpoint_cli
    from dflash_trt.deploy import cli as deploy_cli
    from dflash_trt.engine import cli as engine_cli
    from dflash_trt.train import cli as train_cli

    bench_cli.add_parser(sub)
    train_cli.add_parser(sub)
    checkpoint_cli.add_parser(sub)
    deploy_cli.add_parser(sub)
    engine_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"dflash-trt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dflash-trt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
