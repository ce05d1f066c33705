"""Build a serialized TensorRT engine from an ONNX graph with TensorRT-RTX, on a host without a GPU.

A verification aid, not a runtime path: TensorRT-RTX (``tensorrt-rtx-cu13==1.7.1.116``) parses the graph,
imports each custom node as our IPluginV3 plugin and runs every build-time plugin method; it cannot
deserialize or run the plan without a CUDA driver. The build runs in a child interpreter because the
wheel's ONNX parser dlopens ``libtensorrt_rtx.so`` while only ``libtensorrt_rtx.so.1`` ships (the
process aborts otherwise): the parent puts a symlink directory on ``LD_LIBRARY_PATH`` before the child
starts. Every build enables ``PreviewFeature.ALIASED_PLUGIN_IO_10_03`` (``library.configure_builder``) so that
the KV-append plugins update their caches in place; the report lists the engine's layers, any copy TensorRT
inserted and the activation memory, from the builder's log, which is how a test sees that the alias was kept.
CLI: ``python -m dflash_trt.plugins.trt_rtx MODEL.onnx PLAN --profile NAME=MIN:OPT:MAX ...``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Mapping, Sequence

from dflash_trt.errors import UserError
from dflash_trt.plugins.library import configure_builder, find_plugin_library, register_plugins

Shape = tuple[int, ...]


@dataclass
class BuildReport:
    """What the child build saw: parser errors, plugin layers, network outputs, the plan, TRT's errors."""

    parsed: bool
    parser_errors: list[str]
    plugin_layers: list[dict]  # name, plugin (name, version, namespace), input/output [dtype, dims]
    outputs: list[dict]  # network outputs: name, dtype, shape (-1 = dynamic, None = inference failed)
    plan_bytes: int
    log_errors: list[str] = field(default_factory=list)
    aliased_plugin_io: bool = True  # PreviewFeature.ALIASED_PLUGIN_IO_10_03 was on
    engine_layers: list[str] = field(default_factory=list)  # the builder's "Engine Layer Information" lines
    copy_nodes: list[str] = field(default_factory=list)  # log lines about copies TensorRT inserted
    activation_bytes: int | None = None  # "Total Activation Memory" of the engine


def _lib_dir() -> Path:
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or importlib.util.find_spec("tensorrt_rtx") is None:
        raise UserError("tensorrt_rtx is not installed: pip install 'dflash-trt[tensorrt]'")
    return Path(next(iter(spec.submodule_search_locations)))


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    profile: Mapping[str, tuple[Shape, Shape, Shape]],
    *,
    plugin_lib: str | Path | None = None,
    timeout: float = 600.0,
    aliased_plugin_io: bool = True,
) -> BuildReport:
    """Build ``onnx_path`` into ``plan_path`` in a child process; ``profile`` maps each dynamic input to
    its (min, opt, max) shape. A plan of 0 bytes means the build failed; the report says why.
    ``aliased_plugin_io=False`` builds without the aliasing preview feature (only to test the refusal)."""
    lib = Path(plugin_lib).resolve() if plugin_lib else find_plugin_library()
    onnx_path, plan_path = Path(onnx_path).resolve(), Path(plan_path).resolve()  # the child runs elsewhere
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: no such ONNX file")

    def args(report: Path) -> list[str]:
        out = [str(onnx_path), str(plan_path), "--plugin-lib", str(lib), "--report", str(report)]
        for name, shapes in profile.items():
            out += ["--profile", f"{name}=" + ":".join("x".join(map(str, s)) for s in shapes)]
        return out + ([] if aliased_plugin_io else ["--no-aliased-plugin-io"])

    return BuildReport(**run_rtx_child("dflash_trt.plugins.trt_rtx", args, timeout, str(onnx_path)))


