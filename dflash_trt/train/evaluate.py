"""Measure a drafter's acceptance (tau) with the project's speculative `generate` on held-out prompts.

    python -m dflash_trt.train.evaluate --drafter DIR --prompts heldout_prompts.jsonl [--block-sizes 4 8]

Prompts file: JSONL of {"prompt": str, "chat": bool} (what scripts/make_train_data.py holds out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dflash_trt.decoding.metrics import summarize
from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.decoding.speculative import Request, generate
from dflash_trt.errors import UserError
from dflash_trt.pipeline import draft_head_dtype, torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from dflash_trt.train.datagen import encode_prompts
from dflash_trt.train.recipe import resolve_target


def read_prompts(path: Path) -> list[tuple[str, bool]]:
    if not Path(path).is_file():
        raise UserError(f"{path}: prompts file not found; scripts/make_train_data.py writes heldout_prompts.jsonl")
    try:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        return [(r["prompt"], bool(r.get("chat", True))) for r in rows]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f'{path}: expected JSONL lines like {{"prompt": "...", "chat": true}}') from None


def measure_tau(
    target: str,
    drafter_dir: Path,
    prompts: list[tuple[str, bool]],
    block_sizes: list[int],
    max_new_tokens: int,
    batch_size: int,
) -> dict:
    """Greedy tau (macro average over prompts, and per prompt) and per-position acceptance per block size
    (fp32 target)."""
    from transformers import AutoTokenizer

    target_dir = resolve_target(target)
    model = load_target(target_dir)
    drafter = load_drafter(drafter_dir, model.cfg)
    target_runner, drafter_runner = torch_runners(model, drafter, draft_head_dtype("fp32"))
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    stop = tuple(model.cfg.eos_token_ids) or (tokenizer.eos_token_id,)
    requests = [Request(p, max_new_tokens, stop) for p in encode_prompts(tokenizer, prompts, max_len=512)]
    results = {}
    for block in block_sizes:
        start, gens = time.perf_counter(), []
        for lo in range(0, len(requests), batch_size):
            gens += generate(
                target_runner, drafter_runner, requests[lo : lo + batch_size], SamplingParams(), block_size=block
            )
        summary = summarize(gens, time.perf_counter() - start)
        results[str(block)] = {
            k: summary[k] for k in ("requests", "output_tokens", "tau", "position_acceptance", "histogram", "wall_s")
        } | {"tau_per_prompt": [g.tau for g in gens]}  # in prompt order: drafters compare prompt by prompt
        print(
            f"block {block}: tau {summary['tau']:.3f} accept@pos "
            + ",".join(f"{a:.2f}" for a in summary["position_acceptance"]),
            file=sys.stderr,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dflash_trt.train.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--drafter", type=Path, required=True)
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--target", default="embedded")
    p.add_argument("--block-sizes", type=int, nargs="+", default=[4, 8])
    p.add_argument("--limit", type=int, default=0, help="use the first N prompts (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--write-acceptance",
        type=Path,
        metavar="DIR",
        help="write DIR/acceptance.json (the largest block's per-position acceptance) for generate's block choice",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        prompts = read_prompts(args.prompts)[: args.limit or None]
        results = measure_tau(
            args.target, args.drafter, prompts, args.block_sizes, args.max_new_tokens, args.batch_size
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    doc = {
        "drafter": str(args.drafter),
        "prompts": str(args.prompts),
        "num_prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "temperature": 0.0,
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.write_acceptance:
        from dflash_trt.decoding.choice import ACCEPTANCE_FILE

        block = max(args.block_sizes)
        acceptance = {
            "position_acceptance": results[str(block)]["position_acceptance"],
            "tau": results[str(block)]["tau"],
            "measured_on": f"{len(prompts)} prompts of {args.prompts.name}, greedy, block {block}, "
            f"{args.max_new_tokens} new tokens",
        }
        (args.write_acceptance / ACCEPTANCE_FILE).write_text(json.dumps(acceptance, indent=1) + "\n")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
