"""`build` subcommand, registered on `dflash-trt` by `dflash_trt/cli.py` (`add_parser`; handler `run_build`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dflash_trt.errors import UserError

BUILD_HELP = """\
Build a target and its DFlash drafter for TensorRT: export both graphs per tensor-parallel rank to ONNX and build
them. Output (atomic: a failed or interrupted build leaves no ENGINE_DIR):

  ENGINE_DIR/config.json                   pretrained_config, build_config, dflash, plugin, tokenizer, version
  ENGINE_DIR/onnx/rank{r}/{target,drafter}.onnx (+ .onnx.data)
  ENGINE_DIR/target/rank{r}.engine, ENGINE_DIR/drafter/rank{r}.engine   only with datacenter TensorRT (a GPU host)
  ENGINE_DIR/tokenizer/, ENGINE_DIR/build_report.json

Without datacenter TensorRT every graph is built with TensorRT-RTX on the CPU instead, to verify that it parses,
that the plugin library binds and that attention compiles to a fused kernel; no engine is written then.
With no model arguments it builds the embedded SmolLM2-135M-Instruct pair. Recipe keys (every one optional):
max_batch_size, max_input_len, max_seq_len, block_size, dtype, profiles, gpu_archs, tp_size, attention."""

EPILOG = """\
examples:
  %(prog)s --config build_configs/build_smollm2_135m_cpu.yaml --output engines/smollm2
  %(prog)s --target Qwen3-8B --drafter Qwen3-8B-DFlash-b16 --config build_configs/build_qwen3_8b_b16_h100.yaml \\
      --output engines/qwen3-8b
  %(prog)s --target gpt-oss-120b --drafter gpt-oss-120b-DFlash \\
      --config build_configs/build_gpt_oss_120b_tp8_b300.yaml --dry-run"""


def run_build(args: argparse.Namespace) -> int:
    """Handler of `build`: plan from configs and the recipe, then print the plan (--dry-run) or build."""
    from dflash_trt.engine.plan import format_plan, make_build_plan, plan_dict, read_checkpoint, read_pair
    from dflash_trt.engine.recipe import load_recipe

    if args.checkpoint is not None:
        if args.target or args.drafter:
            raise UserError("--checkpoint replaces --target/--drafter; pass one or the other")
        pair = read_checkpoint(args.checkpoint)
    else:
        if (args.target is None) != (args.drafter is None):
            raise UserError("pass both --target and --drafter (or neither, for the embedded pair, or --checkpoint)")
        target, drafter = args.target, args.drafter
        if target is None:
            from dflash_trt.embedded import ensure_default_target
            from dflash_trt.pipeline import EMBEDDED_DRAFTER

            target, drafter = ensure_default_target(), EMBEDDED_DRAFTER
        pair = read_pair(target, drafter)
    recipe = load_recipe(args.config, {"tp_size": args.tp})
    plan = make_build_plan(pair, recipe, str(args.config) if args.config else "recipe")
    if args.dry_run:
        if args.output is not None:
            from dflash_trt.engine.build import check_output

            check_output(plan, args.output.absolute(), overwrite=args.overwrite)
        print(json.dumps(plan_dict(plan), indent=1) if args.json else format_plan(plan))
        return 0
    if args.output is None:
        raise UserError("build: --output ENGINE_DIR is required (or pass --dry-run to only print the plan)")
    from dflash_trt.engine.build import build

    try:
        build(
            plan,
            args.output,
            plugin_lib=args.plugin_lib,
            tokenizer=args.tokenizer,
            overwrite=args.overwrite,
            verify=not args.no_verify,
        )
    except KeyboardInterrupt as exc:
        print(f"build: interrupted ({exc or 'SIGINT'}); removed the partial output", flush=True)
        return 130
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `build` on an argparse subparsers object."""
    p = sub.add_parser(
        "build",
        help="export and build TensorRT engines of a target + DFlash drafter",
        description=BUILD_HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", type=Path, metavar="DIR", help="HF target directory (default: embedded SmolLM2)")
    p.add_argument("--drafter", type=Path, metavar="DIR", help="z-lab DFlash drafter directory")
    p.add_argument(
        "--checkpoint",
        type=Path,
        metavar="DIR",
        help="a `dflash-trt convert` output instead of --target/--drafter (its tp is the build's)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="RECIPE.yaml",
        help="build recipe (build_configs/); default: every field's default",
    )
    p.add_argument("--tp", type=int, metavar="N", help="tensor-parallel size (overrides the recipe's tp_size)")
    p.add_argument("--output", type=Path, metavar="ENGINE_DIR", help="output directory (required unless --dry-run)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ENGINE_DIR once the build succeeded")
    p.add_argument(
        "--plugin-lib",
        type=Path,
        metavar="SO",
        help="libdflash_trt_plugins.so (default: DFLASH_TRT_PLUGIN_LIB, else plugins/build, cuda first)",
    )
    p.add_argument("--tokenizer", type=Path, metavar="DIR", help="tokenizer directory (default: the target's)")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the TensorRT-RTX CPU verification build (without datacenter TensorRT: an ONNX-only ENGINE_DIR for "
        "onnxruntime, no plugin library needed)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print shapes and memory per rank from the config files alone; reads no weights, writes nothing",
    )
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.set_defaults(func=run_build)
