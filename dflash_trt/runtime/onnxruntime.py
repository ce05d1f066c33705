"""The onnxruntime backend: the exported graphs (`dflash_trt.export.graphs`) on CPU, through the runner contract.

The CPU twin of the TensorRT engines. Runners own numpy K/V buffers [batch, kv_heads, capacity, head_dim] and
each row's committed length; the graphs return `present.*` (K/V of the new tokens), which the runner writes
at cache_lens[b] + i; only `commit` (target) or the drafter's own bookkeeping advances a row. The buffers grow
with the longest row (in steps of `GROW` positions), and the whole buffer is the graph's `past` input (slots at
or beyond a row's length are masked), so no per-step copy of the caches leaves the graph.

The drafter graph fuses the KV injection with the block pass: `append_context` only queues the committed
features per row, and the next `draft` injects them and drafts in one run.

A tensor-parallel rank graph holds `dflash_trt::AllReduce` / `AllGather` nodes. Here the graph is split at
them into standard-op segments, each an onnxruntime session, run in order with MPI collectives (mpi4py)
between them: every custom node is replaced by a real collective, no Python op callback runs inside
onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dflash_trt.decoding.runners import Capacity, DrafterRunner, TargetRunner
from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.errors import UserError
from dflash_trt.export.graphs import DRAFTER, TARGET, past_names, present_names
from dflash_trt.runtime.loading import read_draft_vocab

GROW = 64  # cache buffers grow in steps of this many positions
COLLECTIVE_DOMAIN = "dflash_trt"
COLLECTIVES = ("AllReduce", "AllGather")  # run here with MPI between standard-op segments


def session_options():
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting of idle pool threads after a run: they would take the cores from torch (sampling, the
    # loop) and from the other sessions of a segmented graph (measured: torch ran 10x slower beside them)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class Graph:
    """One exported graph of this rank: a single session, or, with collective nodes, its segments."""

    def __init__(self, path: Path, weight_only: str | None = None) -> None:
        import onnx

        self.path = Path(path)
        proto = onnx.load(str(path), load_external_data=False)
        self.input_names = [i.name for i in proto.graph.input]
        self.output_names = [o.name for o in proto.graph.output]
        self.inputs = {i.name: i for i in proto.graph.input}
        plugins = sorted({n.op_type for n in proto.graph.node if n.domain == COLLECTIVE_DOMAIN} - set(COLLECTIVES))
        if plugins:
            raise UserError(
                f"{path}: holds TensorRT plugin node(s) {', '.join(plugins)}, which onnxruntime does not run "
                "(the recipe had 'attention: plugin'); rebuild with 'attention: native' for --backend onnxruntime"
            )
        self.collectives = [n for n in proto.graph.node if n.domain == COLLECTIVE_DOMAIN]
        if weight_only and self.collectives:
            raise UserError(f"{path}: --weight-only runs tp 1 engine directories; this graph is a TP rank's")
        if weight_only:
            from dflash_trt.runtime.weight_only import quantize_matmuls

            model = quantize_matmuls(onnx.load(str(path)), weight_only).SerializeToString()
        else:
            model = str(path)
        if not self.collectives:
            self.session = cpu_session(model, self.path)
            self.steps = None
        else:
            self.session = None
            self.steps = _segments(onnx.load(str(path)), self.path)

    def input_shape(self, name: str) -> list[int | str]:
        dims = self.inputs[name].type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]

    def input_dtype(self, name: str) -> np.dtype:
        import onnx

        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.inputs[name].type.tensor_type.elem_type))

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        """The named outputs (default: all, in graph order)."""
        outputs = outputs or self.output_names
        if self.steps is None:
            return self.session.run(outputs, feeds)
        values = dict(feeds)
        for step in self.steps:
            step(values)
        return [values[name] for name in outputs]


def cpu_session(model: str | bytes, path: Path):
    """An onnxruntime CPU session of `model` (a file or serialized bytes of graph `path`). A graph with an op
    the CPU provider lacks (bf16 MatMul, for one) is a user error naming the file."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        reason = str(exc).split("NOT_IMPLEMENTED : ")[-1].splitlines()[0]
        raise UserError(
            f"{path}: onnxruntime's CPU provider cannot run this graph ({reason}); "
            "build the engine directory with dtype fp32 or fp16 for --backend onnxruntime"
        ) from exc


