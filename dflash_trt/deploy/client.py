"""Small clients for a served DFlash model (tests, benchmarks): Triton's GRPC streaming client (tritonclient),
the HTTP generate extension, and the server's Prometheus metrics. Every wait is bounded."""

from __future__ import annotations

import json
import queue
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Reply:
    """One request's answer: the text (joined deltas when streamed), each response's arrival time, the last
    response's outputs, or the error."""

    text: str = ""
    times: list[float] = field(default_factory=list)  # perf_counter of each response
    start: float = 0.0
    outputs: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def ttft_s(self) -> float:
        return self.times[0] - self.start if self.times else 0.0

    @property
    def e2e_s(self) -> float:
        return self.times[-1] - self.start if self.times else 0.0


def grpc_inputs(text, max_tokens=None, streaming=True, temperature=None, seed=None, extra=None):
    import tritonclient.grpc as grpcclient

    def tensor(name, array, dtype):
        t = grpcclient.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    inputs = [] if text is None else [tensor("text_input", np.array([text.encode()], dtype=np.object_), "BYTES")]
    inputs.append(tensor("streaming", np.array([streaming], dtype=bool), "BOOL"))
    if max_tokens is not None:
        inputs.append(tensor("sampling_param_max_tokens", np.array([max_tokens], dtype=np.int32), "INT32"))
    if temperature is not None:
        inputs.append(tensor("sampling_param_temperature", np.array([temperature], dtype=np.float32), "FP32"))
    if seed is not None:
        inputs.append(tensor("sampling_param_seed", np.array([seed], dtype=np.uint64), "UINT64"))
    for name, (array, dtype) in (extra or {}).items():
        inputs.append(tensor(name, array, dtype))
    return inputs


def grpc_generate(url: str, model: str, inputs, timeout_s: float = 120, cancel_after: int | None = None) -> Reply:
    """Send one request on its own GRPC stream and collect its responses until the final one (or the timeout).
    `cancel_after`: close the stream (cancelling the request) after that many responses."""
    import tritonclient.grpc as grpcclient

    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    reply = Reply(start=time.perf_counter())
    client.start_stream(callback=lambda result, error: responses.put((time.perf_counter(), result, error)))
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                reply.error = f"timed out after {timeout_s} s"
                break
            try:
                t, result, error = responses.get(timeout=left)
            except queue.Empty:
                continue
            if error is not None:
                reply.error = str(error)
                break
            response = result.get_response()
            final = response.parameters.get("triton_final_response")
            text = result.as_numpy("text_output")
            if text is not None:
                reply.text += b"".join(text.reshape(-1)).decode()
                reply.times.append(t)
                reply.outputs = {o.name: result.as_numpy(o.name) for o in response.outputs}
            if final is not None and final.bool_param:
                break
            if cancel_after is not None and len(reply.times) >= cancel_after:
                client.stop_stream(cancel_requests=True)
                break
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    return reply


def http_generate(
    url: str, model: str, payload: dict, stream: bool = False, timeout_s: float = 120, close_after: int | None = None
) -> Reply:
    """POST /v2/models/<model>/generate (or generate_stream, server-sent events)."""
    endpoint = "generate_stream" if stream else "generate"
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/{endpoint}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    reply = Reply(start=time.perf_counter())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if not stream:
                body = json.loads(response.read())
                reply.times.append(time.perf_counter())
                reply.text, reply.outputs = body.get("text_output", ""), body
                return reply
            for line in response:
                line = line.decode().strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    reply.error = event["error"]
                    break
                reply.times.append(time.perf_counter())
                reply.text += event.get("text_output", "")
                reply.outputs = event
                if close_after is not None and len(reply.times) >= close_after:
                    break  # leaving the with-block closes the connection mid-stream
    except urllib.error.HTTPError as exc:
        reply.error = json.loads(exc.read() or b"{}").get("error", str(exc))
    return reply


def metrics(url: str) -> dict[str, float]:
    """The server's Prometheus metrics, summed over labels: {name: value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            name = name.split("{")[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                pass
    return out
