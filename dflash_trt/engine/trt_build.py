"""Build one exported graph into a serialized TensorRT engine and report what the builder made of it.

The same function serves datacenter TensorRT (`import tensorrt`, on a GPU host: the engines of ENGINE_DIR) and
TensorRT-RTX (`tensorrt_rtx`, on any host: a verification build). TensorRT-RTX runs in a child interpreter because
its wheel ships only `libtensorrt_rtx.so.1` while its ONNX parser dlopens `libtensorrt_rtx.so` (the process aborts
when a plugin is imported): `dflash_trt.plugins.trt_rtx.run_rtx_child` puts a symlink directory on
`LD_LIBRARY_PATH` before the child starts.

What the report proves, each point read from the build itself:
- the graph parses (parser errors otherwise) and the plugin library binds (`register_plugins` checks every
  contracted creator; plugin layers are listed);
- attention: every ONNX `Attention` node became a TensorRT `IAttention` (ATTENTION_INPUT/OUTPUT layer pair), and
  with `decomposable` left off (fp16/bf16) the build succeeds only if each one gets a dedicated kernel (TensorRT
  refuses otherwise: "Attention operation was not supported by a dedicated kernel"). The engine's layer list
  (`ProfilingVerbosity.DETAILED`, logged by the builder) names that kernel (`_gemm_mha_v2...`) and the ONNX node it
  implements; `fused_attention` maps each node to its kernel.
CLI (the child): `python -m dflash_trt.engine.trt_build SPEC.json REPORT.json`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from dflash_trt.errors import UserError

FUSED_KERNEL = re.compile(r"mha|flash", re.IGNORECASE)  # fused attention kernels: _gemm_mha_v2, fmha_v2, flash
LAYER_LINE = re.compile(
    r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), .*TacticName: (?P<tactic>[^,]*), "
    r"StreamId: \d+, Metadata: (?P<meta>.*)$"
)
ONNX_LAYER = re.compile(r"ONNX Layer: ([^\]]+)")
ATTENTION_SUFFIX = "_AttentionInput"


@dataclass
class GraphSpec:
    """One graph to build: its ONNX file, the optimization profiles (phase -> input -> [min, opt, max])."""

    graph: str
    rank: int
    onnx: str
    profiles: dict[str, dict[str, list[list[int]]]]
    plan: str | None = None  # where to write the plan; None = measure it and drop it (verification build)
    plugin_lib: str | None = None
    decomposable_attention: bool = False  # fp32: no fused kernel exists, let TensorRT decompose attention
    compute_capabilities: list[str] = field(default_factory=list)  # TensorRT-RTX targets, e.g. ["SM89"]


@dataclass
class GraphReport:
    """What the builder made of one graph (see the module docstring)."""

    graph: str
    rank: int
    builder: str  # "tensorrt_rtx 1.7.1.116" / "tensorrt 10.x"
    parsed: bool = False
    parser_errors: list[str] = field(default_factory=list)
    network_layers: int = 0
    attention_nodes: list[str] = field(default_factory=list)  # ONNX Attention nodes that became IAttention
    decomposable_attention: bool = False
    plugin_layers: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    built: bool = False
    build_seconds: float = 0.0
    plan_bytes: int = 0
    plan_sha256: str | None = None
    engine_layers: int = 0
    fused_attention: dict[str, str] = field(default_factory=dict)  # ONNX attention node -> fused kernel
    activation_bytes: int | None = None
    weights_bytes: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def all_attention_fused(self) -> bool:
        return bool(self.attention_nodes) and set(self.attention_nodes) <= set(self.fused_attention)


def _logger(trt: ModuleType):
    class Logger(trt.ILogger):
        """Keeps errors, the engine layer lines and the memory totals the builder logs."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.layers: list[dict[str, str]] = []
            self.totals: dict[str, int] = {}

        def log(self, severity, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg.strip().splitlines()[0][:1000])
            for line in msg.splitlines():
                if m := LAYER_LINE.match(line):
                    self.layers.append(m.groupdict())
            for key, label in (("activation", "Total Activation Memory"), ("weights", "Total Weights Memory")):
                if m := re.search(label + r": (\d+) bytes", msg):
                    self.totals[key] = int(m.group(1))

    return Logger()


