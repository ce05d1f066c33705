"""Start and stop the real Triton server shipped in the `nvidia-pytriton` wheel (tritonserver 2.51, CPU).

The wheel holds `pytriton/tritonserver/bin/tritonserver`, the Python backend (`backends/python`) and one Python stub
per interpreter version (`python_backend_stubs/3.x`); its shared libraries are in `nvidia_pytriton.libs`. A server
gets a private backend directory whose python backend uses the stub of this interpreter, `LD_LIBRARY_PATH` with the
wheel's libraries and libpython, `PYTHONPATH` with numpy < 2 first (the stub's BYTES tensors need it) and
`DFLASH_TRT_SITE` naming this interpreter's site-packages for the model. It binds 127.0.0.1 unless told otherwise,
runs in its own process group and is stopped by SIGTERM to that group, SIGKILL after a bounded wait.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

from dflash_trt.errors import UserError

STUB_NUMPY_DIR = "triton-stub-site"  # under sys.prefix: numpy 1.26 for the stub (scripts/setup.sh installs it)


def pytriton_dirs() -> tuple[Path, Path]:
    """(tritonserver dir, libs dir) of the installed nvidia-pytriton wheel."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError("nvidia-pytriton is not installed: run scripts/setup.sh (it installs nvidia-pytriton==0.7.0)")
    root = Path(list(spec.submodule_search_locations)[0])
    server, libs = root / "tritonserver", root.parent / "nvidia_pytriton.libs"
    if not (server / "bin" / "tritonserver").is_file():
        raise UserError(f"{server}/bin/tritonserver: missing; reinstall nvidia-pytriton==0.7.0")
    return server, libs


def stub_numpy_dir() -> Path:
    path = Path(sys.prefix) / STUB_NUMPY_DIR
    if not (path / "numpy").is_dir():
        raise UserError(
            f"{path}: no numpy for the Triton stub; run scripts/setup.sh (or `pip install --target "
            f"{path} numpy==1.26.4`)"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies (Linux), so a killed launcher
    or test run leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group `pgid`, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            pids.append(int(entry))
    return pids


def group_alive(pgid: int) -> bool:
    """True while any live process of the process group `pgid` exists."""
    return bool(group_members(pgid))


class TritonServer:
    """One tritonserver process serving `repository`. Use as a context manager, or start() / stop()."""

    def __init__(
        self,
        repository: Path,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        log_path: Path | None = None,
        exit_timeout_s: int = 30,
    ) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise UserError(f"{repository}: model repository not found; create one with `dflash-trt deploy triton`")
        self.host = host
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_path = Path(log_path) if log_path else None
        self.exit_timeout_s = exit_timeout_s
        self.process: subprocess.Popen | None = None
        self._tmp: Path | None = None
        self._log = None

    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"{self.client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.metrics_port}/metrics"

    def command(self, backends: Path, server: Path) -> list[str]:
        return [
            str(server / "bin" / "tritonserver"),
            "--model-repository",
            str(self.repository),
            "--backend-directory",
            str(backends),
            "--http-address",
            self.host,
            "--http-port",
            str(self.http_port),
            "--grpc-address",
            self.host,
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-address",
            self.host,
            "--metrics-port",
            str(self.metrics_port),
            "--allow-sagemaker",
            "false",
            "--allow-vertex-ai",
            "false",
            "--exit-timeout-secs",
            str(self.exit_timeout_s),
            "--log-verbose",
            "0",
        ]

    def _backends(self, server: Path) -> Path:
        """A private backend directory: the wheel's python backend plus the stub of this interpreter."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise UserError(f"{stub}: nvidia-pytriton has no Python backend stub for Python {version}")
        self._tmp = Path(tempfile.mkdtemp(prefix="dflash-triton-"))
        python = self._tmp / "backends" / "python"
        python.mkdir(parents=True)
        for item in (server / "backends" / "python").iterdir():
            if item.name != "__pycache__":
                (python / item.name).symlink_to(item)
        shutil.copy2(stub, python / stub.name)
        return self._tmp / "backends"

    def environment(self, libs: Path) -> dict[str, str]:
        from dflash_trt.deploy.triton_repo import python_site

        env = dict(os.environ)
        libpython = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), libpython, env.get("LD_LIBRARY_PATH", "")) if p)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(stub_numpy_dir()), env.get("PYTHONPATH", "")) if p)
        env["DFLASH_TRT_SITE"] = python_site()
        env["DFLASH_TRT_STUB_NUMPY"] = str(stub_numpy_dir())
        env.setdefault("OMP_NUM_THREADS", "2")
        return env

    def start(self, timeout_s: float = 300) -> TritonServer:
        server, libs = pytriton_dirs()
        env = self.environment(libs)
        backends = self._backends(server)
        log = self.log_path or (self._tmp / "tritonserver.log")
        self.log_path = log
        self._log = open(log, "ab")
        self.process = subprocess.Popen(
            self.command(backends, server),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            tail = self.log_tail()
            self.stop()
            raise UserError(
                f"tritonserver did not become ready within {timeout_s:.0f} s (log {log}):\n{tail}"
            ) from None
        return self

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode}")
            if self.ready():
                return
            time.sleep(0.5)
        raise TimeoutError("tritonserver not ready")

    def stop(self, timeout_s: float = 45) -> int | None:
        """SIGTERM to the server's process group (it finishes in-flight work within --exit-timeout-secs), SIGKILL
        to the group after `timeout_s`; returns the exit code."""
        proc = self.process
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            if group_alive(proc.pid):  # stubs left in the group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while group_alive(proc.pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
        if self._log:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp / "backends", ignore_errors=True)
        return proc.returncode if proc else None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
