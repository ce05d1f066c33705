"""`dflash-trt deploy trtllm-serve|triton` and `dflash-trt triton-serve`."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path

from dflash_trt.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `deploy` (with `trtllm-serve` and `triton`) and `triton-serve`."""
    p = sub.add_parser(
        "deploy",
        help="write trtllm-serve configs and Triton model repositories for a DFlash pair",
        description="Check a target/drafter pair and write what a server needs to serve it.",
    )
    kinds = p.add_subparsers(dest="deploy_kind", required=True, metavar="KIND")
    t = kinds.add_parser(
        "trtllm-serve",
        help="trtllm-serve YAML (TensorRT-LLM >= 1.3 DFlash) with a GPU memory plan",
        description="Write the trtllm-serve --config YAML for the pair, checked and planned per rank "
        "for the GPU: unset limits are shrunk to fit, explicit ones that do not fit are "
        "refused.",
    )
    _pair_args(t, required=True)
    t.add_argument(
        "--gpu", choices=["h100", "h200", "b200", "b300"], default="h100", help="GPU per rank (default h100)"
    )
    t.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (default 1)")
    t.add_argument("--max-batch", type=int, help="max batch size (default: 64, shrunk to fit)")
    t.add_argument(
        "--max-seq-len", type=int, help="max tokens per sequence (default: min(context, 32768), shrunk to fit)"
    )
    t.add_argument("--max-draft-len", type=int, help="draft tokens per step (default block_size - 1)")
    t.add_argument("--attention-backend", default="TRTLLM", help="drafter attention: VANILLA, TRTLLM or FA4")
    t.add_argument(
        "--trust-layer-ids",
        action="store_true",
        help="accept target_layer_ids that look shifted by one from z-lab's default spread",
    )
    t.add_argument("--output", type=Path, required=True, help="the YAML file to write")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    t.add_argument(
        "--launch", action="store_true", help="then exec trtllm-serve (when installed; else print the exact command)"
    )
    t.add_argument("--host", default="127.0.0.1", help="--launch: address to bind (default 127.0.0.1)")
    t.add_argument("--port", type=int, default=8000, help="--launch: port (default 8000)")
    t.set_defaults(func=run_deploy_trtllm)

    r = kinds.add_parser(
        "triton",
        help="a Triton model repository for the pair",
        description="llmapi: TensorRT-LLM's LLM-API backend layout with the pair's DFlash config "
        "(containers with TensorRT-LLM >= 1.3). python: a Python-backend model serving "
        "the pair through this project's runtime, decoupled, in-flight batched.",
    )
    _pair_args(r, required=False)
    r.add_argument(
        "--engine",
        type=Path,
        help="python kind: a `dflash-trt build` engine directory instead of the "
        "HF directories (run with --backend onnxruntime or tensorrt)",
    )
    r.add_argument(
        "--backend",
        choices=["torch", "onnxruntime", "tensorrt"],
        default=None,
        help="python kind: runtime (default torch; onnxruntime with --engine)",
    )
    r.add_argument("--kind", choices=["llmapi", "python"], required=True)
    r.add_argument("--output", type=Path, required=True, help="the repository directory to create")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    r.add_argument(
        "--model-name", default=None, help="model name (default: tensorrt_llm for llmapi, dflash for python)"
    )
    r.add_argument("--no-drafter", action="store_true", help="python kind: serve the autoregressive baseline")
    r.add_argument("--max-batch", type=int, default=8, help="rows decoded together (default 8)")
    r.add_argument("--max-seq-len", type=int, default=1024, help="positions per row: prompt + output + one block")
    r.add_argument(
        "--max-tokens-limit", type=int, default=512, help="python kind: largest max_tokens a request may ask"
    )
    r.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="python kind, torch: weights")
    r.add_argument(
        "--block-size",
        type=int,
        help="DFlash block size (default: chosen when the model loads, as `generate` chooses, for --max-batch rows "
        "from the drafter's acceptance.json and this machine's step costs; the drafter's own without acceptance.json)",
    )
    r.add_argument("--threads", type=int, default=2, help="python kind: torch threads (default 2)")
    r.add_argument("--gpu", choices=["h100", "h200", "b200", "b300"], default="h100", help="llmapi: GPU for the plan")
    r.add_argument("--tp", type=int, default=1, help="llmapi: tensor-parallel ranks")
    r.set_defaults(func=run_deploy_triton)

    s = sub.add_parser(
        "triton-serve",
        help="run the Triton server of the nvidia-pytriton wheel on a model repository",
        description="Start tritonserver (from nvidia-pytriton) on REPO with the right library path and "
        "Python stub, wait until it is ready, serve until Ctrl-C or SIGTERM, then stop it "
        "(bounded; SIGKILL as a last resort). Binds 127.0.0.1 unless --host says otherwise.",
    )
    s.add_argument("repository", type=Path)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--timeout", type=float, default=300, help="seconds to wait for readiness (default 300)")
    s.add_argument("--log", type=Path, help="server log file (default: a temporary file)")
    s.set_defaults(func=run_triton_serve)


