"""The real Triton server (nvidia-pytriton's tritonserver 2.51, CPU, loopback only) serving the embedded DFlash pair
from the `deploy triton --kind python` repository: served greedy text equals `dflash-trt generate` over GRPC and the
HTTP generate extension; concurrent streams batch in flight; bad requests get errors while others keep running; a
client that goes away frees its row. One server for the module; every wait is bounded."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from dflash_trt.cli import main
from dflash_trt.deploy.client import grpc_generate, grpc_inputs, http_generate, metrics
from dflash_trt.deploy.server import group_alive

pytestmark = pytest.mark.slow

MODEL = "dflash"
PROMPTS = [  # (prompt, max_tokens): different lengths
    ("The capital of France is", 12),
    ("def reverse(s):", 24),
    ("Once upon a time", 8),
    ("List three colors:", 20),
    ("Water boils at", 16),
    ("The best way to learn Python is", 28),
    ("1, 2, 3, 4,", 10),
    ("Hello! My name is", 18),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from dflash_trt.deploy.server import TritonServer

    root = tmp_path_factory.mktemp("triton")
    repo = root / "repo"
    assert (
        main(
            [
                "deploy",
                "triton",
                "--kind",
                "python",
                "--output",
                str(repo),
                "--max-batch",
                "8",
                "--max-seq-len",
                "384",
                "--max-tokens-limit",
                "64",
                "--block-size",
                "8",  # as the reference below; the block a repository without it chooses: test_triton_serve_cli
            ]
        )
        == 0
    )
    srv = TritonServer(repo, log_path=root / "tritonserver.log", exit_timeout_s=10)
    srv.start(timeout_s=300)
    yield srv
    code = srv.stop()
    assert srv.process.poll() is not None and code is not None, "tritonserver still running after stop()"
    assert not group_alive(srv.process.pid), "a process of the server's group (a Python stub) outlived stop()"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, server):
    """`dflash-trt generate` of every prompt, one at a time (the reference the served text must equal)."""
    prompts = tmp_path_factory.mktemp("ref") / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "max_new_tokens": n}) + "\n" for p, n in PROMPTS))
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert (
            main(
                [
                    "generate",
                    "--prompts-file",
                    str(prompts),
                    "--json",
                    "--batch-size",
                    "1",
                    "--block-size",
                    "8",
                    "--backend",
                    "torch",
                ]
            )
            == 0
        )
    return {p: r["text"] for (p, _), r in zip(PROMPTS, json.loads(out.getvalue())["results"])}


def _wait_metric(srv, name: str, predicate, timeout_s: float = 60) -> float:
    deadline = time.monotonic() + timeout_s
    value = metrics(srv.metrics_url).get(name, 0.0)
    while not predicate(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = metrics(srv.metrics_url).get(name, 0.0)
    return value


def test_greedy_over_grpc_and_generate_extension_equals_generate(server, reference):
    prompt, n = PROMPTS[0]
    expected = reference[prompt]
    streamed = grpc_generate(server.grpc_url, MODEL, grpc_inputs(prompt, n, streaming=True))
    whole = grpc_generate(server.grpc_url, MODEL, grpc_inputs(prompt, n, streaming=False))
    gen = http_generate(server.http_url, MODEL, {"text_input": prompt, "sampling_param_max_tokens": n})
    sse = http_generate(
        server.http_url, MODEL, {"text_input": prompt, "sampling_param_max_tokens": n, "streaming": True}, stream=True
    )
    for reply in (streamed, whole, gen, sse):
        assert reply.error is None and reply.text == expected
    assert len(streamed.times) > 1 and len(whole.times) == 1  # streamed in pieces vs one response
    out = whole.outputs
    assert out["finish_reason"][0] == b"length" and int(out["output_tokens"][0]) == n
    steps_drafted = int(out["total_draft_tokens"][0])
    assert steps_drafted > 0 and 0 <= int(out["total_accepted_draft_tokens"][0]) <= steps_drafted
    assert float(out["tau"][0]) >= 1.0
    assert gen.outputs["finish_reason"] == "length" and "acceptance_rate" in gen.outputs


def test_http_and_grpc_infer_through_the_non_streaming_companion(server, reference):
    """Triton 2.51's HTTP /infer refuses decoupled models; the repository's `dflash_infer` companion answers /infer
    (HTTP and GRPC) through the same in-flight batch."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    prompt, n = PROMPTS[1]
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL + "_infer")

    def inputs(module):
        text = module.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
        limit = module.InferInput("sampling_param_max_tokens", [1], "INT32")
        limit.set_data_from_numpy(np.array([n], dtype=np.int32))
        return [text, limit]

    with pytest.raises(InferenceServerException, match="decoupled"):
        client.infer(MODEL, inputs(httpclient))
    http = client.infer(MODEL + "_infer", inputs(httpclient), timeout=120)
    assert http.as_numpy("text_output")[0].decode() == reference[prompt]
    assert http.as_numpy("finish_reason")[0] == b"length" and float(http.as_numpy("tau")[0]) >= 1.0
    grpc = grpcclient.InferenceServerClient(server.grpc_url).infer(
        MODEL + "_infer", inputs(grpcclient), client_timeout=120
    )
    assert grpc.as_numpy("text_output")[0].decode() == reference[prompt]


