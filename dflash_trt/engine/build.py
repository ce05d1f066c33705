"""`dflash-trt build`: export both graphs per TP rank, build them, write ENGINE_DIR atomically.

Steps, each a tick of the progress bar: export rank r's `target.onnx` / `drafter.onnx` (`dflash_trt.export`);
with datacenter TensorRT (`import tensorrt`, a GPU host) build `target/rank{r}.engine` and `drafter/rank{r}.engine`;
always build every graph with TensorRT-RTX on the CPU (a verification build: the graphs parse, the plugin library
binds, attention compiles to a fused kernel; its plans are measured and dropped, they are not the engines); copy
the tokenizer; write `config.json` and `build_report.json`. Output goes to `.<name>.dflash-partial-<pid>` beside
ENGINE_DIR and is renamed into place only when everything succeeded; any failure or signal removes it.
Layout: `dflash_trt.runtime.engine_dir`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

from dflash_trt import __version__
from dflash_trt.atomic import atomic_directory
from dflash_trt.decoding.choice import ACCEPTANCE_FILE
from dflash_trt.engine.plan import BuildPlan, plan_dict
from dflash_trt.engine.recipe import RTX_ARCHS
from dflash_trt.engine.trt_build import GraphReport, GraphSpec, build_graph, build_with_rtx
from dflash_trt.errors import UserError
from dflash_trt.export.graphs import GRAPHS, TARGET, past_names
from dflash_trt.runtime import engine_dir as layout

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
NO_DATACENTER = (
    "no datacenter TensorRT on this host (`import tensorrt` failed): no target/rank*.engine or "
    "drafter/rank*.engine was written. ENGINE_DIR holds the ONNX graphs{verified}. Run `dflash-trt build` "
    "again on a GPU host with TensorRT to write the engines."
)


def datacenter_tensorrt() -> ModuleType | None:
    """The `tensorrt` module when datacenter TensorRT is installed and loads, else None."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError):
        return None


def resolve_plugin_library(path: Path | None, need_cuda: bool) -> tuple[Path, str, Path]:
    """(the plugin library the engines load at run time, its backend "cuda" or "host", the library the TensorRT-RTX
    verification build loads).

    `--plugin-lib`, else DFLASH_TRT_PLUGIN_LIB, else the newest build under plugins/build, a CUDA build preferred.
    Datacenter engines need a CUDA build. A CUDA build cannot register without a CUDA driver, so the CPU verification
    build loads the host build of the same sources when there is one (the plugins' build-time methods are shared
    code); without a CUDA build the host build is recorded and the report says so."""
    from dflash_trt.plugins.library import ENV_VAR, find_plugin_library, load_plugin_library, plugin_backend

    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"--plugin-lib {path}: no such file; build the library (plugins/) or fix the path")
        lib = Path(path).resolve()
        load_plugin_library(lib)
    elif os.environ.get(ENV_VAR):
        lib = find_plugin_library()
    else:
        try:
            lib = find_plugin_library("cuda")
        except UserError:
            if need_cuda:
                raise
            lib = find_plugin_library()
    backend = plugin_backend(lib)
    if need_cuda and backend != "cuda":
        raise UserError(
            f"--plugin-lib {lib}: a {backend} build, but TensorRT engines for a GPU need the cuda build "
            "(cmake -S plugins -B plugins/build/cuda -DDFLASH_TRT_CUDA=ON && cmake --build "
            "plugins/build/cuda -j)"
        )
    verify_lib = lib if backend == "host" or need_cuda else next(iter(_host_builds()), lib)
    return lib, backend, verify_lib


def _host_builds() -> list[Path]:
    from dflash_trt.plugins.library import BUILD_DIR, LIB_NAME, plugin_backend

    found = sorted(BUILD_DIR.rglob(LIB_NAME), key=lambda p: -p.stat().st_mtime) if BUILD_DIR.is_dir() else []
    return [p for p in found if plugin_backend(p) == "host"]


def check_output(plan: BuildPlan, output: Path, *, overwrite: bool) -> None:
    """Refuse an output that exists (without --overwrite), lacks a parent or overlaps a source directory."""
    if not output.parent.is_dir():
        raise UserError(f"--output {output}: parent directory {output.parent} does not exist; create it first")
    resolved = output.resolve()
    sources = [plan.pair.target_dir, plan.pair.drafter_dir] + ([plan.pair.checkpoint] if plan.pair.checkpoint else [])
    for source in (Path(s).resolve() for s in sources):
        if resolved == source or source in resolved.parents or resolved in source.parents:
            raise UserError(f"--output {output}: overlaps the source directory {source}; choose another output")
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise UserError(f"--output {output}: already exists; pass --overwrite to replace it")


