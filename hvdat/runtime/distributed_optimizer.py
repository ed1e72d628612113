"""Horovod's DistributedOptimizer, extended to move packed compressed gradients through `hvd.allgather`.

Horovod's torch allreduce takes no uint8, so packed payloads (sign, ef-sign, natural) are allgathered and every rank
decodes and aggregates the same bytes the same way, which keeps the parameters bit-identical. Payloads are encoded
and decoded on the gradient's device: a CUDA gradient's uint8 payload goes through allgather on NCCL and its
aggregate is decoded on the GPU, with no host copy and no synchronisation in the hook. Everything else is
Horovod 0.28.1's own `_DistributedOptimizer`: its per-parameter gradient-accumulator hooks start each exchange as
soon as backward produces that gradient (the hook compresses, then enqueues the allgather), and its
`synchronize()` decodes the results in order, so decoding one gradient overlaps the transfers still in flight.

Compressors that declare `sends_updates` (ef-sign) are fed each worker's own SGD update instead of its gradient:
the hook folds weight decay and momentum into a worker-local buffer and sends lr·buffer (Karimireddy et al. 2019,
Algorithm 1; Zheng et al. 2019), and `step()` applies the decoded aggregate as is. Error feedback then corrects
the update actually applied, and momentum never re-amplifies stale residuals. This needs plain SGD
(`torch.optim.SGD`); its hyperparameters are read from the param groups at every step, so LR schedules work.

With one worker Horovod registers no hooks; we still run every gradient through compress and decompress at
`synchronize()`, so `--np 1` trains with the same update rule as a cluster.
"""

from __future__ import annotations

import torch
from horovod.torch.mpi_ops import allgather_async, size
from horovod.torch.optimizer import _DistributedOptimizer

from ..compression.local_update import local_sgd_update
from ..compression.packing import with_destination


class _PackedExchange:
    """The methods that replace Horovod's allreduce with compress -> allgather -> decompress."""

    def __init__(self, params, named_parameters, compression):
        _DistributedOptimizer.__init__(self, params, named_parameters, compression)
        self.bytes_sent_per_step = 0  # payload bytes this worker handed to Horovod in the last step
        self._sends_updates = getattr(compression, "sends_updates", False)
        # by index: optimizer.load_state_dict (a resume, a collapse-guard rollback, an elastic restore) replaces the
        # param-group dicts, and the update must read the LR the schedule sets on the current ones
        self._group_index = {p: i for i, group in enumerate(self.param_groups) for p in group["params"]}
        self._bytes_this_step = 0
        if size() == 1:  # no hooks: let synchronize() treat every parameter as missing and exchange it there
            self._requires_update = {p for group in self.param_groups for p in group["params"] if p.requires_grad}

    def _allreduce_grad_async(self, p):
        if p.grad is None:  # as Horovod does: another rank may have a gradient for it
            p.grad = p.data.new(p.size()).zero_()
        name = self._parameter_names.get(p)
        tensor = (
            local_sgd_update(p, self.param_groups[self._group_index[p]], self._compression.momentum, name)
            if self._sends_updates
            else p.grad
        )
        payload, ctx = self._compression.compress(tensor, name=name)
        self._bytes_this_step += payload.numel() * payload.element_size()
        # the aggregate is decoded into p.grad's own memory (already faulted in by backward, and read by nothing
        # once encoded), not into a fresh gradient-sized allocation
        ctx = with_destination(ctx, p.grad)
        return allgather_async(payload, name=f"hvdat.packed.{name}", process_set=self.process_set), ctx

    def synchronize(self):
        # Parameters whose hook did not fire (every one with --np 1) are exchanged here, in a fixed order: Horovod
        # iterates a set, and a stateful codec (natural's RNG) would then draw in an order that varies per process.
        if self.process_set.included():
            started = set(self._handles)
            for p in sorted(self._requires_update - started, key=lambda q: self._parameter_names.get(q) or ""):
                self._handles[p] = self._allreduce_grad_async(p)
        _DistributedOptimizer.synchronize(self)
        self.bytes_sent_per_step, self._bytes_this_step = self._bytes_this_step, 0

    def step(self, closure=None):
        if not self._sends_updates:
            return _DistributedOptimizer.step(self, closure)
        loss = closure() if closure is not None else None
        if self._should_synchronize:
            self.synchronize()
        self._synchronized = False
        with torch.no_grad():  # p.grad now holds the mean of the workers' compressed updates
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.sub_(p.grad)
        return loss


def DistributedOptimizer(optimizer: torch.optim.Optimizer, named_parameters, compression):
    """Like `horovod.torch.DistributedOptimizer(optimizer, named_parameters, compression)`.

    `compression` is a `hvdat.runtime.horovod_compression.Compression` member, as a class or an instance (a class
    is instantiated once here, so stateful compressors get their own state). Allreduce compressors (none, fp16) go
    to Horovod's own optimizer unchanged; packed ones (`packed = True`) to the allgather exchange above, which also
    counts the payload bytes of every step in `bytes_sent_per_step`.
    """
    import horovod.torch as hvd

    if isinstance(compression, type) and getattr(compression, "packed", False):
        compression = compression()
    if getattr(compression, "sends_updates", False) and not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(
            f"{type(compression).__name__} sends each worker's SGD update and needs torch.optim.SGD, "
            f"not {type(optimizer).__name__}; use --optimizer sgd"
        )
    if not getattr(compression, "packed", False):
        return hvd.DistributedOptimizer(optimizer, named_parameters=named_parameters, compression=compression)
    body = dict(_DistributedOptimizer.__dict__)
    body.update(
        {
            k: v
            for k, v in _PackedExchange.__dict__.items()
            if k in ("__init__", "_allreduce_grad_async", "synchronize", "step")
        }
    )
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,), body)
    return cls(optimizer.param_groups, named_parameters, compression)