def test_eight_concurrent_streams_batch_in_flight(server, reference):
    before = metrics(server.metrics_url).get("dflash_joined_running_batch_total", 0.0)
    replies: dict[int, object] = {}

    def run(i: int) -> None:
        prompt, n = PROMPTS[i]
        replies[i] = grpc_generate(server.grpc_url, MODEL, grpc_inputs(prompt, n), timeout_s=240)

    first = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in first:
        t.start()
    # the other four arrive while the first four decode
    _wait_metric(server, "dflash_active_rows", lambda v: v >= 1, timeout_s=60)
    second = [threading.Thread(target=run, args=(i,)) for i in range(4, 8)]
    for t in second:
        t.start()
    for t in first + second:
        t.join(timeout=300)
    assert sorted(replies) == list(range(8))
    for i, (prompt, _) in enumerate(PROMPTS):
        assert replies[i].error is None, replies[i].error
        assert replies[i].text == reference[prompt], prompt
    joined = metrics(server.metrics_url)["dflash_joined_running_batch_total"] - before
    assert joined >= 1  # requests joined a running batch at a step boundary


BAD = [  # (case, text, max_tokens, temperature, extra inputs, expected in the error)
    ("missing text_input", None, 8, None, {}, "text_input"),
    (
        "wrong dtype",
        "hi",
        None,
        None,
        {"sampling_param_max_tokens": (np.array([8.0], dtype=np.float32), "FP32")},
        "data-type",
    ),
    ("empty text", "   ", 8, None, {}, "empty"),
    ("longer than the context", "word " * 600, 8, None, {}, "max_len 384"),
    ("max_tokens 0", "hi", 0, None, {}, "sampling_param_max_tokens' is 0"),
    ("max_tokens negative", "hi", -3, None, {}, "sampling_param_max_tokens' is -3"),
    ("max_tokens above the limit", "hi", 65, None, {}, "1..64"),
    ("temperature < 0", "hi", 8, -0.5, {}, "sampling_param_temperature' is -0.5"),
]


def test_bad_requests_get_errors_while_others_keep_running(server, reference):
    prompt, n = PROMPTS[5]
    good: list = []
    running = threading.Thread(
        target=lambda: good.append(grpc_generate(server.grpc_url, MODEL, grpc_inputs(prompt, n), timeout_s=180))
    )
    running.start()
    for case, text, max_tokens, temperature, extra, message in BAD:
        bad = grpc_generate(
            server.grpc_url, MODEL, grpc_inputs(text, max_tokens, temperature=temperature, extra=extra), timeout_s=60
        )
        assert bad.error is not None and message in bad.error, (case, bad.error)
        assert "\n" not in bad.error.strip(), case
    running.join(timeout=200)
    assert good and good[0].error is None and good[0].text == reference[prompt]
    later, m = PROMPTS[2]  # and later requests still run
    assert grpc_generate(server.grpc_url, MODEL, grpc_inputs(later, m)).text == reference[later]


def test_disconnected_streams_free_their_rows(server, reference):
    before = metrics(server.metrics_url)
    cancelled = grpc_generate(server.grpc_url, MODEL, grpc_inputs("Tell me a long story about", 64), cancel_after=2)
    assert cancelled.error is None and len(cancelled.times) == 2
    gone = http_generate(
        server.http_url,
        MODEL,
        {"text_input": "Write a poem about the sea", "streaming": True, "sampling_param_max_tokens": 64},
        stream=True,
        close_after=2,
    )
    assert len(gone.times) == 2
    assert _wait_metric(server, "dflash_active_rows", lambda v: v == 0, timeout_s=120) == 0
    after = metrics(server.metrics_url)
    assert after["dflash_requests_cancelled_total"] > before.get("dflash_requests_cancelled_total", 0)
    # the server still answers, with every row free again
    prompt, n = PROMPTS[6]
    assert grpc_generate(server.grpc_url, MODEL, grpc_inputs(prompt, n)).text == reference[prompt]
