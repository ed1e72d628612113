"""Run under `horovodrun -np 2`: ef-sign's residuals inside a real `hvd.elastic.TorchState` (hvdat.rank_state).

Prints one `@@result` JSON line per rank: whether restore rolled the residuals back to the last save, whether
sync kept each rank's own (not rank 0's), and what a worker that joined with no residuals took.
"""

from __future__ import annotations

import json

import horovod.torch as hvd
import torch

from hvdat.runtime import rank_state
from hvdat.runtime.horovod_compression import build_compressor


def same(a, b) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    hvd.init()
    rank = hvd.rank()

    def grad(k):
        return torch.linspace(-1.0, 1.0, 40).reshape(4, 10) * (rank + 1) + k * torch.arange(40.0).reshape(4, 10)

    compressor = build_compressor("ef-sign", 1)
    rank_state.register(compressor)
    state = hvd.elastic.TorchState(model=torch.nn.Linear(2, 2), compression=compressor, epoch=0)
    compressor.compress(grad(0), "w")
    state.save()  # what a commit does
    saved = compressor.state_dict()
    compressor.compress(grad(1), "w")
    moved = not same(compressor.state_dict(), saved)
    state.restore()  # what a worker failure does
    restored = same(compressor.state_dict(), saved)
    state.sync()  # what re-forming the ring does
    own = same(compressor.state_dict(), saved)
    peers = hvd.allgather_object(saved["w"], name="peers")
    # rank 1 "joins" with no residuals: both ranks take the residuals of the ranks that have them (rank 0's)
    joined = build_compressor("ef-sign", 2)
    if rank == 0:
        joined.compress(grad(0), "w")
    state2 = hvd.elastic.TorchState(model=torch.nn.Linear(2, 2), compression=joined, epoch=0)
    state2.sync()
    joined_rank0 = hvd.broadcast_object(joined.state_dict()["w"] if rank == 0 else None, name="joined")
    print(
        "@@result "
        + json.dumps(
            {
                "rank": rank,
                "moved": moved,
                "restored": restored,
                "kept_own": own,
                "ranks_differ": not torch.equal(peers[0], peers[1]),
                "joined_takes_rank0": torch.equal(joined.state_dict()["w"], joined_rank0),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
