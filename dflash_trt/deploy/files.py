"""Atomic outputs: everything is written into a temporary sibling, then renamed into place; a failure leaves
nothing behind."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from dflash_trt.atomic import atomic_directory, write_text_atomically
from dflash_trt.errors import UserError


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise UserError(f"--output {path}: already exists; remove it or pass --overwrite")
    if not path.parent.is_dir():
        raise UserError(f"--output {path}: the parent directory {path.parent} does not exist; create it first")


@contextlib.contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; on success it replaces `path` (`dflash_trt.atomic`)."""
    path = Path(path)
    _check_target(path, overwrite)
    with atomic_directory(path) as tmp:
        yield tmp


def atomic_write(path: Path, text: str, overwrite: bool = False) -> None:
    path = Path(path)
    _check_target(path, overwrite)
    write_text_atomically(path, text)
