"""A loaded target/drafter pair plus tokenizer: what `generate` and `bench` run.

Defaults: the embedded SmolLM2-135M-Instruct target and, when the package ships one, its trained drafter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from dflash_trt.decoding.speculative import Request
from dflash_trt.dtypes import torch_dtype
from dflash_trt.errors import UserError
from dflash_trt.hardware import cpu_has_bf16_matmul
from dflash_trt.models.drafter import DFlashDrafter
from dflash_trt.models.target import Transformer
from dflash_trt.runtime import prepacked
from dflash_trt.runtime.loading import load_converted, load_drafter, load_target
from dflash_trt.runtime.torch import TorchDrafter, TorchTarget

EMBEDDED_DRAFTER = Path(__file__).parent / "assets" / "drafter"


@dataclass
class Pipeline:
    target: TorchTarget
    drafter: TorchDrafter | None
    tokenizer: object
    target_dir: Path
    drafter_dir: Path | None
    eos_token_ids: tuple[int, ...]  # from the target's config.json

    def stop_ids(self) -> tuple[int, ...]:
        """End-of-sequence ids from the tokenizer and the target config."""
        ids = set(self.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return tuple(sorted(ids))

    def encode(self, prompt: str | list[dict], chat: bool) -> list[int]:
        """Token ids for a prompt string, or for chat messages through the tokenizer's chat template."""
        if chat or isinstance(prompt, list):
            if not getattr(self.tokenizer, "chat_template", None):
                raise UserError(f"{self.target_dir}: the tokenizer has no chat template; drop --chat")
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            return list(
                self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
        return self.tokenizer.encode(prompt)

    def request(self, prompt: str | list[dict], chat: bool, max_new_tokens: int) -> Request:
        return Request(self.encode(prompt, chat), max_new_tokens, self.stop_ids())


def draft_head_dtype(dtype: str) -> torch.dtype | None:
    """The drafts' LM head dtype (see `TorchDrafter`): bf16 for an fp32 target on a CPU with native bf16
    matmul, else the target's own dtype (None)."""
    return torch.bfloat16 if dtype == "fp32" and cpu_has_bf16_matmul() else None


def torch_runners(
    target: Transformer,
    drafter: DFlashDrafter | None,
    head_dtype: torch.dtype | None = None,
    vocab_size: int | None = None,
) -> tuple[TorchTarget, TorchDrafter | None]:
    """The torch runners of a loaded pair: the target captures the drafter's layers, the drafter borrows
    the target's embedding and LM head (run in `head_dtype` when given, see `TorchDrafter`). Their fp32
    linears then run multi-row inputs on oneDNN with prepacked weights (`runtime.prepacked`)."""
    if prepacked.available():
        for model in (target, drafter):
            if model is not None:
                prepacked.prepack_linears(model)
    if drafter is None:
        return TorchTarget(target, vocab_size=vocab_size), None
    runner = TorchTarget(target, drafter.cfg.target_layer_ids, vocab_size)
    return runner, TorchDrafter(drafter, target.embed, target.lm_head, head_dtype)  # the packed head, or a cast copy


def load_pipeline(
    target_dir: Path | None, drafter_dir: Path | None, use_drafter: bool = True, dtype: str = "fp32"
) -> Pipeline:
    """Load the pair. target_dir None = embedded default; drafter_dir None = the embedded drafter (if any)."""
    if target_dir is None:
        from dflash_trt.embedded import ensure_default_target

        target_dir = ensure_default_target()
        if drafter_dir is None and (EMBEDDED_DRAFTER / "config.json").is_file():
            drafter_dir = EMBEDDED_DRAFTER
    target_dir = Path(target_dir)
    model = load_target(target_dir, torch_dtype(dtype))
    drafter = None
    if use_drafter and drafter_dir is not None:
        drafter = load_drafter(Path(drafter_dir), model.cfg, torch_dtype(dtype))
    target, draft = torch_runners(model, drafter, draft_head_dtype(dtype))
    return Pipeline(
        target,
        draft,
        load_tokenizer(target_dir),
        target_dir,
        Path(drafter_dir) if drafter else None,
        model.cfg.eos_token_ids,
    )


def load_converted_pipeline(
    checkpoint: Path, tokenizer_dir: Path | None, mapping, use_drafter: bool = True, dtype: str = "fp32"
) -> Pipeline:
    """This rank's shards of a converted checkpoint; the tokenizer comes from the target it was converted
    from (recorded in the manifest) unless `tokenizer_dir` is given."""
    from dflash_trt.checkpoint.convert import MANIFEST
    from dflash_trt.config import read_json

    checkpoint = Path(checkpoint)
    target, drafter, target_cfg = load_converted(checkpoint, mapping, torch_dtype(dtype))
    if tokenizer_dir is None:
        tokenizer_dir = Path(read_json(checkpoint / MANIFEST)["sources"]["target"]["dir"])
    runner, draft = torch_runners(
        target, drafter if use_drafter else None, draft_head_dtype(dtype), target_cfg.vocab_size
    )
    return Pipeline(
        runner,
        draft,
        load_tokenizer(tokenizer_dir),
        checkpoint / "target",
        checkpoint / "drafter" if use_drafter else None,
        target_cfg.eos_token_ids,
    )


BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """`--engine DIR --backend {torch,onnxruntime,tensorrt}` (generate, bench)."""
    p.add_argument(
        "--engine",
        type=Path,
        help="an engine directory (`dflash-trt build` output) instead of --target/--drafter; run under "
        "`mpirun -n TP` for a tensor-parallel engine",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto (default: for the embedded pair in fp32, torch or its cached onnxruntime graphs, whichever this "
        "machine's step costs make faster; onnxruntime for --engine; else torch), torch (HF directories or "
        "--checkpoint), onnxruntime (--engine's ONNX graphs on CPU; with no model arguments, the embedded pair's "
        "cached ones) or tensorrt (--engine's engines; needs a GPU)",
    )
    p.add_argument(
        "--weight-only",
        choices=("int4", "int8"),
        default=None,
        help="onnxruntime: quantize the graphs' weights at load (MatMulNBits, blocks of 32, int8 compute); "
        "2-3x faster decoding on this CPU (results/engine.md), outputs close to but not identical with fp32",
    )


def backend_label(engine: bool, backend: str | None, weight_only: str | None = None, dtype: str = "fp32") -> str:
    """What step costs depend on besides the models: the backend, and its weight dtype or quantization."""
    if engine:
        return ("onnxruntime" if backend == "auto" else backend) + (f" {weight_only}" if weight_only else "")
    return f"torch {dtype}"


def load_engine_args(args: argparse.Namespace, use_drafter: bool) -> Pipeline | None:
    """The Pipeline of --engine on --backend (auto: onnxruntime), this rank's under mpirun; None without
    --engine (then --backend must be auto or torch)."""
    if args.engine is None:
        if args.backend not in ("auto", "torch"):
            raise UserError(f"--backend {args.backend} runs an engine directory: pass --engine DIR")
        if args.weight_only:
            raise UserError("--weight-only quantizes an engine directory's graphs: pass --engine DIR")
        return None
    if args.weight_only and args.backend not in ("auto", "onnxruntime"):
        raise UserError(f"--weight-only is an onnxruntime option; --backend {args.backend} does not take it")
    from dflash_trt.parallel.comm import init_distributed

    for flag in ("target", "drafter", "checkpoint"):
        if getattr(args, flag, None):
            raise UserError(f"--engine replaces --{flag}; pass one or the other")
    mapping = init_distributed()
    if not mapping.is_first:  # only rank 0 prints
        sys.stdout = sys.stderr = open(os.devnull, "w")
    backend = "onnxruntime" if args.backend == "auto" else args.backend
    return load_engine_pipeline(args.engine, backend, use_drafter, mapping, args.weight_only)


def load_engine_pipeline(
    engine_dir: Path,
    backend: str = "onnxruntime",
    use_drafter: bool = True,
    mapping=None,
    weight_only: str | None = None,
) -> Pipeline:
    """This rank's runners of an engine directory (`dflash-trt build` output) on `backend`, tokenizer from
    ENGINE_DIR/tokenizer (or the config's "tokenizer" entry); `weight_only` quantizes onnxruntime's graphs."""
    engine_dir = Path(engine_dir)
    if backend == "torch":
        raise UserError(
            "--engine runs on --backend onnxruntime or tensorrt; the torch backend runs "
            "--target/--drafter or --checkpoint"
        )
    if backend == "tensorrt":
        from dflash_trt.hardware import has_gpu

        if not has_gpu():
            raise UserError("--backend tensorrt needs an NVIDIA GPU and none is present; use --backend onnxruntime")
    from dflash_trt.runtime.onnxruntime import load_engine, read_engine_config

    rank, world = (mapping.tp_rank, mapping.tp_size) if mapping is not None else (0, 1)
    if backend == "tensorrt":  # written against TensorRT, not executed here (see runtime/tensorrt.py)
        from dflash_trt.runtime.tensorrt import load_runners

        cfg = read_engine_config(engine_dir)
        target, drafter = load_runners(engine_dir, rank)
        drafter = drafter if use_drafter else None
    else:
        target, drafter, cfg = load_engine(engine_dir, rank, world, use_drafter, weight_only)
    if "format" in cfg:  # written by `dflash-trt build`: the target's HF config is recorded
        from dflash_trt.runtime.engine_dir import read_engine_dir

        eos = read_engine_dir(engine_dir).target.eos_token_ids
    else:
        eos = cfg["pretrained_config"].get("eos_token_id") or []
        eos = tuple(eos) if isinstance(eos, list) else (int(eos),)
    tokenizer_dir = engine_dir / str(cfg.get("tokenizer") or "tokenizer")
    return Pipeline(target, drafter, load_tokenizer(tokenizer_dir), engine_dir, engine_dir if drafter else None, eos)


def load_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{directory}: no usable tokenizer files ({type(exc).__name__}); copy the model's "
            "tokenizer.json and tokenizer_config.json into it, or pass --tokenizer"
        ) from None


def read_prompts_file(path: Path) -> list[dict]:
    """JSONL: one object per line with `prompt` (text) or `messages` (chat), optional `max_new_tokens`."""
    if not path.is_file():
        raise UserError(f"{path}: prompts file not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg}); one JSON object per line") from None
        if not isinstance(row, dict) or not ({"prompt", "messages"} & row.keys()):
            raise UserError(f"{path}:{number}: needs a 'prompt' or 'messages' field")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no prompts in the file")
    return rows