def build_graph(trt: ModuleType, spec: GraphSpec) -> GraphReport:
    """Parse, configure and build `spec` with `trt` (tensorrt or tensorrt_rtx), in this process."""
    from dflash_trt.plugins.library import configure_builder, register_plugins

    name = "tensorrt_rtx" if trt.__name__.startswith("tensorrt_rtx") else "tensorrt"
    report = GraphReport(
        spec.graph, spec.rank, f"{name} {trt.__version__}", decomposable_attention=spec.decomposable_attention
    )
    logger = _logger(trt)
    if spec.plugin_lib:
        register_plugins(trt, Path(spec.plugin_lib))
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # strongly typed: the graph's dtypes are the engine's
    parser = trt.OnnxParser(network, logger)
    report.parsed = bool(parser.parse_from_file(spec.onnx))
    report.parser_errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
    report.network_layers = network.num_layers
    if not report.parsed:
        report.errors = logger.errors
        return report
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.ATTENTION_INPUT:
            layer.__class__ = trt.IAttentionInputLayer  # the bindings hand out the base class; TRT's downcast idiom
            layer.attention.decomposable = spec.decomposable_attention
            report.attention_nodes.append(layer.name.removesuffix(ATTENTION_SUFFIX))
        elif layer.type == trt.LayerType.PLUGIN_V3:
            layer.__class__ = trt.IPluginV3Layer
            core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
            report.plugin_layers.append(
                {
                    "name": layer.name,
                    "plugin": core.plugin_name,
                    "version": core.plugin_version,
                    "namespace": core.plugin_namespace,
                }
            )
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the builder then logs kernels per layer
    configure_builder(trt, config)
    if spec.compute_capabilities and hasattr(config, "set_compute_capability"):
        config.num_compute_capabilities = len(spec.compute_capabilities)
        for i, cc in enumerate(spec.compute_capabilities):
            config.set_compute_capability(getattr(trt.ComputeCapability, cc), i)
    for phase, shapes in spec.profiles.items():
        profile = builder.create_optimization_profile()
        for tensor, (lo, opt, hi) in shapes.items():
            profile.set_shape(tensor, lo, opt, hi)
        config.add_optimization_profile(profile)
        report.profiles.append(phase)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    report.build_seconds = round(time.perf_counter() - start, 3)
    report.errors = logger.errors
    if plan is None:
        return report
    data = memoryview(plan)
    report.built, report.plan_bytes = True, data.nbytes
    report.plan_sha256 = hashlib.sha256(data).hexdigest()
    if spec.plan:
        with open(spec.plan, "wb") as f:
            f.write(data)
    report.engine_layers = len(logger.layers)
    for layer in logger.layers:
        if FUSED_KERNEL.search(layer["name"]) or FUSED_KERNEL.search(layer["tactic"]):
            for node in ONNX_LAYER.findall(layer["meta"]):
                report.fused_attention.setdefault(node.strip(), layer["tactic"] or layer["name"])
    report.fused_attention = {n: k for n, k in report.fused_attention.items() if n in report.attention_nodes}
    report.activation_bytes = logger.totals.get("activation")
    report.weights_bytes = logger.totals.get("weights")
    return report


def build_with_rtx(spec: GraphSpec, *, timeout: float = 1800.0) -> GraphReport:
    """`build_graph` with TensorRT-RTX in a child interpreter (see the module docstring for why)."""
    from dflash_trt.plugins.trt_rtx import run_rtx_child

    def args(report: Path) -> list[str]:
        spec_path = report.with_name("spec.json")
        spec_path.write_text(json.dumps(asdict(spec)))
        return [str(spec_path), str(report)]

    return GraphReport(**run_rtx_child("dflash_trt.engine.trt_build", args, timeout, spec.onnx))


def main(argv: list[str] | None = None) -> int:
    spec_path, report_path = (argv or sys.argv[1:])[:2]
    spec = GraphSpec(**json.loads(Path(spec_path).read_text()))
    try:
        import tensorrt_rtx

        report = build_graph(tensorrt_rtx, spec)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(report_path).write_text(json.dumps(asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