def tokenizer_source(plan: BuildPlan, tokenizer: Path | None) -> Path:
    """The directory whose tokenizer files ENGINE_DIR/tokenizer gets: --tokenizer, the target, or the checkpoint's
    source target (recorded in its manifest)."""
    candidates = [tokenizer] if tokenizer else [plan.pair.target_dir]
    if plan.pair.checkpoint and not tokenizer:
        from dflash_trt.checkpoint.convert import MANIFEST

        manifest = plan.pair.checkpoint / MANIFEST
        if manifest.is_file():
            candidates.insert(0, Path(json.loads(manifest.read_text())["sources"]["target"]["dir"]))
    for directory in candidates:
        if any((Path(directory) / f).is_file() for f in TOKENIZER_FILES):
            return Path(directory)
    flag = f"--tokenizer {tokenizer}" if tokenizer else f"target {candidates[-1]}"
    raise UserError(f"{flag}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}); pass --tokenizer DIR")


def _rank_models(plan: BuildPlan, rank: int):
    """This rank's target and drafter at the build dtype, as `export_pair` takes them."""
    from dflash_trt.checkpoint.layout import drafter_weights, internal_from_trtllm, target_weights
    from dflash_trt.checkpoint.sharding import shard
    from dflash_trt.parallel.comm import Mapping
    from dflash_trt.parallel.tensor_parallel import build_drafter, build_target
    from dflash_trt.runtime.loading import load_converted, load_drafter, load_target, read_tensors

    pair, tp, dtype = plan.pair, plan.tp, plan.dtype.torch
    if pair.checkpoint is not None:
        target, drafter, _ = load_converted(pair.checkpoint, Mapping(tp, rank), dtype)
        return target, drafter
    if tp == 1:
        target = load_target(pair.target_dir, dtype)
        return target, load_drafter(pair.drafter_dir, target.cfg, dtype)
    models = []
    for directory, weights, build, cfg in (
        (pair.target_dir, target_weights, build_target, pair.target),
        (pair.drafter_dir, drafter_weights, build_drafter, pair.drafter),
    ):
        source = read_tensors(directory)  # the convert sharding rules, applied in memory
        table = weights(cfg)
        parts = {
            e.name: shard(e.rule, [source[s] for s in e.sources], tp, rank).contiguous() for w in table for e in w.parts
        }
        model = build(cfg, Mapping(tp, rank))
        model.load_state_dict(internal_from_trtllm(table, parts, directory), strict=True)
        models.append(model.to(dtype).eval())
    return tuple(models)


def graph_spec(
    plan: BuildPlan, graph: str, rank: int, onnx: Path, plugin_lib: Path, plan_out: Path | None, rtx: bool
) -> GraphSpec:
    profiles = {
        phase: {name: [list(s) for s in shapes] for name, shapes in plan.profiles[graph][phase].items()}
        for phase in plan.profiles[graph]
    }
    archs = [a.upper() for a in plan.recipe.gpu_archs if a in RTX_ARCHS] if rtx else []
    return GraphSpec(
        graph,
        rank,
        str(onnx),
        profiles,
        str(plan_out) if plan_out else None,
        str(plugin_lib),
        decomposable_attention=plan.dtype.cli == "fp32",
        compute_capabilities=archs,
    )


def _compact_profiles(plan: BuildPlan) -> list[dict[str, Any]]:
    """build_config.profiles: one entry per TensorRT profile index; the past tensors of a graph share one entry."""
    out = []
    for phase in plan.recipe.profiles:
        entry: dict[str, Any] = {"name": phase}
        for graph in GRAPHS:
            cfg = plan.pair.target if graph == TARGET else plan.pair.drafter
            pasts = set(past_names(cfg.num_layers))
            shapes = plan.profiles[graph][phase]
            entry[graph] = {n: [list(s) for s in v] for n, v in shapes.items() if n not in pasts}
            entry[graph][layout.PAST] = [list(s) for s in shapes[past_names(cfg.num_layers)[0]]]
        out.append(entry)
    return out


