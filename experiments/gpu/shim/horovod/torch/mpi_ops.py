"""Horovod's collectives for a job of one rank: each returns what a one-rank Horovod job returns (the tensor
itself, averaged or summed over one rank; gathered from one rank). Handles are the finished results."""

from __future__ import annotations

import os
from typing import Any, List

import torch

Average, Sum, Adasum, Min, Max, Product = 0, 1, 2, 3, 4, 5
_initialized = False


def init(*args, **kwargs) -> None:
    """Refuses a job of several ranks: horovodrun's environment saying so means the real Horovod is needed."""
    global _initialized
    for name in ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if int(os.environ.get(name, "1")) != 1:
            raise RuntimeError(f"the single-process Horovod shim cannot join a job of {os.environ[name]} ranks")
    _initialized = True


def shutdown() -> None:
    global _initialized
    _initialized = False


def is_initialized() -> bool:
    return _initialized


def _started() -> None:
    if not _initialized:
        raise ValueError("Horovod has not been initialized; use hvd.init().")


def rank() -> int:
    _started()
    return 0


def size() -> int:
    _started()
    return 1


local_rank = cross_rank = rank
local_size = cross_size = size


def mpi_built() -> bool:
    return False


def gloo_built() -> bool:
    return False


def nccl_built() -> int:
    return 0


def ddl_built() -> bool:
    return False


def ccl_built() -> bool:
    return False


def cuda_built() -> bool:
    return False


def rocm_built() -> bool:
    return False


def mpi_enabled() -> bool:
    return False


def gloo_enabled() -> bool:
    return False


def _reduced(tensor: torch.Tensor, op: int, prescale_factor: float, postscale_factor: float) -> torch.Tensor:
    if op not in (Average, Sum, Adasum, Min, Max, Product):
        raise ValueError(f"unknown reduction op {op}")
    factor = prescale_factor * postscale_factor
    return tensor * factor if factor != 1.0 else tensor


def allreduce(
    tensor, average=None, name=None, compression=None, op=None, prescale_factor=1.0, postscale_factor=1.0, **kw
):
    """A new tensor holding the one rank's value (compressed and decompressed, as Horovod does)."""
    _started()
    if compression is not None:
        payload, ctx = compression.compress(tensor)
        return compression.decompress(_reduced(payload.clone(), op or Average, prescale_factor, postscale_factor), ctx)
    return _reduced(tensor.clone(), op or Average, prescale_factor, postscale_factor)


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0, **kw):
    _started()
    return tensor.copy_(_reduced(tensor, op or Average, prescale_factor, postscale_factor))


def allreduce_async(tensor, *args, **kwargs):
    return allreduce(tensor, *args, **kwargs)


def allreduce_async_(tensor, *args, **kwargs):
    return allreduce_(tensor, *args, **kwargs)


def allgather(tensor, name=None, **kw):
    _started()
    return tensor.clone()


def allgather_async(tensor, name=None, **kw):
    return allgather(tensor)


def broadcast(tensor, root_rank, name=None, **kw):
    _started()
    if root_rank != 0:
        raise ValueError(f"root_rank {root_rank} is not a rank of a one-rank job")
    return tensor.clone()


def broadcast_(tensor, root_rank, name=None, **kw):
    broadcast(tensor, root_rank)
    return tensor


def broadcast_object(obj: Any, root_rank: int = 0, name=None, **kw) -> Any:
    _started()
    if root_rank != 0:
        raise ValueError(f"root_rank {root_rank} is not a rank of a one-rank job")
    return obj


def allgather_object(obj: Any, name=None, **kw) -> List[Any]:
    _started()
    return [obj]


def synchronize(handle):
    """A handle here is the finished result."""
    return handle


def poll(handle) -> bool:
    return True


def barrier(**kw) -> None:
    _started()


def join(device: int = -1) -> int:
    """The last rank to join: the only one."""
    _started()
    return 0
