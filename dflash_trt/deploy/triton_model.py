"""The Triton Python-backend model behind `deploy triton --kind python`: one decode thread drives the project's
`SpeculativeBatch` over `max_batch` rows. `execute` only validates and queues requests (decoupled); the decode
thread admits queued requests into free rows between steps (in-flight batching: they join the running batch at the
next step), streams each row's text as it is committed, answers finished rows and frees rows whose request was
cancelled or whose client went away. Bad requests get an error response; the others keep running.

Runs inside Triton's Python stub (`triton_python_backend_utils` is importable only there).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.decoding.speculative import Request, SpeculativeBatch
from dflash_trt.errors import UserError

WAIT_S = 0.2  # the decode thread's idle wait (bounded, so finalize is noticed)


@dataclass
class Job:
    request: object  # pb_utils.InferenceRequest
    sender: object  # its response sender
    prompt: str
    req: Request
    streaming: bool
    include_prompt: bool
    stops: tuple[str, ...]
    arrival_ns: int
    tokens: list[int] = field(default_factory=list)
    sent: str = ""  # text already streamed
    first_token_ns: int = 0
    last_token_ns: int = 0
    stopped_by_text: bool = False


def _scalar(pb, request, name: str, default):
    tensor = pb.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    array = tensor.as_numpy().reshape(-1)
    if array.size != 1:
        raise UserError(f"input '{name}' has {array.size} values; send exactly one")
    value = array[0]
    return value.item() if hasattr(value, "item") else value


def _strings(pb, request, name: str) -> list[str]:
    tensor = pb.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]


class DFlashServingModel:
    def initialize(self, args: dict) -> None:
        import torch
        import triton_python_backend_utils as pb

        self.pb = pb
        config = json.loads(args["model_config"])
        self.name = config["name"]
        p = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(p.get("threads") or 2))
        self.max_tokens_limit = int(p.get("max_tokens_limit") or 512)
        self.default_max_tokens = int(p.get("default_max_tokens") or 64)
        self.pipe = _load(p)
        max_batch, max_seq_len = int(p.get("max_batch") or 8), int(p.get("max_seq_len") or 1024)
        drafter, block = self.pipe.drafter, int(p["block_size"]) if p.get("block_size") else None
        if drafter is not None and block is None:
            drafter, block = self._auto_block(p, max_batch)
        self.batch = SpeculativeBatch(
            self.pipe.target, drafter, max_batch, max_seq_len, block, on_tokens=self._on_tokens
        )
        self.jobs: dict[int, Job] = {}  # row -> job
        self.queue: list[Job] = []
        self.cv = threading.Condition()
        self.tokenizer_lock = threading.Lock()
        self.stopping = False
        self.step_log = open(p["step_log"], "a") if p.get("step_log") else None
        self._metrics()
        self.thread = threading.Thread(target=self._loop, name="dflash-decode", daemon=True)
        self.thread.start()

    def _auto_block(self, p: dict[str, str], max_batch: int):
        """(drafter or None, block size) that the drafter's greedy acceptance and this machine's step costs
        recommend for a full batch (calibrated once per machine, as `generate` does); logged to the server's log."""
        from dflash_trt.bench.calibration import auto_block
        from dflash_trt.pipeline import backend_label

        label = backend_label(bool(p.get("engine_dir")), p.get("backend"), dtype=p.get("dtype") or "fp32")
        return auto_block(self.pipe, label, self._log, max_batch)

    def _log(self, msg: str) -> None:
        """A line in the server's log (the stub's stderr)."""
        print(f"dflash model {self.name}: {msg}", file=sys.stderr, flush=True)

    def _metrics(self) -> None:
        """Custom metrics on Triton's /metrics (the families must outlive their metrics: kept on self)."""
        fam, labels = self.pb.MetricFamily, {"model": self.name}
        self.families = []

        def metric(name: str, doc: str, kind):
            self.families.append(fam(name, doc, kind))
            return self.families[-1].Metric(labels=labels)

        self.m_active = metric("dflash_active_rows", "rows decoding now", fam.GAUGE)
        self.m_queued = metric("dflash_queued_requests", "requests waiting for a free row", fam.GAUGE)
        self.m_steps = metric("dflash_steps_total", "speculative steps run", fam.COUNTER)
        self.m_joined = metric(
            "dflash_joined_running_batch_total", "requests admitted while other rows were decoding", fam.COUNTER
        )
        self.m_done = metric("dflash_requests_completed_total", "requests answered in full", fam.COUNTER)
        self.m_cancelled = metric(
            "dflash_requests_cancelled_total", "rows freed for a cancelled or gone client", fam.COUNTER
        )
        self.m_rejected = metric("dflash_requests_rejected_total", "requests refused with an error", fam.COUNTER)
        self.m_tokens = metric("dflash_output_tokens_total", "tokens generated", fam.COUNTER)

    # -- requests -------------------------------------------------------------------------------------------------
    def _parse(self, request) -> Job:
        pb = self.pb
        texts = _strings(pb, request, "text_input")
        if len(texts) != 1:
            raise UserError(f"input 'text_input' has {len(texts)} strings; send exactly one")
        text = texts[0]
        if not text.strip():
            raise UserError("input 'text_input' is empty; send a prompt")
        max_tokens = int(_scalar(pb, request, "sampling_param_max_tokens", self.default_max_tokens))
        if not 1 <= max_tokens <= self.max_tokens_limit:
            raise UserError(f"input 'sampling_param_max_tokens' is {max_tokens}; use 1..{self.max_tokens_limit}")
        temperature = float(_scalar(pb, request, "sampling_param_temperature", 0.0))
        top_k = int(_scalar(pb, request, "sampling_param_top_k", 0))
        top_p = float(_scalar(pb, request, "sampling_param_top_p", 1.0))
        seed = _scalar(pb, request, "sampling_param_seed", None)
        for name, bad, fix in (
            (
                "sampling_param_temperature",
                temperature < 0 or not np.isfinite(temperature),
                "use 0 (greedy) or a positive value",
            ),
            ("sampling_param_top_k", top_k < 0, "use 0 (off) or a positive count"),
            ("sampling_param_top_p", not 0 < top_p <= 1, "use a value in (0, 1]"),
        ):
            if bad:
                value = {
                    "sampling_param_temperature": temperature,
                    "sampling_param_top_k": top_k,
                    "sampling_param_top_p": top_p,
                }[name]
                raise UserError(f"input '{name}' is {value}; {fix}")
        params = SamplingParams(temperature, top_k, top_p, None if seed is None else int(seed))
        with self.tokenizer_lock:  # execute's thread encodes while the decode thread decodes
            prompt = self.pipe.encode(text, chat=False)
        req = Request(prompt, max_tokens, self.pipe.stop_ids(), params)
        self.batch.check(req, "input 'text_input'")
        return Job(
            request,
            request.get_response_sender(),
            text,
            req,
            bool(_scalar(pb, request, "streaming", False)),
            not bool(_scalar(pb, request, "sampling_param_exclude_input_from_output", True)),
            tuple(s for s in _strings(pb, request, "sampling_param_stop") if s),
            time.time_ns(),
        )

    def execute(self, requests: list) -> None:
        pb = self.pb
        for request in requests:
            try:
                job = self._parse(request)
            except UserError as exc:
                self.m_rejected.increment(1)
                request.get_response_sender().send(
                    pb.InferenceResponse(error=pb.TritonError(str(exc))), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
                )
                continue
            with self.cv:
                self.queue.append(job)
                self.cv.notify()
        return None

    # -- decode thread --------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.stopping and not self.queue and not self.jobs:
                    self.cv.wait(WAIT_S)
                if self.stopping:
                    return
                free = self.batch.free_rows()
                admit, self.queue = self.queue[: len(free)], self.queue[len(free) :]
            try:
                self.m_queued.set(len(self.queue))
                self._admit(admit, free)
                self._drop_cancelled()
                if self.batch.active_rows():
                    t0 = time.perf_counter()
                    active = len(self.batch.active_rows())
                    finished = self.batch.step()
                    self.m_steps.increment(1)
                    if self.step_log:
                        self.step_log.write(
                            json.dumps({"t": time.time(), "active": active, "step_s": time.perf_counter() - t0}) + "\n"
                        )
                        self.step_log.flush()
                    for row in finished:
                        self._finish(row)
                for row in [r for r, j in self.jobs.items() if j.stopped_by_text]:
                    self._finish(row)
                self.m_active.set(len(self.jobs))
            except Exception as exc:  # never leave clients hanging: fail every live request, keep serving
                for job in admit:
                    if job not in self.jobs.values():
                        self._reply_error(job, f"internal error: {type(exc).__name__}: {exc}")
                for row in list(self.jobs):
                    self._error(row, f"internal error: {type(exc).__name__}: {exc}")
            # Hold no request between steps: the backend unloads a decoupled model only once every request's
            # response sender is released.
            admit = free = None

    def _admit(self, jobs: list[Job], free: list[int]) -> None:
        cancelled = [j for j in jobs if self._cancelled(j)]
        for job in cancelled:
            self._reply_cancelled(job)
        jobs = [j for j in jobs if j not in cancelled]
        if not jobs:
            return
        rows = free[: len(jobs)]
        if self.batch.active_rows():
            self.m_joined.increment(len(jobs))
        for row, job in zip(rows, jobs):
            self.jobs[row] = job
        self.batch.add([j.req for j in jobs], rows)
        for row in rows:  # a request may end at its first token
            if not self.batch.active[row]:
                self._finish(row)

    def _cancelled(self, job: Job) -> bool:
        for obj in (job.request, job.sender):
            check = getattr(obj, "is_cancelled", None)
            if check is not None and check():
                self.m_cancelled.increment(1)
                return True
        return False

    def _drop_cancelled(self) -> None:
        for row, job in list(self.jobs.items()):
            if self._cancelled(job):
                self._reply_cancelled(job)
                self._free(row)

    def _reply_cancelled(self, job: Job) -> None:
        """Close a cancelled request's response stream (the backend waits for its final flag)."""
        pb = self.pb
        try:
            code = getattr(pb.TritonError, "CANCELLED", None)
            error = pb.TritonError("request cancelled", code) if code is not None else pb.TritonError("cancelled")
            job.sender.send(pb.InferenceResponse(error=error), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:
            pass

    def _free(self, row: int) -> None:
        self.batch.remove(row)
        self.jobs.pop(row, None)

    def _on_tokens(self, row: int, new: list[int]) -> None:
        job = self.jobs.get(row)
        if job is None or not new:
            return
        now = time.time_ns()
        job.first_token_ns = job.first_token_ns or now
        job.last_token_ns = now
        job.tokens += new
        self.m_tokens.increment(len(new))
        if job.stops and not job.stopped_by_text:
            text = self._text(job)
            hits = [text.find(s) for s in job.stops if s in text]
            job.stopped_by_text = bool(hits)
        if job.streaming and not job.stopped_by_text:
            text = self._text(job)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next tokens
                return
            delta = text[len(job.sent) :]
            if delta:
                self._send(row, self._response(job, delta, final=False), final=False)
                job.sent = text

    def _text(self, job: Job) -> str:
        with self.tokenizer_lock:
            text = self.pipe.tokenizer.decode(job.tokens, skip_special_tokens=True)
        if job.stops:
            cut = min((text.find(s) for s in job.stops if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        return text

    def _response(self, job: Job, text: str, final: bool, reason: str = ""):
        pb = self.pb
        gen = None
        for row, j in self.jobs.items():
            if j is job:
                gen = self.batch.gens[row]
        steps = len(gen.step_lengths) if gen else 0
        drafted = steps * (self.batch.block - 1)
        accepted = sum(max(0, n - 1) for n in gen.step_lengths) if gen else 0
        outputs = {
            "text_output": np.array([text.encode()], dtype=np.object_),
            "finish_reason": np.array([reason.encode()], dtype=np.object_),
            "arrival_time_ns": np.array([job.arrival_ns], dtype=np.int64),
            "first_token_time_ns": np.array([job.first_token_ns], dtype=np.int64),
            "last_token_time_ns": np.array([job.last_token_ns], dtype=np.int64),
            "acceptance_rate": np.array([accepted / drafted if drafted else 0.0], dtype=np.float32),
            "total_accepted_draft_tokens": np.array([accepted], dtype=np.int32),
            "total_draft_tokens": np.array([drafted], dtype=np.int32),
            "tau": np.array([gen.tau if gen else 0.0], dtype=np.float32),
            "output_tokens": np.array([len(job.tokens)], dtype=np.int32),
        }
        return pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in outputs.items()])

    def _send(self, row: int, response, final: bool) -> bool:
        """Send; a client that went away frees its row."""
        job = self.jobs.get(row)
        flags = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
        try:
            job.sender.send(response, flags=flags)
            return True
        except Exception:
            self.m_cancelled.increment(1)
            self._free(row)
            return False

    def _finish(self, row: int) -> None:
        job = self.jobs.get(row)
        if job is None:
            return
        gen = self.batch.gens[row]
        reason = "stop" if job.stopped_by_text else gen.finish_reason
        text = self._text(job)
        if job.streaming:
            body = text[len(job.sent) :]
        else:
            body = (job.prompt + text) if job.include_prompt else text
        if self._send(row, self._response(job, body, final=True, reason=reason), final=True):
            self.m_done.increment(1)
            self._free(row)

    def _reply_error(self, job: Job, message: str) -> None:
        try:
            job.sender.send(
                self.pb.InferenceResponse(error=self.pb.TritonError(message)),
                flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
        except Exception:
            pass

    def _error(self, row: int, message: str) -> None:
        job = self.jobs.get(row)
        if job is not None:
            self._reply_error(job, message)
        self._free(row)

    def finalize(self) -> None:
        t0 = time.perf_counter()
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
        self.thread.join(timeout=5)
        self._log(f"decode thread stopped in {time.perf_counter() - t0:.1f} s (alive: {self.thread.is_alive()})")
        for job in self.queue + list(self.jobs.values()):
            self._reply_error(job, "the server is shutting down")
        if self.step_log:
            self.step_log.close()


def _load(p: dict[str, str]):
    """The pair as a Pipeline: HF directories on torch (default: the embedded pair), or an engine directory on
    onnxruntime (CPU) / tensorrt (GPU)."""
    backend = p.get("backend") or "torch"
    if p.get("engine_dir"):
        from dflash_trt.parallel.comm import init_distributed
        from dflash_trt.pipeline import load_engine_pipeline

        return load_engine_pipeline(Path(p["engine_dir"]), backend, True, init_distributed())
    from dflash_trt.pipeline import load_pipeline

    drafter = p.get("drafter_dir") or None
    return load_pipeline(
        Path(p["target_dir"]) if p.get("target_dir") else None,
        Path(drafter) if drafter else None,
        use_drafter=p.get("use_drafter", "true") != "false",
        dtype=p.get("dtype") or "fp32",
    )
