"""Horovod's DistributedOptimizer, extended to move packed compressed gradients through `hvd.allgather`.

Horovod's torch allreduce takes no uint8, so packed payloads (sign, ef-sign, natural) are allgathered and every rank
decodes and aggregates the same bytes the same way, which keeps the parameters bit-identical. Everything else is
Horovod 0.28.1's own `_DistributedOptimizer`: its per-parameter gradient-accumulator hooks start each exchange as
soon as backward produces that gradient (the hook compresses, then enqueues the allgather), and its
`synchronize()` decodes the results in order, so decoding one gradient overlaps the transfers still in flight.

With one worker Horovod registers no hooks; we still run every gradient through compress and decompress at
`synchronize()`, so `--np 1` trains with the same update rule as a cluster.
"""

from __future__ import annotations

import torch
from horovod.torch.mpi_ops import allgather_async, size
from horovod.torch.optimizer import _DistributedOptimizer


class _PackedExchange:
    """The methods that replace Horovod's allreduce with compress -> allgather -> decompress."""

    def __init__(self, params, named_parameters, compression):
        _DistributedOptimizer.__init__(self, params, named_parameters, compression)
        self.bytes_sent_per_step = 0  # payload bytes this worker handed to Horovod in the last step
        self._bytes_this_step = 0
        if size() == 1:  # no hooks: let synchronize() treat every parameter as missing and exchange it there
            self._requires_update = {p for group in self.param_groups for p in group["params"] if p.requires_grad}

    def _allreduce_grad_async(self, p):
        if p.grad is None:  # as Horovod does: another rank may have a gradient for it
            p.grad = p.data.new(p.size()).zero_()
        name = self._parameter_names.get(p)
        payload, ctx = self._compression.compress(p.grad, name=name)
        self._bytes_this_step += payload.numel() * payload.element_size()
        return allgather_async(payload, name=f"hvdat.packed.{name}", process_set=self.process_set), ctx

    def synchronize(self):
        _DistributedOptimizer.synchronize(self)
        self.bytes_sent_per_step, self._bytes_this_step = self._bytes_this_step, 0


def DistributedOptimizer(optimizer: torch.optim.Optimizer, named_parameters, compression):
    """Like `horovod.torch.DistributedOptimizer(optimizer, named_parameters, compression)`.

    `compression` is a `hvdat.compression.Compression` member, as a class or an instance (a class is instantiated
    once here, so stateful compressors get their own state). Allreduce compressors (none, fp16) go to Horovod's own
    optimizer unchanged; packed ones (`packed = True`) to the allgather exchange above, which also counts the
    payload bytes of every step in `bytes_sent_per_step`.
    """
    import horovod.torch as hvd

    if isinstance(compression, type) and getattr(compression, "packed", False):
        compression = compression()
    if not getattr(compression, "packed", False):
        return hvd.DistributedOptimizer(optimizer, named_parameters=named_parameters, compression=compression)
    body = dict(_DistributedOptimizer.__dict__)
    body.update({k: v for k, v in _PackedExchange.__dict__.items() if k in ("__init__", "_allreduce_grad_async",
                                                                            "synchronize")})
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,), body)
    return cls(optimizer.param_groups, named_parameters, compression)
