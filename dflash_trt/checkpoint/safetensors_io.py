"""Safetensors without surprises: header-only validation, lazy source reads, a streaming rank writer.

Format: 8-byte little-endian header length N, N bytes of JSON `{name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}`, then the raw little-endian tensor bytes, with
offsets relative to the end of the header.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import safe_open

from dflash_trt.checkpoint.sharding import Shape
from dflash_trt.config import read_json
from dflash_trt.dtypes import dtype_named
from dflash_trt.errors import UserError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}
FLOAT_CODES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class HeaderEntry:
    """A tensor as its file's header declares it."""

    dtype: str
    shape: Shape


def _bad(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}; re-download or re-convert this file")


def read_header(path: Path) -> dict[str, HeaderEntry]:
    """Parse and check a safetensors header without reading tensor data.

    Catches truncated files (header or data shorter than claimed), non-JSON headers and entries
    whose byte range disagrees with dtype x shape; each as a one-line `UserError` naming the file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _bad(path, f"truncated ({size} bytes, not even a header length)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise _bad(path, f"header length {n} is implausible (corrupt file)")
        if 8 + n > size:
            raise _bad(path, f"truncated: header claims {n} bytes but the file has {size} bytes in total")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    entries: dict[str, HeaderEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = info["dtype"], tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
            itemsize = ITEMSIZE[dtype]
        except (KeyError, TypeError, ValueError):
            raise _bad(path, f"tensor '{name}' has a malformed header entry {info!r}") from None
        if end - begin != prod(shape) * itemsize or begin < 0:
            raise _bad(path, f"tensor '{name}' byte range [{begin}, {end}) does not match {dtype} {list(shape)}")
        if 8 + n + end > size:
            raise _bad(path, f"truncated: tensor '{name}' needs {8 + n + end} bytes but the file has {size}")
        entries[name] = HeaderEntry(dtype, shape)
    return entries


class SourceCheckpoint:
    """A Hugging Face weights directory: `model.safetensors` or shards listed in `model.safetensors.index.json`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        index = self.directory / "model.safetensors.index.json"
        single = self.directory / "model.safetensors"
        if index.is_file():
            index_json = read_json(index)
            weight_map = index_json.get("weight_map") if isinstance(index_json, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise UserError(
                    f"{index}: field 'weight_map' is missing or empty; restore the index from the original checkpoint"
                )
            shard_of = {name: self.directory / str(file) for name, file in weight_map.items()}
            for shard in sorted(set(shard_of.values())):
                if not shard.is_file():
                    raise UserError(f"{index}: names shard '{shard.name}', which is missing from {self.directory}")
        elif single.is_file():
            shard_of = {}
        else:
            raise UserError(
                f"{self.directory}: no model.safetensors or model.safetensors.index.json; pass a HF checkpoint dir"
            )
        shards = sorted(set(shard_of.values())) or [single]
        self.headers = {shard: read_header(shard) for shard in shards}
        self.file_of: dict[str, Path] = {}
        for shard, header in self.headers.items():
            self.file_of.update({name: shard for name in header})
        for name, shard in shard_of.items():
            if name not in self.headers[shard]:
                raise UserError(f"{index}: maps '{name}' to {shard.name}, which does not contain it")

    def entry(self, name: str) -> HeaderEntry | None:
        """Header entry of tensor `name`, or None if the checkpoint lacks it."""
        shard = self.file_of.get(name)
        return None if shard is None else self.headers[shard][name]

    def load(self, name: str) -> torch.Tensor:
        """Tensor `name`, memory-mapped: its pages are read when touched and released with the tensor.

        The file handle is closed at once, so no mapping of the whole file stays resident.
        """
        with safe_open(self.file_of[name], framework="pt") as f:
            return f.get_tensor(name)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (copied only if it is not contiguous)."""
    return memoryview(tensor.contiguous().view(torch.uint8).numpy()).cast("B")


@dataclass(frozen=True)
class RankTensor:
    """A tensor as it must appear in a rank file."""

    name: str
    shape: Shape
    dtype: str  # safetensors code

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * ITEMSIZE[self.dtype]


def header_bytes(specs: list[RankTensor]) -> bytes:
    """Length prefix + JSON header for tensors stored back to back in `specs` order (padded to 8 bytes)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class RankWriter:
    """Writes one rank file tensor by tensor, in the planned order, hashing the bytes as they go.

    The header is computed from the plan up front, so no tensor is held back: peak memory is the
    tensor being written. Every write is checked against the plan (name, shape, dtype).
    """

    def __init__(self, path: Path, specs: list[RankTensor]) -> None:
        if sys.byteorder != "little":
            raise RuntimeError("safetensors output needs a little-endian host")
        self.path = path
        self.specs = specs
        self.next = 0
        self.sha256 = hashlib.sha256()
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by close/abort)
        self._put(header_bytes(specs))

    def _put(self, data: bytes | memoryview) -> None:
        self.file.write(data)
        self.sha256.update(data)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        spec = self.specs[self.next]
        got = (name, tuple(tensor.shape), tensor.dtype)
        want = (spec.name, spec.shape, dtype_named(spec.dtype).torch)
        if got != want:
            raise RuntimeError(f"{self.path}: wrote {got} where the plan has {want}")
        self._put(tensor_bytes(tensor))
        self.next += 1

    def close(self) -> str:
        """Flush and fsync the file; return its sha256 (hex). Fails if a planned tensor is missing."""
        if self.next != len(self.specs):
            raise RuntimeError(f"{self.path}: {len(self.specs) - self.next} planned tensors were not written")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.sha256.hexdigest()

    def abort(self) -> None:
        self.file.close()


def sha256_file(path: Path, chunk: int = 16 << 20) -> str:
    """sha256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
