"""`dflash-trt triton-serve REPO` as a user runs it: a real process that starts tritonserver on 127.0.0.1, reports
readiness, serves, and on SIGTERM stops the server and its Python stubs (no process of its group is left). The model
of a repository written without --block-size chooses its block (or plain decoding) when it starts, from the
drafter's acceptance.json and this machine's step costs, and says so in the server's log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from dflash_trt.cli import main
from dflash_trt.deploy.client import http_generate
from dflash_trt.deploy.server import free_port, group_alive
from tiny import hf_config, save_hf_target, save_tiny_tokenizer, save_zlab_drafter

PROMPT = "w5 w17 w3 w42"

pytestmark = pytest.mark.slow


def test_triton_serve_starts_serves_and_stops_without_orphans(tmp_path, capsys):
    target = save_hf_target(tmp_path / "target", "qwen3")
    save_tiny_tokenizer(target)
    drafter = save_zlab_drafter(tmp_path / "drafter", hf_config("qwen3"), block_size=4, layer_ids=(0, 2))
    (drafter / "acceptance.json").write_text(json.dumps({"position_acceptance": [0.9, 0.8, 0.7]}))
    assert (
        main(
            [
                "generate",
                "--target",
                str(target),
                "--no-drafter",
                "--prompt",
                PROMPT,
                "--max-new-tokens",
                "16",
                "--json",
            ]
        )
        == 0
    )
    expected = json.loads(capsys.readouterr().out)["results"][0]["text"]
    repo = tmp_path / "repo"
    assert (
        main(
            [
                "deploy",
                "triton",
                "--kind",
                "python",
                "--target",
                str(target),
                "--drafter",
                str(drafter),
                "--output",
                str(repo),
                "--max-batch",
                "2",
                "--max-seq-len",
                "256",
                "--max-tokens-limit",
                "64",
            ]
        )
        == 0
    )
    ports = [free_port() for _ in range(3)]
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dflash_trt.cli",
            "triton-serve",
            str(repo),
            "--http-port",
            str(ports[0]),
            "--grpc-port",
            str(ports[1]),
            "--metrics-port",
            str(ports[2]),
            "--log",
            str(log),
        ],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "DFLASH_TRT_CACHE": str(tmp_path / "cache")},
    )
    try:
        ready = proc.stderr.readline()  # the launcher prints one line once the server is ready
        assert "tritonserver ready" in ready and f"127.0.0.1:{ports[0]}" in ready, ready + proc.stderr.read()
        server_pids = [
            int(line.split()[0])
            for line in subprocess.run(
                ["ps", "-o", "pid=,pgid=,comm=", "-e"], capture_output=True, text=True
            ).stdout.splitlines()
            if "tritonserver" in line
        ]
        assert server_pids
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/models/dflash/ready", timeout=10) as r:
            assert r.status == 200
        reply = http_generate(
            f"127.0.0.1:{ports[0]}", "dflash", {"text_input": PROMPT, "sampling_param_max_tokens": 16}
        )
        assert reply.error is None and reply.text == expected  # greedy: the same text whatever was chosen
        log_text = log.read_text()
        assert f"127.0.0.1:{ports[0]}" in log_text and "0.0.0.0" not in log_text  # loopback only
        chosen = [line for line in log_text.splitlines() if "from the drafter's acceptance" in line]
        assert len(chosen) == 1 and "(torch fp32, batch 2)" in chosen[0], log_text[-2000:]
        assert "chose DFlash B=" in chosen[0] or "chose autoregressive decoding" in chosen[0]
        assert (tmp_path / "cache" / "calibration.json").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        assert "tritonserver stopped" in proc.stderr.read()
        deadline = time.monotonic() + 10
        while any(group_alive(pid) for pid in server_pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(group_alive(pid) for pid in server_pids), "server processes left behind"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_missing_repository_is_one_line_exit_2(capsys, tmp_path):
    assert main(["triton-serve", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deploy triton" in err