class _Segment:
    def __init__(self, model_bytes: bytes, inputs: list[str], outputs: list[str], path: Path) -> None:
        self.session = cpu_session(model_bytes, path)
        self.inputs, self.outputs = inputs, outputs

    def __call__(self, values: dict[str, np.ndarray]) -> None:
        out = self.session.run(self.outputs, {name: values[name] for name in self.inputs})
        values.update(zip(self.outputs, out))


class _Collective:
    def __init__(self, node) -> None:
        self.op, self.input, self.output = node.op_type, node.input[0], node.output[0]
        attrs = {a.name: a for a in node.attribute}
        self.group_size = attrs["group_size"].i

    def __call__(self, values: dict[str, np.ndarray]) -> None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        if comm.Get_size() != self.group_size:
            raise UserError(
                f"graph collective {self.op} spans {self.group_size} ranks but {comm.Get_size()} run; "
                f"launch with `mpirun -n {self.group_size}`"
            )
        x = np.ascontiguousarray(values[self.input])
        if self.op == "AllReduce":
            out = x.copy()
            comm.Allreduce(MPI.IN_PLACE, out, op=MPI.SUM)
        else:
            parts = np.empty((self.group_size, *x.shape), dtype=x.dtype)
            comm.Allgather(x, parts)
            out = np.concatenate(list(parts), axis=-1)
        values[self.output] = out


def _segments(model, path: Path) -> list:
    """Split a graph at its collective nodes into standard-op segments and collectives, in run order.

    A tensor's level counts the collectives on its longest path from the graph inputs; segment s holds the
    standard nodes at level s, so it runs after the collectives producing level-s tensors. Element types of
    the tensors crossing a cut come from shape inference over a copy with the collectives made Identity.
    """
    from onnx import helper

    graph = model.graph
    nodes = list(graph.node)
    level: dict[str, int] = {}
    node_level = []
    for node in nodes:
        lvl = max((level.get(x, 0) for x in node.input if x), default=0)
        node_level.append(lvl)
        for out in node.output:
            level[out] = lvl + 1 if node.domain == COLLECTIVE_DOMAIN else lvl
    seg_of = [-1 if n.domain == COLLECTIVE_DOMAIN else lvl for n, lvl in zip(nodes, node_level)]
    consumer_segs: dict[str, set[int]] = {}
    for node, seg in zip(nodes, seg_of):
        for x in node.input:
            consumer_segs.setdefault(x, set()).add(seg)
    for out in graph.output:
        consumer_segs.setdefault(out.name, set()).add(-2)
    types = _elem_types(model)
    initializers = {t.name: t for t in graph.initializer}
    opsets = [o for o in model.opset_import if o.domain != COLLECTIVE_DOMAIN]
    steps = []
    for seg in range(max(node_level, default=0) + 1):
        members = [n for n, s in zip(nodes, seg_of) if s == seg]
        if members:
            produced = {out for n in members for out in n.output}
            needed = list(
                dict.fromkeys(x for n in members for x in n.input if x and x not in produced and x not in initializers)
            )
            outputs = [o for n in members for o in n.output if consumer_segs.get(o, set()) - {seg}]
            inits = list(dict.fromkeys(x for n in members for x in n.input if x in initializers))
            seg_graph = helper.make_graph(
                members,
                f"segment{seg}",
                [helper.make_tensor_value_info(x, types[x], None) for x in needed],
                [helper.make_tensor_value_info(x, types[x], None) for x in outputs],
                [initializers[x] for x in inits],
            )
            seg_model = helper.make_model(seg_graph, opset_imports=opsets, ir_version=model.ir_version)
            steps.append(_Segment(seg_model.SerializeToString(), needed, outputs, path))
        steps += [_Collective(n) for n, lvl in zip(nodes, node_level) if n.domain == COLLECTIVE_DOMAIN and lvl == seg]
    return steps


