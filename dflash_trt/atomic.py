"""Atomic outputs. A directory is written into `.<name>.dflash-partial-<pid>` beside it and renamed into place
only when complete. A failure, SIGINT, SIGTERM or SIGHUP removes the partial directory; a SIGKILL cannot be
caught and leaves it, and the next run writing the same output removes it (its pid is no longer alive)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL = "dflash-partial"
OLD = "dflash-old"
CAUGHT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A caught signal, raised in the main thread so the partial output is cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _signals_raise() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in CAUGHT_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Defer caught signals so a cleanup or the final rename is not cut in half."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, CAUGHT_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_stale(output: Path) -> list[Path]:
    """Delete temp directories that killed runs writing `output` left behind; return them."""
    removed = []
    for kind in (PARTIAL, OLD):
        for path in output.parent.glob(f".{output.name}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                _remove(path)
                removed.append(path)
    return removed


def _swap_into_place(tmp: Path, output: Path) -> None:
    if output.exists() or output.is_symlink():
        old = output.parent / f".{output.name}.{OLD}-{os.getpid()}"
        os.rename(output, old)
        os.rename(tmp, output)
        _remove(old)
    else:
        os.rename(tmp, output)
    fd = os.open(output.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(output: Path, log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Yield the partial directory of `output`; on success it replaces `output` (an existing one included)."""
    output = Path(os.path.abspath(output))
    for path in remove_stale(output):
        if log:
            log(f"removed stale partial output {path}")
    tmp = output.parent / f".{output.name}.{PARTIAL}-{os.getpid()}"
    with _signals_raise():
        try:
            tmp.mkdir()
            yield tmp
            with _signals_blocked():
                _swap_into_place(tmp, output)
        except BaseException:
            with _signals_blocked():
                shutil.rmtree(tmp, ignore_errors=True)
            raise


def write_text_atomically(path: Path, text: str) -> None:
    """Write one file through a temporary sibling renamed into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