def engine_config(
    plan: BuildPlan, plugin: dict[str, Any], engines: dict[str, list[str]], verification: dict[str, Any]
) -> dict[str, Any]:
    """ENGINE_DIR/config.json (see `dflash_trt.runtime.engine_dir`)."""
    from dflash_trt.checkpoint.trtllm_config import drafter_config, target_config

    pair, r, tp = plan.pair, plan.recipe, plan.tp
    pretrained = target_config(pair.target, pair.target_hf, tp=tp, dtype=plan.dtype, embedding=None)
    pretrained["architecture"] = pair.architecture
    pretrained["drafter"] = drafter_config(
        pair.drafter, pair.drafter_hf, pair.target, tp=tp, dtype=plan.dtype, embedding=None
    )
    return {
        "format": layout.FORMAT,
        "format_version": layout.FORMAT_VERSION,
        "version": __version__,
        "pretrained_config": pretrained,
        "build_config": {
            "max_batch_size": r.max_batch_size,
            "max_beam_width": 1,
            "max_input_len": r.max_input_len,
            "max_seq_len": r.max_seq_len,
            "max_draft_len": plan.block_size - 1,
            "max_num_tokens": plan.max_num_tokens,
            "speculative_decoding_mode": "dflash",
            "dtype": plan.dtype.trtllm,
            "profiles": _compact_profiles(plan),
            "gpu_archs": r.gpu_archs,
            "attention": r.attention,
            "kv_heads_per_rank": plan.kv_heads_per_rank,
        },
        "dflash": {
            "target_layer_ids": list(pair.drafter.target_layer_ids),
            "mask_token_id": pair.drafter.mask_token_id,
            "block_size": plan.block_size,
            "drafter_block_size": pair.drafter.block_size,
        },
        "plugin": plugin,
        "tokenizer": layout.TOKENIZER_DIR,
        "onnx": {g: [layout.onnx_path(rank, g) for rank in range(tp)] for g in GRAPHS},
        "engines": engines,
        "verification": verification,
        "recipe": r.to_dict(),
    }


def _file_sha256(path: Path) -> str:
    from dflash_trt.checkpoint.safetensors_io import sha256_file

    return sha256_file(path)


def verification_summary(reports: list[GraphReport], skipped: str | None) -> dict[str, Any]:
    if skipped:
        return {"builder": None, "skipped": skipped}
    return {
        "builder": reports[0].builder if reports else None,
        "graphs": {
            f"rank{r.rank}/{r.graph}": {
                "built": r.built,
                "attention_nodes": len(r.attention_nodes),
                "attention_fused": len(r.fused_attention),
                "all_attention_fused": r.all_attention_fused,
            }
            for r in reports
        },
        "all_built": all(r.built for r in reports),
        "all_attention_fused": all(r.all_attention_fused for r in reports),
        "note": "TensorRT-RTX plans target SM75-SM89 and SM120/SM121 and are verification artifacts (measured and "
        "dropped), not the datacenter engines",
    }


