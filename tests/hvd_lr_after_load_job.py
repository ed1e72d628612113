"""Run under `horovodrun -np 2`: does ef-sign's update follow the LR set after `optimizer.load_state_dict` (what a
resume, a collapse-guard rollback and an elastic restore do)? Two identical runs of two steps at different LRs, one
loading the optimizer's state between them; prints one `@@result` JSON line per rank: whether they end equal."""

from __future__ import annotations

import json

import horovod.torch as hvd
import torch

from hvdat.runtime.distributed_optimizer import DistributedOptimizer
from hvdat.runtime.horovod_compression import build_compressor


def step(model, optimizer, lr: float) -> None:
    for group in optimizer.param_groups:  # as the trainer sets the schedule's LR
        group["lr"] = lr
    loss = model(torch.randn(8, 4, generator=torch.Generator().manual_seed(hvd.rank()))).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def main() -> None:
    hvd.init()
    runs = []
    for reload in (False, True):  # the same two steps, with and without loading the optimizer's state in between
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        sgd = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        optimizer = DistributedOptimizer(sgd, model.named_parameters(), build_compressor("ef-sign", hvd.rank()))
        step(model, optimizer, 0.5)
        if reload:
            optimizer.load_state_dict(optimizer.state_dict())  # replaces the param-group dicts
        step(model, optimizer, 0.01)
        runs.append([p.detach().clone() for p in model.parameters()])
    same = all(torch.equal(a, b) for a, b in zip(*runs))
    print("@@result " + json.dumps({"rank": hvd.rank(), "same_after_load": same}), flush=True)


if __name__ == "__main__":
    main()
