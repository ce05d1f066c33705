"""The streaming rank writer produces files the safetensors library reads back exactly; bad files are caught."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dflash_trt.checkpoint.safetensors_io import RankTensor, RankWriter, read_header, sha256_file
from dflash_trt.errors import UserError


def test_rank_writer_roundtrip_through_safetensors(tmp_path):
    tensors = {
        "a.weight": torch.randn(7, 5).to(torch.bfloat16),
        "b.weight": torch.randn(3, 4).to(torch.bfloat16)[:, 1:3],  # non-contiguous view
        "c.bias": torch.randn(9).to(torch.bfloat16),
    }
    specs = [RankTensor(k, tuple(v.shape), "BF16") for k, v in tensors.items()]
    writer = RankWriter(tmp_path / "rank0.safetensors", specs)
    for name, t in tensors.items():
        writer.write(name, t)
    digest = writer.close()
    assert digest == sha256_file(tmp_path / "rank0.safetensors")
    with safe_open(tmp_path / "rank0.safetensors", "pt") as f:
        assert list(f.keys()) == sorted(tensors)
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t)
    (n,) = struct.unpack("<Q", (tmp_path / "rank0.safetensors").read_bytes()[:8])
    assert n % 8 == 0
    assert {k: (v.dtype, v.shape) for k, v in read_header(tmp_path / "rank0.safetensors").items()} == {
        s.name: (s.dtype, s.shape) for s in specs
    }


def test_rank_writer_refuses_anything_off_plan(tmp_path):
    writer = RankWriter(tmp_path / "r.safetensors", [RankTensor("x", (2, 2), "F32"), RankTensor("y", (2,), "F32")])
    with pytest.raises(RuntimeError, match="plan"):
        writer.write("x", torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="plan"):
        writer.write("x", torch.zeros(2, 2, dtype=torch.float16))
    writer.write("x", torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="1 planned tensors were not written"):
        writer.close()


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(4, 4), "b": torch.randn(4)}, path)
    return path


def header_len(path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_truncated_data_is_detected(good):
    good.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(UserError, match=r"m\.safetensors: truncated: tensor '\w' needs"):
        read_header(good)


def test_truncated_header_is_detected(good):
    good.write_bytes(good.read_bytes()[: 8 + header_len(good) // 2])
    with pytest.raises(UserError, match=r"m\.safetensors: truncated: header claims"):
        read_header(good)
    good.write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match="not even a header length"):
        read_header(good)


def test_bad_json_header_is_detected(good):
    data = bytearray(good.read_bytes())
    data[8] = ord("#")
    good.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"m\.safetensors: header is not valid JSON"):
        read_header(good)


def test_header_entry_disagreeing_with_its_bytes_is_detected(good):
    raw = good.read_bytes()
    n = header_len(good)
    header = json.loads(raw[8 : 8 + n])
    header["w"]["shape"] = [4, 5]
    body = json.dumps(header).encode()
    good.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    with pytest.raises(UserError, match=r"tensor 'w' byte range .* does not match F32 \[4, 5\]"):
        read_header(good)
