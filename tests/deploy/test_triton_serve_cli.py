"""`dflash-trt triton-serve REPO` as a user runs it: a real process that starts tritonserver on 127.0.0.1, reports
readiness, serves, and on SIGTERM stops the server and its Python stubs (no process of its group is left)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from dflash_trt.cli import main
from dflash_trt.deploy.server import free_port, group_alive

pytestmark = pytest.mark.slow


def test_triton_serve_starts_serves_and_stops_without_orphans(tmp_path):
    repo = tmp_path / "repo"
    assert (
        main(
            [
                "deploy",
                "triton",
                "--kind",
                "python",
                "--no-drafter",
                "--output",
                str(repo),
                "--max-batch",
                "2",
                "--max-seq-len",
                "256",
                "--max-tokens-limit",
                "8",
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
        log_text = log.read_text()
        assert f"127.0.0.1:{ports[0]}" in log_text and "0.0.0.0" not in log_text  # loopback only
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
