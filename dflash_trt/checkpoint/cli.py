"""`convert` and `inspect` subcommands, registered on `dflash-trt` by `dflash_trt/cli.py` (`add_parser`; handlers
`run_convert`, `run_inspect`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dflash_trt.atomic import Interrupted
from dflash_trt.checkpoint.convert import check_output, convert, large_frees_unmapped
from dflash_trt.checkpoint.inspection import inspect_checkpoint
from dflash_trt.checkpoint.plan import format_plan, make_plan
from dflash_trt.errors import UserError

CONVERT_HELP = """\
Convert a Hugging Face target model (Llama / Qwen2 / Qwen3) and its z-lab DFlash drafter into the
TensorRT-LLM checkpoint layout, sharded for tensor parallelism:

  OUTPUT/target/config.json, OUTPUT/target/rank{r}.safetensors
  OUTPUT/drafter/config.json, OUTPUT/drafter/rank{r}.safetensors
  OUTPUT/dflash_trt_manifest.json   (sha256 of every file, sources, tool version)

Everything is checked before anything is written (pair compatibility, tp splits, every tensor's
shape and dtype, truncated or corrupt files). Output appears atomically: an interrupted or failed
run leaves no OUTPUT. Format and sharding rules: dflash_trt/checkpoint/README.md."""

EPILOG = """\
examples:
  %(prog)s --target Qwen3-8B --drafter Qwen3-8B-DFlash-b16 --output ckpt-tp4 --tp 4
  %(prog)s --target Qwen3-8B --drafter Qwen3-8B-DFlash-b16 --tp 8 --dry-run"""


def run_convert(args: argparse.Namespace) -> int:
    """Handler of `convert`: plan from configs, then print the plan (--dry-run) or convert."""
    plan = make_plan(args.target, args.drafter, tp=args.tp, pp=args.pp, dtype=args.dtype)
    if args.dry_run:
        if args.output is not None:
            check_output(plan, args.output.absolute(), overwrite=args.overwrite)
        print(format_plan(plan))
        return 0
    if args.output is None:
        raise UserError("convert: --output DIR is required (or pass --dry-run to only print the plan)")
    try:
        with large_frees_unmapped():  # process-wide allocator setting: only for the time this command converts
            convert(plan, args.output, overwrite=args.overwrite)
    except Interrupted as exc:
        print(f"convert: interrupted by {exc}; removed the partial output", file=sys.stderr)
        return 128 + exc.signum
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    """Handler of `inspect`: verify checksums, structure and pairing, then print a summary."""
    print(inspect_checkpoint(args.dir))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `convert` and `inspect` on an argparse subparsers object (each sets `func`)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "convert",
        help="convert a target + DFlash drafter to TensorRT-LLM checkpoints",
        description=CONVERT_HELP,
        epilog=EPILOG,
        formatter_class=fmt,
    )
    p.add_argument(
        "--target",
        type=Path,
        required=True,
        metavar="DIR",
        help="HF target directory: config.json + model.safetensors (or model.safetensors.index.json and shards)",
    )
    p.add_argument(
        "--drafter",
        type=Path,
        required=True,
        metavar="DIR",
        help="z-lab DFlash drafter directory: config.json (DFlashDraftModel) + model.safetensors",
    )
    p.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="output directory (must not exist unless --overwrite; required unless --dry-run)",
    )
    p.add_argument(
        "--tp",
        type=int,
        default=1,
        metavar="N",
        help="tensor-parallel size: must divide the attention heads and FFN size of both models; "
        "KV heads are duplicated when N is a multiple of them (default 1)",
    )
    p.add_argument("--pp", type=int, default=1, metavar="1", help="pipeline-parallel size; only 1 is supported")
    p.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="weight dtype of both models (default auto: the target config's torch_dtype, else bf16)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output (only once conversion succeeded)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print each rank's tensors (name, shape, dtype, bytes) from the config.json files alone; "
        "reads no weights and writes nothing",
    )
    p.set_defaults(func=run_convert)

    q = sub.add_parser(
        "inspect",
        help="verify and summarize a converted checkpoint",
        description="Verify a converted checkpoint (sha256 of every file against dflash_trt_manifest.json, tensor "
        "names/shapes/dtypes against the configs, drafter/target pairing) and print a summary. Exits 2 with one "
        "line naming the bad file on any mismatch.",
    )
    q.add_argument("dir", type=Path, metavar="DIR", help="a directory written by `convert`")
    q.set_defaults(func=run_inspect)