def _pair_args(p: argparse.ArgumentParser, required: bool) -> None:
    default = "" if required else " (default: the embedded SmolLM2 target / its drafter)"
    p.add_argument("--target", type=Path, required=required, help=f"Hugging Face target directory{default}")
    p.add_argument("--drafter", type=Path, required=required, help=f"z-lab DFlash drafter directory{default}")


def _command() -> str:
    return shlex.join(["dflash-trt", *sys.argv[1:]])


def _pair_dirs(args) -> tuple[Path, Path | None]:
    """--target/--drafter, defaulting to the embedded pair."""
    target, drafter = args.target, args.drafter
    if target is None:
        from dflash_trt.embedded import ensure_default_target
        from dflash_trt.pipeline import EMBEDDED_DRAFTER

        target = ensure_default_target()
        drafter = drafter or (EMBEDDED_DRAFTER if (EMBEDDED_DRAFTER / "config.json").is_file() else None)
    return Path(target), Path(drafter) if drafter else None


def run_deploy_trtllm(args: argparse.Namespace) -> int:
    from dflash_trt.deploy.files import atomic_write
    from dflash_trt.deploy.trtllm import launch, make_serve_config, render_yaml

    cfg = make_serve_config(
        args.target,
        args.drafter,
        args.gpu,
        args.tp,
        args.max_batch,
        args.max_seq_len,
        args.max_draft_len,
        args.attention_backend,
        args.trust_layer_ids,
    )
    _check_with_tensorrt_llm(cfg.llm_options())
    atomic_write(args.output, render_yaml(cfg, _command()), args.overwrite)
    for note in cfg.notes:
        print(f"dflash-trt: {note}", file=sys.stderr)
    p = cfg.plan
    print(
        f"wrote {args.output}: max_batch {p.max_batch}, max_seq_len {p.max_seq_len}, max_draft_len "
        f"{cfg.max_draft_len}, {p.total / (1 << 30):.1f} of {p.budget / (1 << 30):.1f} GiB per rank on {p.gpu}"
    )
    if args.launch:
        return launch(args.target, args.output, args.host, args.port)
    return 0


def _check_with_tensorrt_llm(options: dict) -> None:
    """When TensorRT-LLM is importable, its own DFlashDecodingConfig must accept the speculative config."""
    import importlib.util

    if importlib.util.find_spec("tensorrt_llm") is None:
        return
    from dflash_trt.deploy.trtllm import decoding_config

    try:
        decoding_config(options)
    except (ImportError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"speculative_config: TensorRT-LLM's DFlashDecodingConfig refuses it ({first}); "
            "TensorRT-LLM >= 1.3 is needed for DFlash"
        ) from None