def _elem_types(model) -> dict[str, int]:
    import onnx

    shell = onnx.ModelProto()
    shell.CopyFrom(model)
    for t in shell.graph.initializer:  # types only: drop the weights' bytes
        t.ClearField("raw_data")
        t.ClearField("data_location")
        t.ClearField("external_data")
    for node in shell.graph.node:
        if node.domain == COLLECTIVE_DOMAIN:
            node.op_type, node.domain = "Identity", ""
            del node.attribute[:]
    inferred = onnx.shape_inference.infer_shapes(shell, strict_mode=False)
    types = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for t in model.graph.initializer:
        types[t.name] = t.data_type
    return types


class _Caches:
    """Per-layer numpy K/V [batch, kv_heads, capacity, head_dim], grown as rows get longer, and row lengths."""

    def __init__(self, layers: int, batch: int, kv_heads: int, head_dim: int, max_len: int, dtype: np.dtype) -> None:
        self.layers, self.kv_heads, self.head_dim, self.dtype = layers, kv_heads, head_dim, dtype
        self.max_len = max_len
        self.lens = np.zeros(batch, dtype=np.int64)
        self.kv = [np.zeros((batch, kv_heads, 0, head_dim), dtype) for _ in range(2 * layers)]

    def ensure(self, need: int) -> None:
        """Capacity for positions < need."""
        have = self.kv[0].shape[2]
        if need <= have:
            return
        cap = min(max(need, -(-need // GROW) * GROW), max(self.max_len, need))
        grown = []
        for buf in self.kv:
            new = np.zeros((buf.shape[0], self.kv_heads, cap, self.head_dim), self.dtype)
            new[:, :, :have] = buf
            grown.append(new)
        self.kv = grown

    def store(self, present: Sequence[np.ndarray], rows: np.ndarray, start: np.ndarray) -> None:
        """Write new K/V [n, t, kv_heads, d] of `rows` at positions start[i] + j."""
        t = present[0].shape[1]
        pos = start[:, None] + np.arange(t)
        r = rows[:, None]
        for buf, new in zip(self.kv, present):
            buf[r, :, pos] = new


class OrtTarget(TargetRunner):
    """Target runner over the exported `target` graph of this rank."""

    def __init__(self, graph: Graph, max_batch: int, max_seq_len: int, vocab_size: int) -> None:
        self.graph = graph
        self.layers = sum(name.startswith("past_key_values.") for name in graph.input_names) // 2
        _, self.kv_heads, _, self.head_dim = graph.input_shape("past_key_values.0.key")
        self.np_dtype = graph.input_dtype("past_key_values.0.key")
        self.dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}.get(
            self.np_dtype, torch.float32
        )
        self.device = torch.device("cpu")
        self.vocab_size = vocab_size
        self.capacity = Capacity(max_batch, max_seq_len, "max_seq_len")
        self.past, self.present = past_names(self.layers), present_names(self.layers)
        self.caches: _Caches | None = None
        self._index: dict[tuple[int, int], np.ndarray] = {}

    def reset(self, batch: int, max_len: int) -> None:
        self.caches = _Caches(self.layers, batch, self.kv_heads, self.head_dim, max_len, self.np_dtype)

    def _run(
        self, tokens: np.ndarray, cache_lens: np.ndarray, logits_index: np.ndarray, past: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        feeds = {"input_ids": tokens, "cache_lens": cache_lens, "logits_index": logits_index}
        feeds |= dict(zip(self.past, past))
        out = self.graph.run(feeds)
        return out[0], out[1], out[2:]

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], rows: list[int] | None = None) -> tuple[torch.Tensor, np.ndarray]:
        c = self.caches
        n = len(prompts)
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        lens = np.array([len(p) for p in prompts], dtype=np.int64)
        tokens = np.zeros((n, int(lens.max())), dtype=np.int64)
        for i, prompt in enumerate(prompts):
            tokens[i, : len(prompt)] = prompt
        empty = np.zeros((n, self.kv_heads, 0, self.head_dim), self.np_dtype)
        logits, features, present = self._run(
            tokens, np.zeros(n, np.int64), (lens - 1)[:, None], [empty] * (2 * self.layers)
        )
        c.ensure(tokens.shape[1])
        c.store(present, rows, np.zeros(n, np.int64))
        c.lens[rows] = lens
        return torch.from_numpy(logits[:, 0]), features

    @torch.inference_mode()
    def verify(self, block: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        c = self.caches
        b, t = block.shape
        c.ensure(int(c.lens.max()) + t)
        index = self._index.get((b, t))
        if index is None:
            index = self._index[(b, t)] = np.ascontiguousarray(np.broadcast_to(np.arange(t), (b, t)))
        logits, features, present = self._run(block.numpy(), c.lens, index, c.kv)
        c.store(present, np.arange(b), c.lens)
        return torch.from_numpy(logits), features

    def commit(self, n: torch.Tensor) -> None:
        self.caches.lens += n.numpy()


class OrtDrafter(DrafterRunner):
    """Drafter runner over the exported `drafter` graph (KV injection fused with the block pass)."""

    def __init__(self, graph: Graph, block_size: int, mask_token_id: int, vocab: torch.Tensor | None = None) -> None:
        if "draft_tokens" not in graph.output_names:
            raise UserError(f"{graph.path}: no draft_tokens output (an older export); rebuild with `dflash-trt build`")
        self.graph = graph
        self.block_size, self.mask_token_id = block_size, mask_token_id
        self.layers = sum(name.startswith("past_key_values.") for name in graph.input_names) // 2
        _, self.kv_heads, _, self.head_dim = graph.input_shape("past_key_values.0.key")
        self.np_dtype = graph.input_dtype("past_key_values.0.key")
        self.width = graph.input_shape("features")[2]
        self.head_dtype = {np.dtype(np.float16): torch.float16}.get(self.np_dtype, torch.float32)
        self.vocab = vocab  # the draft vocabulary the graph's head covers (`export_pair` writes it), None: all
        self.device = torch.device("cpu")
        self.past, self.present = past_names(self.layers), present_names(self.layers)
        self.caches: _Caches | None = None
        self.pending: list[list[np.ndarray]] = []

    def reset(self, batch: int, max_len: int) -> None:
        self.caches = _Caches(self.layers, batch, self.kv_heads, self.head_dim, max_len, self.np_dtype)
        self.pending = [[] for _ in range(batch)]

    def restart(self, rows: list[int]) -> None:
        for r in rows:
            self.caches.lens[r] = 0
            self.pending[r] = []

    def append_context(self, features: np.ndarray, n: torch.Tensor, rows: list[int] | None = None) -> None:
        rows = range(len(self.pending)) if rows is None else rows
        for i, (row, k) in enumerate(zip(rows, n.tolist())):
            if k:
                self.pending[row].append(features[i, :k])

    def draft(self, block: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(block, "logits"))

    def draft_and_propose(
        self, block: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Greedy: the graph's draft_tokens (its argmax), no logits copied out."""
        if not params.greedy:
            return super().draft_and_propose(block, params, generator)
        return torch.from_numpy(self._run(block, "draft_tokens")), None

    @torch.inference_mode()
    def _run(self, block: torch.Tensor, output: str) -> np.ndarray:
        """Inject the pending features and run the block pass; returns the graph output `output`."""
        c = self.caches
        b = block.shape[0]
        new = [np.concatenate(p) if p else None for p in self.pending]
        feature_lens = np.array([0 if x is None else len(x) for x in new], dtype=np.int64)
        t = max(1, int(feature_lens.max()))
        features = np.zeros((b, t, self.width), self.np_dtype)
        for i, x in enumerate(new):
            if x is not None:
                features[i, : len(x)] = x
        c.ensure(int(c.lens.max()) + t)
        feeds = {
            "input_ids": block.numpy(),
            "features": features,
            "feature_lens": feature_lens,
            "cache_lens": c.lens,
        } | dict(zip(self.past, c.kv))
        out = self.graph.run(feeds, [output, *self.present])
        c.store(out[1:], np.arange(b), c.lens)
        c.lens += feature_lens
        self.pending = [[] for _ in range(b)]
        return out[0]


def rank_dir(engine_dir: Path, rank: int) -> Path:
    return Path(engine_dir) / "onnx" / f"rank{rank}"


def load_graphs(
    engine_dir: Path, rank: int, use_drafter: bool = True, weight_only: str | None = None
) -> dict[str, Graph]:
    """This rank's exported graphs (weight-only quantized at load when asked); missing files are user errors
    naming the file."""
    graphs = {}
    for name in (TARGET, DRAFTER) if use_drafter else (TARGET,):
        path = rank_dir(engine_dir, rank) / f"{name}.onnx"
        if not path.is_file():
            raise UserError(f"{path}: missing; rebuild the engine directory with `dflash-trt build`")
        graphs[name] = Graph(path, weight_only)
    return graphs


def _get(cfg: dict, path: str, source: Path):
    value = cfg
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise UserError(f"{source}: missing field '{path}'; rebuild the engine directory with `dflash-trt build`")
        value = value[key]
    return value


def read_engine_config(engine_dir: Path) -> dict:
    """ENGINE_DIR/config.json with the fields this backend needs checked (each missing one named)."""
    from dflash_trt.config import read_json

    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise UserError(f"{engine_dir}: engine directory not found; build one with `dflash-trt build`")
    path = engine_dir / "config.json"
    cfg = read_json(path)
    for field in (
        "pretrained_config.vocab_size",
        "pretrained_config.num_hidden_layers",
        "pretrained_config.mapping.tp_size",
        "build_config.max_batch_size",
        "build_config.max_seq_len",
        "dflash.mask_token_id",
        "dflash.block_size",
        "dflash.target_layer_ids",
    ):
        value = _get(cfg, field, path)
        if field != "dflash.target_layer_ids" and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"{path}: field '{field}' must be an integer, got {value!r}")
    return cfg


def load_engine(
    engine_dir: Path, rank: int = 0, world: int = 1, use_drafter: bool = True, weight_only: str | None = None
) -> tuple[OrtTarget, OrtDrafter | None, dict]:
    """The onnxruntime runners of this rank of an engine directory, checked against its config.json;
    `weight_only` ("int4"/"int8", see `runtime.weight_only`) quantizes the graphs' weights at load."""
    engine_dir = Path(engine_dir)
    cfg = read_engine_config(engine_dir)
    path = engine_dir / "config.json"
    pre, build, dflash = cfg["pretrained_config"], cfg["build_config"], cfg["dflash"]
    tp = pre["mapping"]["tp_size"]
    if tp != world:
        raise UserError(
            f"{path}: mapping.tp_size is {tp} but {world} rank(s) run; launch with `mpirun -n {tp} dflash-trt ...`"
            if tp > 1
            else f"{path}: mapping.tp_size is 1; run without mpirun"
        )
    graphs = load_graphs(engine_dir, rank, use_drafter, weight_only)
    target = OrtTarget(graphs[TARGET], build["max_batch_size"], build["max_seq_len"], pre["vocab_size"])
    if target.layers != pre["num_hidden_layers"]:
        raise UserError(
            f"{graphs[TARGET].path}: {target.layers} layers but {path} says num_hidden_layers "
            f"{pre['num_hidden_layers']}; the graphs do not belong to this config: rebuild"
        )
    drafter = None
    if use_drafter:
        vocab = read_draft_vocab(graphs[DRAFTER].path.parent, pre["vocab_size"])
        drafter = OrtDrafter(graphs[DRAFTER], dflash["block_size"], dflash["mask_token_id"], vocab)
    return target, drafter, cfg
