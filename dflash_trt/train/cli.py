"""`train` subcommand, registered on `dflash-trt` by `dflash_trt/cli.py` (`add_parser`, handler `run_train`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `train`."""
    p = sub.add_parser(
        "train",
        help="train a DFlash drafter for a target from cached target features",
        description="Train a DFlash drafter (z-lab format) per a YAML recipe (see build_configs/train_*.yaml). "
        "Data comes from scripts/make_train_data.py. Writes checkpoints, best/ and train_log.json "
        "into the output directory; --resume continues an interrupted run exactly.",
    )
    p.add_argument("--config", type=Path, required=True, help="YAML training recipe")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/train_state.pt")
    p.add_argument("--output", type=Path, help="output directory (overrides the recipe's 'output')")
    p.add_argument("--target", help="HF target directory or 'embedded' (overrides 'target')")
    p.add_argument("--data", type=Path, nargs="+", help="data directories (override 'data')")
    p.add_argument("--steps", type=int, help="total optimiser steps (overrides 'steps')")
    p.add_argument("--seed", type=int, help="overrides 'seed'")
    p.add_argument("--threads", type=int, help="torch CPU threads (overrides 'threads')")
    p.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        metavar="MIN",
        help="checkpoint and stop after this many minutes (0 = no limit); --resume continues",
    )
    p.add_argument(
        "--stop-at",
        type=int,
        default=0,
        metavar="STEP",
        help="checkpoint and stop at this step (0 = run to the end); --resume continues",
    )
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from dflash_trt.train.recipe import load_recipe
    from dflash_trt.train.trainer import train

    overrides = {
        "output": args.output,
        "target": args.target,
        "steps": args.steps,
        "seed": args.seed,
        "threads": args.threads,
        "data": [str(d) for d in args.data] if args.data else None,
    }
    recipe = load_recipe(args.config, overrides)
    best = train(recipe, resume=args.resume, time_limit_s=args.time_limit * 60, stop_at=args.stop_at)
    print(best)
    return 0
