#!/usr/bin/env python
"""Training-data generation throughput: the target answering drafter-training prompts on --batch-size rows.

Two schedules over the same prompts, in one run:
- `batch by batch`: the prompts (sorted by length) in consecutive batches, each decoding until its longest answer
  ends; rows whose answer ended ride along idle;
- `in-flight`: what `scripts/make_train_data.py` runs (`datagen.generate_shard`): a row whose answer ends takes the
  next prompt at the next step.
Both record the drafter's features as make_train_data does; the report says whether their tokens are identical.

    python scripts/bench_datagen.py --engine DIR    # DIR: `dflash-trt build --no-verify` with max_batch_size >= 32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from dflash_trt.bench.reporting import RunStart, write_report
from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.errors import UserError
from dflash_trt.train import datagen, prompts


def main(argv: list[str] | None = None) -> int:
    start = RunStart.now()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--engine",
        type=Path,
        required=True,
        help="engine directory whose target graph answers, on onnxruntime (built with --batch-size rows of "
        "--max-new-tokens + 513 positions: `max_batch_size`, `max_seq_len`)",
    )
    p.add_argument("--prompts", type=int, default=128, help="training prompts to answer (default 128)")
    p.add_argument("--skip", type=int, default=48, help="leave out the first N prompts (default 48: the held-out)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="datagen", help="results/<name>.{json,md} (default datagen)")
    args = p.parse_args(argv)
    try:
        run(args, start)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace, start: RunStart) -> None:
    from dflash_trt.pipeline import load_engine_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_engine_pipeline(args.engine, use_drafter=False)
    runner, stop = pipe.target, tuple(pipe.eos_token_ids)
    items = prompts.generated_prompts(0)[args.skip : args.skip + args.prompts]
    encoded = datagen.encode_prompts(pipe.tokenizer, items, max_len=512)
    greedy = SamplingParams()

    def batch_by_batch() -> list:
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        seqs = {}
        for lo in range(0, len(order), args.batch_size):
            idx = order[lo : lo + args.batch_size]  # one call per batch: no prompt left to refill with
            chunk = datagen.generate_shard(
                runner, [encoded[i] for i in idx], args.max_new_tokens, stop, greedy, len(idx)
            )
            seqs |= dict(zip(idx, chunk))
        return [seqs[i] for i in range(len(encoded))]

    def in_flight() -> list:
        return datagen.generate_shard(runner, encoded, args.max_new_tokens, stop, greedy, args.batch_size)

    rows, outputs = [], {}
    for name, schedule in (("batch by batch", batch_by_batch), ("in-flight", in_flight)):
        t0 = time.perf_counter()
        seqs = schedule()
        seconds = time.perf_counter() - t0
        answer = sum(len(s.tokens) - s.start for s in seqs)
        outputs[name] = [s.tokens.tolist() for s in seqs]
        rows.append({"schedule": name, "seconds": seconds, "answer_tokens": answer, "tokens_per_s": answer / seconds})
        print(f"{name}: {answer} answer tokens in {seconds:.1f} s, {answer / seconds:.1f} tokens/s", flush=True)
    identical = outputs["batch by batch"] == outputs["in-flight"]
    speedup = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    lines = [
        f"# Training-data generation on onnxruntime: {len(encoded)} prompts, batch {args.batch_size}, up to "
        f"{args.max_new_tokens} answer tokens, greedy",
        "",
        "| schedule | seconds | answer tokens | tokens/s |",
        "|---|---|---|---|",
        *(f"| {r['schedule']} | {r['seconds']:.1f} | {r['answer_tokens']} | {r['tokens_per_s']:.1f} |" for r in rows),
        "",
        f"In-flight refill: **{speedup:.2f}x** the tokens/s of batch by batch, side by side in this run; the "
        f"answers are {'identical' if identical else 'NOT identical'} ({len(encoded)} prompts).",
    ]
    data = {"engine": str(args.engine), "batch_size": args.batch_size, "prompts": len(encoded), "rows": rows}
    paths = write_report(start, args.name, data | {"identical": identical, "speedup": speedup}, "\n".join(lines))
    print("wrote " + ", ".join(map(str, paths)))


if __name__ == "__main__":
    sys.exit(main())
