"""The TensorRT backend: the runner contract over the engines of a `dflash-trt build` ENGINE_DIR, on an NVIDIA GPU.

Status: written against the TensorRT 10.x Python API and cuda-python, **not executed** (no GPU on the machines this
project is built and tested on). What is tested on the CPU: reading ENGINE_DIR, choosing profiles, planning every
buffer and which tensor binds where (`plan_bindings`), and that this module imports without `tensorrt`, CUDA or a
GPU (every such import is lazy).

How it runs (both runners share one CUDA stream):
- engines: `target/rank{r}.engine`, `drafter/rank{r}.engine` deserialized with `trt.Runtime`; the plugin library
  recorded in config.json is loaded into TensorRT's plugin registry first (`plugins.library.register_plugins`, which
  calls `IPluginRegistry.load_library`) and its sha256 checked against the record. At tp > 1 the library's NCCL
  communicator (its AllReduce/AllGather plugins' group) is created next, before any engine is deserialized:
  `init_communicator` (rank 0's unique id broadcast with mpi4py; every rank calls `dflash_trt_nccl_init`).
- one `IExecutionContext` per optimization profile ("prefill", "step"), each set once with
  `set_optimization_profile_async`.
- buffers are torch CUDA tensors allocated once at the engine's maxima: the KV caches [max_batch, kv_heads/tp,
  max_seq_len, head_dim] per layer are bound to the step contexts once (`set_tensor_address`; past = their capacity,
  rows beyond the current batch are simply not covered by the input shape); a prefill binds a one-position scratch
  cache (its rows start empty, cache_lens = 0). Outputs (logits, features, present K/V) are preallocated too.
  `present.*` (K/V of the new tokens) are written into the caches at cache_lens + i; only `commit` advances lengths.
- the step (draft and verify) is captured once per batch size into a CUDA graph (`cudaStreamBeginCapture` /
  `cudaStreamEndCapture` / `cudaGraphInstantiate`, cuda-python's `cuda.bindings.runtime`) after one warm-up
  `execute_async_v3`, and replayed with `cudaGraphLaunch`: shapes are fixed per (batch, block) and every address
  is bound once, which is what replay needs.
- acceptance on the device: greedy verify runs `DFlashAcceptTokens` (a one-layer TensorRT engine built at start-up
  from the plugin creator) on the draft tokens and the target's argmax, so only accepted lengths and next tokens
  leave the GPU; sampling uses the default (`sampling.accept` on the device tensors).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dflash_trt.decoding.runners import Capacity, DrafterRunner, TargetRunner
from dflash_trt.decoding.sampling import SamplingParams, accept
from dflash_trt.errors import UserError
from dflash_trt.export.graphs import DRAFTER, GRAPHS, TARGET, past_names, present_names
from dflash_trt.runtime.engine_dir import EngineDir, read_engine_dir
from dflash_trt.runtime.loading import read_draft_vocab

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
}


# --- what binds where (CPU-testable) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """One engine I/O tensor: the buffer it binds to and that buffer's allocation (the profile maximum).

    role: "input" (written by the runner before each run), "cache" (the persistent KV cache of that layer, bound once),
    "scratch" (a zeroed one-position cache for the target's prefill, whose rows start empty), "output"
    (preallocated, read after each run). The drafter binds its caches in both profiles: a prompt's context can be
    injected while other rows keep theirs (in-flight batching)."""

    name: str
    role: str
    buffer: str  # the runner's buffer name; several bindings may share one (the scratch cache)
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=TORCH_DTYPES[self.dtype]).element_size()


def _local(eng: EngineDir, graph: str) -> tuple[int, int, int]:
    """(layers, kv heads per rank, head_dim) of a graph."""
    cfg = eng.target if graph == TARGET else eng.drafter
    kv = int(eng.build.get("kv_heads_per_rank", {}).get(graph) or max(1, cfg.num_kv_heads // eng.tp_size))
    return cfg.num_layers, kv, cfg.head_dim


def profile_max(eng: EngineDir, graph: str, phase: str, name: str) -> tuple[int, ...]:
    """The maximum shape of input `name` in `phase`'s profile (past tensors share one entry)."""
    prof = eng.profiles[eng.profile_index(phase)][graph]
    key = "past_key_values.*" if name.startswith("past_key_values.") else name
    return tuple(prof[key][2])


def plan_bindings(eng: EngineDir, graph: str, phase: str) -> dict[str, Binding]:
    """Every I/O tensor of `graph` under `phase`'s profile and the buffer it binds to, at its maximum shape."""
    layers, kv, hd = _local(eng, graph)
    dtype, b = eng.dtype, eng.build["max_batch_size"]
    block, ms = eng.block_size, eng.build["max_seq_len"]
    vocab = eng.target.vocab_size
    t_max = profile_max(eng, graph, phase, "input_ids" if graph == TARGET else "features")[1]
    out: dict[str, Binding] = {}
    inputs = (
        ["input_ids", "cache_lens", "logits_index"]
        if graph == TARGET
        else ["input_ids", "features", "feature_lens", "cache_lens"]
    )
    for name in inputs:
        out[name] = Binding(
            name,
            "input",
            f"{graph}.{phase}.{name}",
            profile_max(eng, graph, phase, name),
            dtype if name == "features" else "int64",
        )
    for name in past_names(layers):
        if phase == "prefill" and graph == TARGET:  # a target prefill starts rows from empty caches
            out[name] = Binding(name, "scratch", f"{graph}.scratch", (b, kv, 1, hd), dtype)
        else:
            out[name] = Binding(
                name, "cache", f"{graph}.cache.{name.removeprefix('past_key_values.')}", (b, kv, ms, hd), dtype
            )
    if graph == TARGET:
        n = profile_max(eng, graph, phase, "logits_index")[1]
        features = len(eng.drafter.target_layer_ids) * eng.target.hidden_size
        out["logits"] = Binding("logits", "output", f"{graph}.{phase}.logits", (b, n, vocab), dtype)
        out["features"] = Binding("features", "output", f"{graph}.{phase}.features", (b, t_max, features), dtype)
    else:
        out["logits"] = Binding("logits", "output", f"{graph}.{phase}.logits", (b, block - 1, vocab), dtype)
        out["draft_tokens"] = Binding(
            "draft_tokens", "output", f"{graph}.{phase}.draft_tokens", (b, block - 1), "int64"
        )
    for name in present_names(layers):
        if graph == DRAFTER and in_place_context(eng):
            cache = f"{graph}.cache.{name.removeprefix('present.')}"
            out[name] = Binding(name, "cache", cache, (b, kv, ms, hd), dtype)
        else:
            out[name] = Binding(name, "output", f"{graph}.{phase}.{name}", (b, t_max, kv, hd), dtype)
    return out


def in_place_context(eng: EngineDir) -> bool:
    """The drafter graph's plugin flavor (recipe `attention: plugin`): `DFlashContextKVAppend` writes the context
    caches in place, so present.* are the cache buffers themselves (TensorRT aliases them to past_key_values.*)."""
    return eng.build.get("attention") == "plugin"


def buffer_bytes(eng: EngineDir) -> dict[str, int]:
    """Device bytes per role over both graphs and all profiles (shared buffers counted once)."""
    seen: dict[str, Binding] = {}
    for graph in GRAPHS:
        for prof in eng.profiles:
            seen.update({b.buffer: b for b in plan_bindings(eng, graph, prof["name"]).values()})
    out: dict[str, int] = {}
    for b in seen.values():
        out[b.role] = out.get(b.role, 0) + b.nbytes
    return out


def choose_phase(eng: EngineDir, graph: str, tokens: int) -> str:
    """The profile for a run of `tokens` new tokens (target) or context features (drafter): "step" when it fits
    the step profile, else "prefill"."""
    name = "input_ids" if graph == TARGET else "features"
    step_max = profile_max(eng, graph, "step", name)[1]
    if tokens <= step_max:
        return "step"
    if "prefill" not in [p["name"] for p in eng.profiles] or tokens > profile_max(eng, graph, "prefill", name)[1]:
        raise UserError(
            f"{eng.root / 'config.json'}: {tokens} tokens exceed the engine's profiles (max_input_len "
            f"{eng.build['max_input_len']}); rebuild with a larger max_input_len"
        )
    return "prefill"


def available() -> bool:
    """True when datacenter TensorRT imports and a CUDA GPU is visible to torch."""
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return False
    return torch.cuda.is_available()


# --- the GPU side (written, not executed) ----------------------------------------------------------------------------


def _check(result: Any) -> Any:
    """cuda-python returns (cudaError_t, *values): raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        from cuda.bindings import runtime as cudart

        raise RuntimeError(f"CUDA error {int(err)}: {cudart.cudaGetErrorString(err)[1].decode()}")
    return values[0] if len(values) == 1 else values


class _Engine:
    """One deserialized engine with an execution context per profile, bound buffers and captured CUDA graphs."""

    def __init__(
        self, trt, runtime, eng: EngineDir, graph: str, rank: int, stream: torch.cuda.Stream, buffers: dict[str, Tensor]
    ) -> None:
        path = eng.engine(graph, rank)
        if path is None or not path.is_file():
            raise UserError(
                f"{eng.root}: no {graph}/rank{rank}.engine (built without datacenter TensorRT); run "
                "`dflash-trt build` on a GPU host with TensorRT, or use the onnxruntime backend"
            )
        self.trt, self.eng, self.graph, self.stream = trt, eng, graph, stream
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(
                f"{path}: TensorRT could not deserialize it (built by another TensorRT version or GPU); "
                "rebuild it on this host"
            )
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.contexts: dict[str, Any] = {}
        self.bindings: dict[str, dict[str, Binding]] = {}
        self.graphs: dict[tuple, Any] = {}  # (phase, shapes) -> cudaGraphExec_t
        for index, prof in enumerate(eng.profiles):
            phase = prof["name"]
            ctx = self.engine.create_execution_context()
            ctx.set_optimization_profile_async(index, stream.cuda_stream)
            plan = plan_bindings(eng, graph, phase)
            missing = sorted(set(self.names) ^ set(plan))
            if missing:
                raise UserError(
                    f"{path}: tensors {missing[:3]} differ from the engine directory's contract; "
                    "rebuild the engine directory"
                )
            for name in self.names:
                found = str(self.engine.get_tensor_dtype(name)).removeprefix("DataType.").lower()
                want = {"float": "float32", "half": "float16", "bf16": "bfloat16"}.get(found, found)
                if want != plan[name].dtype:
                    raise UserError(
                        f"{path}: tensor {name} is {want}, the engine directory says {plan[name].dtype}; "
                        "rebuild the engine directory"
                    )
            for name in self.names:
                ctx.set_tensor_address(name, buffers[plan[name].buffer].data_ptr())
            self.contexts[phase], self.bindings[phase] = ctx, plan
        stream.synchronize()

    def run(self, phase: str, shapes: dict[str, tuple[int, ...]], graph_key: tuple | None = None) -> None:
        """Set the input shapes of `phase` and enqueue it; with `graph_key`, replay (or first capture) a CUDA graph.
        Inputs and outputs live at fixed addresses, so a replay reads the current inputs."""
        ctx = self.contexts[phase]
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                raise RuntimeError(f"{self.graph}/{phase}: TensorRT refused shape {shape} for {name}")
        handle = self.stream.cuda_stream
        if graph_key is None:
            if not ctx.execute_async_v3(handle):
                raise RuntimeError(f"{self.graph}/{phase}: execute_async_v3 failed")
            return
        from cuda.bindings import runtime as cudart

        key = (phase, *graph_key)
        if key not in self.graphs:
            ctx.execute_async_v3(handle)  # warm-up outside the capture (TensorRT allocates lazily on first run)
            _check(cudart.cudaStreamBeginCapture(handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            ok = ctx.execute_async_v3(handle)
            graph = _check(cudart.cudaStreamEndCapture(handle))
            if not ok:
                raise RuntimeError(f"{self.graph}/{phase}: execute_async_v3 failed during CUDA graph capture")
            self.graphs[key] = _check(cudart.cudaGraphInstantiate(graph, 0))
            _check(cudart.cudaGraphDestroy(graph))
        _check(cudart.cudaGraphLaunch(self.graphs[key], handle))


def init_communicator(lib: Path, rank: int, world: int, comm: Any = None) -> None:
    """Create the NCCL communicator of the plugin library's AllReduce/AllGather plugins on the current CUDA device:
    rank 0 makes the unique id (`dflash_trt_nccl_unique_id`), MPI broadcasts it (or rank 0's error), and every rank
    joins with `dflash_trt_nccl_init` (which blocks until all have). `comm` defaults to MPI.COMM_WORLD."""
    import ctypes

    from dflash_trt.plugins.library import load_plugin_library

    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    if comm.Get_size() != world:
        raise UserError(f"the engines are built for tp {world}, but {comm.Get_size()} ranks run: mpirun -n {world}")
    so = load_plugin_library(lib)
    so.dflash_trt_nccl_unique_id.restype = so.dflash_trt_nccl_init.restype = ctypes.c_char_p
    so.dflash_trt_nccl_init.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    unique_id = ctypes.create_string_buffer(128)
    error = so.dflash_trt_nccl_unique_id(unique_id) if rank == 0 else None
    error, raw = comm.bcast((error, unique_id.raw), root=0)
    error = error or so.dflash_trt_nccl_init(raw, rank, world)
    if error:
        raise UserError(f"{lib}: no NCCL communicator for rank {rank} of {world}: {error.decode()}")


class _Session:
    """What both runners share: TensorRT, the plugin library, the stream, every device buffer."""

    def __init__(self, engine_dir: Path, rank: int = 0, device: torch.device | None = None) -> None:
        import tensorrt as trt

        from dflash_trt.plugins.library import ENV_VAR, register_plugins

        self.eng = read_engine_dir(engine_dir)
        if rank >= self.eng.tp_size:
            raise UserError(f"{self.eng.root}: built for tp {self.eng.tp_size}, no rank {rank}")
        self.trt, self.rank = trt, rank
        self.device = device or torch.device("cuda", rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(self.device)
        lib = Path(os.environ.get(ENV_VAR) or self.eng.config["plugin"]["built_from"])
        if not lib.is_file():
            raise UserError(
                f"{lib}: the plugin library recorded in {self.eng.root / 'config.json'} is missing; set "
                f"{ENV_VAR} to the cuda build of libdflash_trt_plugins.so"
            )
        digest = hashlib.sha256(lib.read_bytes()).hexdigest()
        if digest != self.eng.config["plugin"]["sha256"]:
            raise UserError(
                f"{lib}: sha256 differs from the plugin library the engines were built with "
                f"({self.eng.root / 'config.json'} 'plugin.sha256'); rebuild the engines or point "
                f"{ENV_VAR} at that library"
            )
        self.logger = trt.Logger(trt.Logger.WARNING)
        register_plugins(trt, lib)
        if self.eng.tp_size > 1:  # the AllReduce/AllGather plugins need their communicator before deserialization
            init_communicator(lib, rank, self.eng.tp_size)
        self.runtime = trt.Runtime(self.logger)
        self.stream = torch.cuda.Stream(self.device)
        self.buffers: dict[str, Tensor] = {}
        for graph in GRAPHS:
            for prof in self.eng.profiles:
                for b in plan_bindings(self.eng, graph, prof["name"]).values():
                    if b.buffer not in self.buffers:
                        self.buffers[b.buffer] = torch.zeros(b.shape, dtype=TORCH_DTYPES[b.dtype], device=self.device)
        self.engines = {g: _Engine(trt, self.runtime, self.eng, g, rank, self.stream, self.buffers) for g in GRAPHS}
        self.use_cuda_graphs = True
        self.accept_engine = _AcceptEngine(
            trt, self.runtime, self.logger, self.eng, self.buffers, self.stream, self.device
        )

    def caches(self, graph: str) -> list[tuple[Tensor, Tensor]]:
        layers = (self.eng.target if graph == TARGET else self.eng.drafter).num_layers
        return [
            (self.buffers[f"{graph}.cache.{i}.key"], self.buffers[f"{graph}.cache.{i}.value"]) for i in range(layers)
        ]


def _store(
    caches: list[tuple[Tensor, Tensor]], present: list[Tensor], rows: Tensor, start: Tensor, count: Tensor
) -> None:
    """Write present K/V [n, t, kv, hd] of `rows` into caches [B, kv, S, hd] at start[i] + j for j < count[i]."""
    t = present[0].shape[1]
    steps = torch.arange(t, device=rows.device)
    valid = steps[None, :] < count[:, None]
    r = rows[:, None].expand(-1, t)[valid]
    pos = (start[:, None] + steps)[valid]
    for (k_cache, v_cache), k, v in zip(caches, present[0::2], present[1::2]):
        k_cache[r, :, pos] = k[valid]
        v_cache[r, :, pos] = v[valid]


class TensorRTTarget(TargetRunner):
    """Target runner over `target/rank{r}.engine`."""

    def __init__(self, session: _Session) -> None:
        self.s, eng = session, session.eng
        self.device, self.dtype = session.device, TORCH_DTYPES[eng.dtype]
        self.vocab_size = eng.target.vocab_size
        self.capacity = Capacity(
            eng.build["max_batch_size"], eng.build["max_seq_len"], f"max_seq_len of {eng.root / 'config.json'}"
        )
        self.layers = eng.target.num_layers
        self.lens = torch.zeros(self.capacity.max_batch, dtype=torch.long, device=self.device)
        self.batch = 0
        self._pending: tuple[list[Tensor], int] | None = None  # the last verify's present K/V and batch

    def reset(self, batch: int, max_len: int) -> None:
        if batch > self.capacity.max_batch or max_len > self.capacity.max_len:
            raise UserError(
                f"{self.s.eng.root / 'config.json'}: batch {batch} x {max_len} positions exceed the "
                f"engines' max_batch_size {self.capacity.max_batch} / max_seq_len {self.capacity.max_len}"
            )
        self.batch = batch
        self.lens.zero_()

    def _outputs(self, phase: str, n: int, t: int) -> tuple[Tensor, Tensor, list[Tensor]]:
        buf = self.s.buffers
        logits = buf[f"target.{phase}.logits"]
        features = buf[f"target.{phase}.features"]
        present = [buf[f"target.{phase}.{name}"] for name in present_names(self.layers)]
        return logits, features, present

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], rows: list[int] | None = None) -> tuple[Tensor, Tensor]:
        eng, buf = self.s.eng, self.s.buffers
        n, t = len(prompts), max(len(p) for p in prompts)
        phase = choose_phase(eng, TARGET, t)
        rows_t = torch.arange(n, device=self.device) if rows is None else torch.tensor(rows, device=self.device)
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        with torch.cuda.stream(self.s.stream):
            ids = buf[f"target.{phase}.input_ids"]
            ids[:n, :t] = 0
            for i, p in enumerate(prompts):
                ids[i, : len(p)] = torch.tensor(p, device=self.device)
            buf[f"target.{phase}.cache_lens"][:n] = 0  # new rows: no past is visible (a step run reads rows 0..n-1)
            buf[f"target.{phase}.logits_index"][:n, 0] = lens - 1
            shapes = {"input_ids": (n, t), "cache_lens": (n,), "logits_index": (n, 1)}
            past = (n, *plan_bindings(eng, TARGET, phase)[past_names(1)[0]].shape[1:])
            shapes.update({name: past for name in past_names(self.layers)})
            self.s.engines[TARGET].run(phase, shapes)
            logits, features, present = self._outputs(phase, n, t)
            self.lens[rows_t] = 0
            _store(self.s.caches(TARGET), [p[:n, :t] for p in present], rows_t, self.lens[rows_t], lens)
            self.lens[rows_t] = lens
            out = logits[:n, 0].float().clone(), features[:n, :t].clone()
        self.s.stream.synchronize()
        return out

    def _verify(self, block: Tensor) -> tuple[Tensor, Tensor]:
        eng, buf = self.s.eng, self.s.buffers
        b, bs = block.shape
        with torch.cuda.stream(self.s.stream):
            buf["target.step.input_ids"][:b, :bs] = block
            buf["target.step.cache_lens"][:b] = self.lens[:b]
            buf["target.step.logits_index"][:b, :bs] = torch.arange(bs, device=self.device)
            past = (b, *plan_bindings(eng, TARGET, "step")[past_names(1)[0]].shape[1:])
            shapes = {"input_ids": (b, bs), "cache_lens": (b,), "logits_index": (b, bs)}
            shapes.update({name: past for name in past_names(self.layers)})
            self.s.engines[TARGET].run("step", shapes, (b, bs) if self.s.use_cuda_graphs else None)
            logits, features, present = self._outputs("step", b, bs)
            _store(
                self.s.caches(TARGET),
                [p[:b, :bs] for p in present],
                torch.arange(b, device=self.device),
                self.lens[:b],
                torch.full((b,), bs, device=self.device),
            )
        return logits[:b, :bs], features[:b, :bs]

    @torch.inference_mode()
    def verify(self, block: Tensor) -> tuple[Tensor, Tensor]:
        logits, features = self._verify(block)
        out = logits.float().clone(), features.clone()
        self.s.stream.synchronize()
        return out

    @torch.inference_mode()
    def verify_and_accept(
        self, block: Tensor, q: Tensor | None, params: SamplingParams, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        logits, features = self._verify(block)
        if params.temperature == 0 and self.s.accept_engine.ready:
            accepted, next_token = self.s.accept_engine.run(block[:, 1:], logits.argmax(-1))
        else:
            accepted, next_token = accept(block[:, 1:], q, logits.float(), params, generator)
        out = accepted, next_token, features.clone()
        self.s.stream.synchronize()
        return out

    def commit(self, n: Tensor) -> None:
        self.lens[: len(n)] += n.to(self.device)


class TensorRTDrafter(DrafterRunner):
    """Drafter runner over `drafter/rank{r}.engine`. The engine fuses KV injection with drafting, so
    `append_context` queues the committed features and the next `draft` injects them and drafts in one run."""

    def __init__(self, session: _Session) -> None:
        self.s, eng = session, session.eng
        self.device = session.device
        self.block_size, self.mask_token_id = eng.block_size, eng.drafter.mask_token_id
        self.layers = eng.drafter.num_layers
        mb = eng.build["max_batch_size"]
        width = len(eng.drafter.target_layer_ids) * eng.target.hidden_size
        t_max = max(profile_max(eng, DRAFTER, p["name"], "features")[1] for p in eng.profiles)
        self.pending = torch.zeros(mb, t_max, width, dtype=TORCH_DTYPES[eng.dtype], device=self.device)
        self.pending_lens = torch.zeros(mb, dtype=torch.long, device=self.device)
        self.lens = torch.zeros(mb, dtype=torch.long, device=self.device)
        self.head_dtype = TORCH_DTYPES[eng.dtype]
        # the draft vocabulary the engine's head covers (`export_pair` wrote it beside the graph), None: all
        self.vocab = read_draft_vocab(eng.onnx(DRAFTER, session.rank).parent, eng.target.vocab_size)

    def reset(self, batch: int, max_len: int) -> None:
        self.lens.zero_()
        self.pending_lens.zero_()

    def restart(self, rows: list[int]) -> None:
        idx = torch.tensor(rows, device=self.device)
        self.lens[idx] = 0
        self.pending_lens[idx] = 0

    @torch.inference_mode()
    def append_context(self, features: Tensor, n: Tensor, rows: list[int] | None = None) -> None:
        rows = list(range(features.shape[0])) if rows is None else rows
        with torch.cuda.stream(self.s.stream):
            for i, row in enumerate(rows):  # a few rows per step; offsets differ per row
                k, start = int(n[i]), int(self.pending_lens[row])
                self.pending[row, start : start + k] = features[i, :k]
                self.pending_lens[row] += k

    def draft(self, block: Tensor) -> Tensor:
        phase = self._run(block)
        self.s.stream.synchronize()  # the engine ran on the session's stream; the copy below is on the current one
        return self.s.buffers[f"drafter.{phase}.logits"][: block.shape[0], : block.shape[1] - 1].float().clone()

    def draft_and_propose(
        self, block: Tensor, params: SamplingParams, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None]:
        """Greedy: the engine's draft_tokens (its argmax on the device), no logits copied."""
        if not params.greedy:
            return super().draft_and_propose(block, params, generator)
        phase = self._run(block)
        self.s.stream.synchronize()
        return self.s.buffers[f"drafter.{phase}.draft_tokens"][: block.shape[0], : block.shape[1] - 1].clone(), None

    @torch.inference_mode()
    def _run(self, block: Tensor) -> str:
        """Inject the pending features and run the block pass on the session's stream; returns the phase run."""
        eng, buf = self.s.eng, self.s.buffers
        b, bs = block.shape
        t = max(1, int(self.pending_lens[:b].max()))
        phase = choose_phase(eng, DRAFTER, t)
        if phase == "step":
            t = profile_max(eng, DRAFTER, "step", "features")[1]  # fixed width: CUDA-graph replayable
        with torch.cuda.stream(self.s.stream):
            buf[f"drafter.{phase}.input_ids"][:b, :bs] = block
            buf[f"drafter.{phase}.features"][:b, :t] = self.pending[:b, :t]
            buf[f"drafter.{phase}.feature_lens"][:b] = self.pending_lens[:b]
            buf[f"drafter.{phase}.cache_lens"][:b] = self.lens[:b]
            shapes = {
                "input_ids": (b, bs),
                "features": (b, t, self.pending.shape[-1]),
                "feature_lens": (b,),
                "cache_lens": (b,),
            }
            past = (b, *plan_bindings(eng, DRAFTER, "step")[past_names(1)[0]].shape[1:])
            shapes.update({name: past for name in past_names(self.layers)})
            # both profiles read the persistent caches here: the drafter's context is never empty after a prefill
            self.s.engines[DRAFTER].run(
                phase, shapes, (b, bs, t) if phase == "step" and self.s.use_cuda_graphs else None
            )
            if not in_place_context(eng):
                present = [buf[f"drafter.{phase}.{name}"][:b, :t] for name in present_names(self.layers)]
                _store(
                    self.s.caches(DRAFTER),
                    present,
                    torch.arange(b, device=self.device),
                    self.lens[:b],
                    self.pending_lens[:b],
                )
            self.lens[:b] += self.pending_lens[:b]
            self.pending_lens[:b] = 0
        return phase


class _AcceptEngine:
    """Greedy acceptance on the device: a one-layer TensorRT engine holding the `DFlashAcceptTokens` plugin
    (inputs draft_tokens [b, B-1] and target_tokens [b, B] int32; outputs accepted_len [b], bonus_token [b])."""

    def __init__(self, trt, runtime, logger, eng: EngineDir, buffers: dict[str, Tensor], stream, device) -> None:
        from dflash_trt.plugins.contracts import ACCEPT_TOKENS

        self.ready, self.stream = False, stream
        mb, block = eng.build["max_batch_size"], eng.block_size
        creator = trt.get_plugin_registry().get_creator(
            ACCEPT_TOKENS.name, ACCEPT_TOKENS.version, ACCEPT_TOKENS.namespace
        )
        if creator is None or not hasattr(trt.INetworkDefinition, "add_plugin_v3"):
            return  # the default acceptance (sampling.accept on the device) serves
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        draft = network.add_input("draft_tokens", trt.int32, (-1, block - 1))
        target = network.add_input("target_tokens", trt.int32, (-1, block))
        plugin = creator.create_plugin(ACCEPT_TOKENS.name, trt.PluginFieldCollection([]), trt.TensorRTPhase.BUILD)
        layer = network.add_plugin_v3([draft, target], [], plugin)
        for i, name in enumerate(("accepted_len", "bonus_token")):
            layer.get_output(i).name = name
            network.mark_output(layer.get_output(i))
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        profile.set_shape("draft_tokens", (1, block - 1), (mb, block - 1), (mb, block - 1))
        profile.set_shape("target_tokens", (1, block), (mb, block), (mb, block))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            return
        self.engine = runtime.deserialize_cuda_engine(plan)
        self.context = self.engine.create_execution_context()
        self.bufs = {
            "draft_tokens": torch.zeros(mb, block - 1, dtype=torch.int32, device=device),
            "target_tokens": torch.zeros(mb, block, dtype=torch.int32, device=device),
            "accepted_len": torch.zeros(mb, dtype=torch.int32, device=device),
            "bonus_token": torch.zeros(mb, dtype=torch.int32, device=device),
        }
        for name, t in self.bufs.items():
            self.context.set_tensor_address(name, t.data_ptr())
        self.ready = True

    def run(self, draft: Tensor, target_argmax: Tensor) -> tuple[Tensor, Tensor]:
        b = draft.shape[0]
        self.bufs["draft_tokens"][:b] = draft
        self.bufs["target_tokens"][:b] = target_argmax
        self.context.set_input_shape("draft_tokens", tuple(draft.shape))
        self.context.set_input_shape("target_tokens", tuple(target_argmax.shape))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("DFlashAcceptTokens: execute_async_v3 failed")
        return self.bufs["accepted_len"][:b].long(), self.bufs["bonus_token"][:b].long()


def load_runners(engine_dir: Path, rank: int = 0) -> tuple[TensorRTTarget, TensorRTDrafter]:
    """The TensorRT target and drafter runners of ENGINE_DIR for TP rank `rank` (a GPU and TensorRT needed)."""
    if not available():
        raise UserError(
            f"{engine_dir}: the TensorRT backend needs datacenter TensorRT (`import tensorrt`) and a "
            "CUDA GPU; use the onnxruntime backend on this host"
        )
    session = _Session(Path(engine_dir), rank)
    return TensorRTTarget(session), TensorRTDrafter(session)
