"""The Horovod start-up every worker shares: init, pin the device, set the torch threads, then the few collectives
the jobs use on plain Python values."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch


@dataclass
class World:
    """This worker's place in the job: Horovod's module, rank, world size and device."""

    hvd: Any
    rank: int
    size: int
    device: torch.device

    @classmethod
    def start(cls, threads: int = 0) -> World:
        """`hvd.init()`, one GPU per local rank (when there are GPUs), and `threads` torch threads (0: the cores
        divided among the workers on this host)."""
        import horovod.torch as hvd

        hvd.init()
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // hvd.local_size()))
        device = torch.device(f"cuda:{hvd.local_rank()}" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return cls(hvd, hvd.rank(), hvd.size(), device)

    def resized(self) -> World:
        """After an elastic job re-forms its ring: the new rank and size."""
        return World(self.hvd, self.hvd.rank(), self.hvd.size(), self.device)

    def barrier(self) -> None:
        if self.size > 1:
            self.hvd.barrier()

    def allreduce_sum(self, values: List[float]) -> List[float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        if self.size > 1:
            tensor = self.hvd.allreduce(tensor, op=self.hvd.Sum, name=f"metrics.{len(values)}")
        return tensor.tolist()

    def broadcast_object(self, value: Any, name: str) -> Any:
        """Rank 0's value on every rank (no shared filesystem needed)."""
        return self.hvd.broadcast_object(value, root_rank=0, name=name) if self.size > 1 else value

    def allgather_object(self, value: Any, name: str) -> List[Any]:
        return self.hvd.allgather_object(value, name=name) if self.size > 1 else [value]
