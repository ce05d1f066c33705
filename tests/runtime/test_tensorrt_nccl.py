"""The TensorRT backend's NCCL communicator setup at tp > 1 (`runtime.tensorrt.init_communicator`), on this CPU: the
unique id (or rank 0's error) goes through the MPI broadcast, a wrong rank count is refused before anything loads,
and the host build of the plugin library refuses with its one-line reason on every rank. The GPU path (ranks joining
a real communicator) is written, not executed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dflash_trt.errors import UserError
from dflash_trt.runtime.tensorrt import init_communicator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def host_lib() -> Path:
    """The host build of libdflash_trt_plugins.so (tests/plugins/conftest.py builds or reuses it)."""
    spec = importlib.util.spec_from_file_location("plugins_conftest", ROOT / "tests" / "plugins" / "conftest.py")
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module.cmake_build("host").plugin_library


class FakeComm:
    """MPI.COMM_WORLD's size and bcast: records what a rank sends; a non-root rank receives `from_root`."""

    def __init__(self, size: int, from_root=None) -> None:
        self.size, self.from_root, self.sent = size, from_root, []

    def Get_size(self) -> int:
        return self.size

    def bcast(self, obj, root: int = 0):
        assert root == 0
        self.sent.append(obj)
        return obj if self.from_root is None else self.from_root


def test_rank_count_must_match_the_engines(tmp_path):
    comm = FakeComm(3)
    with pytest.raises(UserError, match=r"built for tp 2, but 3 ranks run: mpirun -n 2"):
        init_communicator(tmp_path / "absent.so", 0, 2, comm)
    assert comm.sent == []


def test_rank0_broadcasts_its_error_and_every_rank_raises_it(host_lib):
    comm = FakeComm(2)
    with pytest.raises(UserError, match="rank 0 of 2: .*need the CUDA build") as err:
        init_communicator(host_lib, 0, 2, comm)
    ((error, unique_id),) = comm.sent
    assert b"need the CUDA build" in error and unique_id == bytes(128)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="rank 1 of 2: .*need the CUDA build"):  # rank 1 gets the same error
        init_communicator(host_lib, 1, 2, FakeComm(2, from_root=comm.sent[0]))


def test_every_rank_joins_with_rank0s_id(host_lib):
    """Rank 1 sends nothing of its own and calls dflash_trt_nccl_init with the id it received (the host build then
    refuses: no NCCL there)."""
    comm = FakeComm(2, from_root=(None, b"\x07" * 128))
    with pytest.raises(UserError, match="rank 1 of 2: .*need the CUDA build"):
        init_communicator(host_lib, 1, 2, comm)
    ((error, _),) = comm.sent
    assert error is None
