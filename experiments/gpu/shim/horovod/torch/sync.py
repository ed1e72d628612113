"""broadcast_parameters / broadcast_optimizer_state: with one rank, rank 0's state is already everyone's."""

from __future__ import annotations

from .mpi_ops import broadcast_object


def broadcast_parameters(params, root_rank: int) -> None:
    broadcast_object(None, root_rank)


def broadcast_optimizer_state(optimizer, root_rank: int, **kwargs) -> None:
    broadcast_object(None, root_rank)