def run_rtx_child(module: str, args: Callable[[Path], list[str]], timeout: float, what: str) -> dict:
    """Run `python -m module *args(report)` with libtensorrt_rtx.so on LD_LIBRARY_PATH (see the module
    docstring for why a child) and return the JSON report it wrote to `report`. A child's one-line `error: `
    with exit code 2 is a UserError; a child that dies without a report is a RuntimeError naming `what`."""
    with tempfile.TemporaryDirectory(prefix="dflash_trt_rtx_") as tmp:
        (Path(tmp) / "libtensorrt_rtx.so").symlink_to(_lib_dir() / "libtensorrt_rtx.so.1")
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [tmp, env.get("LD_LIBRARY_PATH")]))
        report = Path(tmp) / "report.json"
        proc = subprocess.run(
            [sys.executable, "-m", module, *args(report)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=Path(__file__).resolve().parents[2],
        )
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        if proc.returncode == 2 and last.startswith("error: "):
            raise UserError(last.removeprefix("error: "))
        if not report.is_file():
            raise RuntimeError(f"TensorRT-RTX build of {what} died (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(report.read_text())


def _desc(tensor) -> list:
    """[dtype, dims]; dims is None when shape inference failed (e.g. the plugin rejected its inputs)."""
    try:
        return [str(tensor.dtype), [int(d) for d in tensor.shape]]
    except RuntimeError:
        return [str(tensor.dtype), None]


def build_in_process(
    trt: ModuleType,
    onnx_path: Path,
    plan_path: Path,
    plugin_lib: Path,
    profile: Mapping[str, tuple[Shape, Shape, Shape]],
    *,
    aliased_plugin_io: bool = True,
) -> BuildReport:
    """The build itself, with ``trt`` = ``tensorrt_rtx`` (in the child) or datacenter ``tensorrt`` (on a
    GPU host, where it needs no child process)."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.layers: list[str] = []
            self.copies: list[str] = []
            self.activation: int | None = None

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)
            for line in msg.splitlines():
                if line.startswith("Layer("):
                    self.layers.append(line)
            if "CopyNode" in msg:
                self.copies.append(msg)
            if m := re.search(r"Total Activation Memory: (\d+) bytes", msg):
                self.activation = int(m.group(1))

    logger = Logger()
    register_plugins(trt, plugin_lib)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    parsed = bool(parser.parse_from_file(str(onnx_path)))
    parser_errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]

    plugin_layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type != trt.LayerType.PLUGIN_V3:
            continue
        layer.__class__ = trt.IPluginV3Layer  # the bindings return the base ILayer; this is TRT's downcast idiom
        core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
        plugin_layers.append(
            {
                "name": layer.name,
                "plugin": [core.plugin_name, core.plugin_version, core.plugin_namespace],
                "inputs": [_desc(t) for t in map(layer.get_input, range(layer.num_inputs))],
                "outputs": [_desc(t) for t in map(layer.get_output, range(layer.num_outputs))],
            }
        )
    outputs = [
        {"name": t.name, "dtype": d[0], "shape": d[1]}
        for t in map(network.get_output, range(network.num_outputs))
        for d in [_desc(t)]
    ]

    plan_bytes = 0
    if parsed:
        config = builder.create_builder_config()
        configure_builder(trt, config, aliased_plugin_io=aliased_plugin_io)
        opt = builder.create_optimization_profile()
        for name, (lo, mid, hi) in profile.items():
            opt.set_shape(name, lo, mid, hi)
        config.add_optimization_profile(opt)
        plan = builder.build_serialized_network(network, config)
        if plan is not None:
            data = bytes(plan)
            plan_path.write_bytes(data)
            plan_bytes = len(data)
    return BuildReport(
        parsed,
        parser_errors,
        plugin_layers,
        outputs,
        plan_bytes,
        logger.errors,
        aliased_plugin_io,
        logger.layers,
        logger.copies,
        logger.activation,
    )


def _parse_profile(items: Sequence[str]) -> dict[str, tuple[Shape, Shape, Shape]]:
    profile = {}
    for item in items:
        name, _, shapes = item.partition("=")
        try:
            parts = [tuple(int(d) for d in s.split("x")) for s in shapes.split(":")]
        except ValueError:
            parts = []
        if not name or len(parts) != 3:
            raise UserError(f"--profile {item}: expected NAME=MIN:OPT:MAX with shapes like 1x16x3072")
        profile[name] = tuple(parts)
    return profile


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("plan", type=Path)
    ap.add_argument("--plugin-lib", type=Path, help="default: DFLASH_TRT_PLUGIN_LIB or plugins/build")
    ap.add_argument("--profile", action="append", default=[], help="NAME=MIN:OPT:MAX, shapes as AxBxC")
    ap.add_argument(
        "--no-aliased-plugin-io",
        action="store_true",
        help="build without PreviewFeature.ALIASED_PLUGIN_IO_10_03 (the KV-append plugins then fail)",
    )
    ap.add_argument("--report", type=Path, help=argparse.SUPPRESS)  # set by build_engine for its child
    args = ap.parse_args(argv)
    try:
        profile = _parse_profile(args.profile)
        if args.report:  # the child: LD_LIBRARY_PATH is already fixed
            import tensorrt_rtx

            report = build_in_process(
                tensorrt_rtx,
                args.onnx,
                args.plan,
                args.plugin_lib or find_plugin_library(),
                profile,
                aliased_plugin_io=not args.no_aliased_plugin_io,
            )
            args.report.write_text(json.dumps(asdict(report)))
        else:
            report = build_engine(
                args.onnx,
                args.plan,
                profile,
                plugin_lib=args.plugin_lib,
                aliased_plugin_io=not args.no_aliased_plugin_io,
            )
            print(json.dumps(asdict(report), indent=1))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if report.plan_bytes else 1


if __name__ == "__main__":
    sys.exit(main())
