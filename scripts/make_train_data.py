#!/usr/bin/env python
"""Make DFlash drafter training data with the frozen target (features + labels cached in shards).

    python scripts/make_train_data.py --source generated --out data/smollm2 [--target DIR|embedded | --engine DIR]
    python scripts/make_train_data.py --source teacher   --out data/smollm2

generated: the target answers templated chat/math/code instructions and Python-stdlib function stubs.
teacher: target greedy labels on Python stdlib source windows. Prompts and files are shuffled with --seed;
the first --heldout prompts/windows go to OUT/val (and OUT/heldout_prompts.jsonl for tau measurement), the
rest to OUT/train. Re-running skips finished shards, so an interrupted run resumes where it stopped.
--skip N leaves out the first N training prompts/windows (an earlier run's) and numbers the new shards after
theirs, so a later training stage can use only the data its predecessors never saw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dflash_trt.config import default_target_layer_ids
from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.dtypes import torch_dtype
from dflash_trt.errors import UserError
from dflash_trt.train import datagen, prompts
from dflash_trt.train.recipe import resolve_target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=["generated", "teacher"], required=True)
    p.add_argument("--out", type=Path, required=True, help="data directory (train/ and val/ shards go inside)")
    p.add_argument("--target", default="embedded", help="HF target directory or 'embedded' (default)")
    p.add_argument(
        "--engine",
        type=Path,
        help="generate with an engine directory's target graph on onnxruntime instead (fp32; its layers are the "
        "drafter's it was built with); 1.3x torch fp32's tokens/s at batch 64 on an AMD EPYC without native bf16, "
        "~2x at batch 8 (dflash_trt/assets/drafter/README.md). Rows refill in flight within a shard: give "
        "--shard-size a few times --batch-size",
    )
    p.add_argument("--layer-ids", type=int, nargs="+", help="target layer ids to cache (default: z-lab spread of 5)")
    p.add_argument("--limit", type=int, default=0, help="use at most this many prompts/windows (0 = all)")
    p.add_argument("--heldout", type=int, default=48, help="prompts/windows kept for validation (default 48)")
    p.add_argument(
        "--skip",
        type=int,
        default=0,
        help="leave out the first N training prompts/windows (a multiple of --shard-size)",
    )
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy responses (default)")
    p.add_argument("--window", type=int, default=512, help="teacher-forcing window in tokens (default 512)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=64, help="sequences per shard (default 64)")
    p.add_argument(
        "--dtype", choices=["fp32", "bf16"], default="bf16", help="target dtype (default bf16: ~5x faster on CPU)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        if args.skip % args.shard_size:
            raise UserError(f"--skip {args.skip} is not a multiple of --shard-size {args.shard_size}; round it")
        run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from dflash_trt.runtime.loading import load_target
    from dflash_trt.runtime.torch import TorchTarget

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.engine is not None:
        runner, layer_ids, tokenizer, eos = engine_target(args)
    else:
        target_dir = resolve_target(args.target)
        target = load_target(target_dir, torch_dtype(args.dtype))
        layer_ids = tuple(args.layer_ids or default_target_layer_ids(target.cfg.num_layers, 5))
        runner, eos = TorchTarget(target, layer_ids), target.cfg.eos_token_ids
        tokenizer = AutoTokenizer.from_pretrained(target_dir)
    if args.source == "generated":
        items = prompts.generated_prompts(args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "heldout_prompts.jsonl", "w") as f:
            for text, chat in items[: args.heldout]:
                f.write(json.dumps({"prompt": text, "chat": chat}) + "\n")
        encoded = datagen.encode_prompts(tokenizer, items, max_len=512)
        stop = tuple(eos) or (tokenizer.eos_token_id,)
        params = SamplingParams(temperature=args.temperature, seed=args.seed if args.temperature else None)

        def make(chunk):
            return datagen.generate_shard(runner, chunk, args.max_new_tokens, stop, params, args.batch_size)
    else:
        files = datagen.shuffled(prompts.stdlib_files(), args.seed)
        texts = (f.read_text(encoding="utf-8", errors="replace") for f in files)
        encoded = []
        for text in texts:  # tokenize lazily: the whole stdlib is ~8M tokens
            encoded += datagen.text_windows([text], tokenizer, args.window, min_len=64)
            if args.limit and len(encoded) >= args.limit + args.heldout:
                break

        def make(chunk):
            with torch.inference_mode():
                return datagen.teacher_force(target, layer_ids, chunk, batch_size=4, first_anchor=8)

    if args.limit:
        encoded = encoded[: args.limit + args.heldout]
    kind = "gen" if args.source == "generated" else "tf"
    datagen.write_shards(args.out / "val", kind, encoded[: args.heldout], args.shard_size, layer_ids, make)
    train = encoded[args.heldout + args.skip :]
    datagen.write_shards(
        args.out / "train", kind, train, args.shard_size, layer_ids, make, first=args.skip // args.shard_size
    )


def engine_target(args: argparse.Namespace) -> tuple:
    """(onnxruntime target runner, the layers its graph captures, tokenizer, eos ids) of --engine."""
    from dflash_trt.pipeline import load_engine_pipeline
    from dflash_trt.runtime.engine_dir import read_engine_dir

    if args.source != "generated":
        raise UserError("--engine generates answers; teacher forcing (--source teacher) runs the torch target")
    layer_ids = tuple(read_engine_dir(args.engine).drafter.target_layer_ids)
    if args.layer_ids and tuple(args.layer_ids) != layer_ids:
        raise UserError(f"--layer-ids {args.layer_ids}: {args.engine}'s target graph captures {list(layer_ids)}")
    pipe = load_engine_pipeline(args.engine, use_drafter=False)
    if args.batch_size > pipe.target.capacity.max_batch:
        raise UserError(
            f"--batch-size {args.batch_size}: {args.engine} holds {pipe.target.capacity.max_batch} rows; "
            "lower it or build the engine with a larger max_batch_size"
        )
    return pipe.target, layer_ids, pipe.tokenizer, pipe.eos_token_ids


if __name__ == "__main__":
    sys.exit(main())