def run_deploy_triton(args: argparse.Namespace) -> int:
    from dflash_trt.deploy.server import STUB_NUMPY_DIR
    from dflash_trt.deploy.triton_repo import (
        LLMAPI_MODEL,
        PYTHON_MODEL,
        python_site,
        write_llmapi,
        write_python,
    )

    for flag in ("max_batch", "max_seq_len", "max_tokens_limit", "threads", "tp"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} is {getattr(args, flag)}; use 1 or more")
    if args.kind == "llmapi":
        from dflash_trt.deploy.trtllm import make_serve_config, render_yaml

        if args.engine:
            raise UserError("--engine is for --kind python; the LLM-API backend loads the Hugging Face directories")
        target, drafter = _pair_dirs(args)
        if drafter is None:
            raise UserError("--drafter is required for --kind llmapi (the DFlash speculative_config needs it)")
        if args.model_name not in (None, LLMAPI_MODEL):
            raise UserError(f"--model-name: the LLM-API backend's model is named {LLMAPI_MODEL}; drop --model-name")
        cfg = make_serve_config(target, drafter, args.gpu, args.tp, args.max_batch, args.max_seq_len)
        _check_with_tensorrt_llm(cfg.llm_options())
        header = render_yaml(cfg, _command()).split("max_batch_size:")[0]
        write_llmapi(args.output, cfg.llm_options(), target, args.tp, cfg.plan.max_batch, header, args.overwrite)
        print(
            f"wrote {args.output}/{LLMAPI_MODEL}: config.pbtxt, 1/model.yaml (DFlash max_draft_len "
            f"{cfg.max_draft_len}), 1/model.py"
        )
        return 0
    params = {
        "max_batch": args.max_batch,
        "max_seq_len": args.max_seq_len,
        "max_tokens_limit": args.max_tokens_limit,
        "threads": args.threads,
        "dtype": args.dtype,
        "block_size": args.block_size or "",
        "use_drafter": "false" if args.no_drafter else "true",
        "python_site": python_site(),
        "stub_numpy": str(Path(sys.prefix) / STUB_NUMPY_DIR),
    }
    if args.engine:
        if args.target or args.drafter:
            raise UserError("--engine replaces --target/--drafter; pass one or the other")
        if not (args.engine / "config.json").is_file() and not args.engine.is_dir():
            raise UserError(f"--engine {args.engine}: not a directory; pass a `dflash-trt build` output")
        params.update(engine_dir=args.engine.resolve(), backend=args.backend or "onnxruntime")
    else:
        if args.backend not in (None, "torch"):
            raise UserError(f"--backend {args.backend} runs an engine directory: pass --engine DIR")
        target, drafter = _check_python_pair(args)
        params.update(target_dir=target.resolve(), drafter_dir=drafter.resolve() if drafter else "", backend="torch")
    name = args.model_name or PYTHON_MODEL
    write_python(args.output, {k: str(v) for k, v in params.items()}, name, args.overwrite)
    print(
        f"wrote {args.output}/{name}: config.pbtxt (decoupled, max batch {args.max_batch}), 1/model.py; "
        f"serve it with `dflash-trt triton-serve {args.output}`"
    )
    return 0


def _check_python_pair(args) -> tuple[Path, Path | None]:
    """The pair the python model will load, checked from its config files now (not at server start)."""
    from dflash_trt.config import TargetConfig
    from dflash_trt.deploy.checks import check_serving_pair
    from dflash_trt.engine.plan import read_pair

    target, drafter = _pair_dirs(args)
    if not target.is_dir():
        raise UserError(f"--target {target}: not a directory; pass the model directory holding config.json")
    if drafter is None or args.no_drafter:
        TargetConfig.from_dir(target)
        return target, None if args.no_drafter else drafter
    if not drafter.is_dir():
        raise UserError(f"--drafter {drafter}: not a directory; pass the drafter directory holding config.json")
    pair = read_pair(target, drafter)
    if not pair.exportable:
        raise UserError(
            f"{target / 'config.json'}: {pair.architecture} is not supported by this project's runtime; "
            "use --kind llmapi"
        )
    check_serving_pair(pair, None, sliding_target_ok=False)
    if args.block_size is not None and not 1 <= args.block_size <= pair.drafter.block_size:
        raise UserError(
            f"--block-size is {args.block_size}; this drafter was trained with block_size "
            f"{pair.drafter.block_size}, use 1..{pair.drafter.block_size}"
        )
    need = args.max_seq_len
    if need > pair.target.max_position_embeddings:
        raise UserError(
            f"--max-seq-len {need} exceeds the target's max_position_embeddings "
            f"{pair.target.max_position_embeddings}; use that or less"
        )
    return target, drafter


def run_triton_serve(args: argparse.Namespace) -> int:
    from dflash_trt.deploy.server import TritonServer

    server = TritonServer(args.repository, args.host, args.http_port, args.grpc_port, args.metrics_port, args.log)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start(args.timeout)
    print(
        f"tritonserver ready: HTTP {server.http_url}, GRPC {server.grpc_url}, metrics {server.metrics_url} "
        f"(log {server.log_path}); Ctrl-C stops it",
        file=sys.stderr,
    )
    try:
        while not stop.wait(1.0):
            if server.process.poll() is not None:
                print(
                    f"dflash-trt: tritonserver exited with code {server.process.returncode}; log {server.log_path}",
                    file=sys.stderr,
                )
                return 1
    finally:
        code = server.stop()
        print(f"tritonserver stopped (exit code {code})", file=sys.stderr)
    return 0