def build(
    plan: BuildPlan,
    output: Path,
    *,
    plugin_lib: Path | None = None,
    tokenizer: Path | None = None,
    overwrite: bool = False,
    verify: bool = True,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ENGINE_DIR for `plan` atomically; returns the build report."""
    from tqdm import tqdm

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    output = Path(os.path.abspath(output))
    check_output(plan, output, overwrite=overwrite)
    if not plan.pair.exportable:
        raise UserError(f"{plan.pair.target_dir / 'config.json'}: {plan.notes[0]}; plan it with --dry-run")
    trt = datacenter_tensorrt()
    # only TensorRT loads the plugin library: an ONNX-only build (--no-verify, no datacenter TensorRT) needs none
    needs_plugins = trt is not None or verify or plugin_lib is not None
    lib, backend, verify_lib = (
        resolve_plugin_library(plugin_lib, need_cuda=trt is not None) if needs_plugins else 3 * (None,)
    )
    tok_dir = tokenizer_source(plan, tokenizer)
    skip_verify = None
    if not verify:
        skip_verify = "--no-verify"
    from dflash_trt.export import export_pair

    steps = plan.tp * (1 + (2 if trt else 0) + (2 if not skip_verify else 0)) + 1
    report: dict[str, Any] = {
        "plan": plan_dict(plan),
        "export": {},
        "verification": [],
        "engines": [],
        "plugin_library": lib and str(lib),
        "plugin_backend": backend,
        "verification_plugin_library": verify_lib and str(verify_lib),
    }
    engines: dict[str, list[str]] = {g: [] for g in GRAPHS}
    start = time.monotonic()
    show = sys.stderr.isatty() if progress is None else progress
    with atomic_directory(output) as tmp, tqdm(total=steps, desc="build", unit="step", disable=not show) as bar:
        for rank in range(plan.tp):
            bar.set_postfix_str(f"export rank {rank}")
            t0 = time.perf_counter()
            target, drafter = _rank_models(plan, rank)
            load_s = time.perf_counter() - t0
            paths = export_pair(
                target,
                drafter,
                tmp / layout.ONNX_DIR / f"rank{rank}",
                dtype=plan.dtype.torch,
                max_batch=plan.recipe.max_batch_size,
                max_seq_len=plan.recipe.max_seq_len,
                block_size=plan.block_size,
                rank=rank,
                tp_size=plan.tp,
                flavor="plugin" if plan.recipe.attention == "plugin" else "native",
            )
            del target, drafter
            info = json.loads((tmp / layout.ONNX_DIR / f"rank{rank}" / "export.json").read_text())
            report["export"][f"rank{rank}"] = {
                "load_seconds": round(load_s, 3),
                "export_seconds": info.get("export_seconds"),
                "onnx_bytes": {g: p.stat().st_size for g, p in paths.items()},
                "data_bytes": {
                    g: sum(f.stat().st_size for f in p.parent.glob(f"{g}.onnx.data")) for g, p in paths.items()
                },
            }
            bar.update()
            for graph in GRAPHS:
                if trt is not None:
                    bar.set_postfix_str(f"TensorRT {graph} rank {rank}")
                    out = tmp / layout.engine_path(rank, graph)
                    out.parent.mkdir(exist_ok=True)
                    rep = build_graph(trt, graph_spec(plan, graph, rank, paths[graph], lib, out, rtx=False))
                    report["engines"].append(asdict(rep))
                    if not rep.built:
                        raise UserError(
                            f"TensorRT could not build {paths[graph].name} of rank {rank}: "
                            f"{(rep.parser_errors + rep.errors + ['no error logged'])[0]}"
                        )
                    engines[graph].append(layout.engine_path(rank, graph))
                    bar.update()
                if not skip_verify:
                    bar.set_postfix_str(f"TensorRT-RTX {graph} rank {rank}")
                    rep = build_with_rtx(graph_spec(plan, graph, rank, paths[graph], verify_lib, None, rtx=True))
                    report["verification"].append(asdict(rep))
                    if not rep.built:
                        raise UserError(
                            f"TensorRT-RTX could not build {graph}.onnx of rank {rank}: "
                            f"{(rep.parser_errors + rep.errors + ['no error logged'])[0]}"
                        )
                    bar.update()
        acceptance = plan.pair.drafter_dir / ACCEPTANCE_FILE  # the drafter's measured acceptance, for generate's choice
        if acceptance.is_file():
            shutil.copy2(acceptance, tmp / ACCEPTANCE_FILE)
        (tmp / layout.TOKENIZER_DIR).mkdir()
        for name in TOKENIZER_FILES:
            if (tok_dir / name).is_file():
                shutil.copy2(tok_dir / name, tmp / layout.TOKENIZER_DIR / name)
        reports = [GraphReport(**r) for r in report["verification"]]
        verification = verification_summary(reports, skip_verify)
        plugin = lib and {"library": lib.name, "sha256": _file_sha256(lib), "backend": backend, "built_from": str(lib)}
        config = engine_config(plan, plugin, engines, verification)
        config["build_config"]["datacenter_tensorrt"] = trt.__version__ if trt else None
        report["datacenter_engines_written"] = trt is not None
        report["message"] = (
            f"datacenter TensorRT {trt.__version__} wrote {sum(map(len, engines.values()))} engines"
            if trt
            else NO_DATACENTER.format(
                verified="" if skip_verify else "; TensorRT-RTX built every graph on the CPU to verify them"
            )
        )
        report["seconds"] = round(time.monotonic() - start, 3)
        (tmp / layout.CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / layout.REPORT).write_text(json.dumps(report, indent=2) + "\n")
        bar.update()
    log(f"wrote {output} in {report['seconds']:.1f} s")
    for rep in reports:
        kernel = next(iter(rep.fused_attention.values()), "-").split("_0x")[0]
        parts = [f"{rep.engine_layers} engine layers"]
        if rep.attention_nodes:
            parts.append(f"{len(rep.fused_attention)}/{len(rep.attention_nodes)} attention nodes fused ({kernel})")
        if rep.plugin_layers:
            parts.append(f"{len(rep.plugin_layers)} plugin layers")
        log(
            f"  TensorRT-RTX rank{rep.rank}/{rep.graph}: parsed, {', '.join(parts)}, "
            f"plan {rep.plan_bytes / 2**20:.1f} MiB in {rep.build_seconds:.1f} s"
        )
    if skip_verify:
        log(f"  TensorRT-RTX verification skipped: {skip_verify}")
    log(report["message"])
    return report
