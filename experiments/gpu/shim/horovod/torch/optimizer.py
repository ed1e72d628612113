"""`horovod.torch.DistributedOptimizer` for one rank, with the attributes hvdat's packed-gradient optimizer builds
on (`_DistributedOptimizer`: `_handles`, `_requires_update`, `_parameter_names`, `process_set`, `synchronize`,
`skip_synchronize`). As in Horovod with one rank, no hooks are registered; `synchronize()` finishes whatever
exchanges a subclass started (here: the results themselves) and writes them into the gradients."""

from __future__ import annotations

import contextlib

import torch

from .mpi_ops import Average


class _GlobalProcessSet:
    def included(self) -> bool:
        return True


global_process_set = _GlobalProcessSet()


class _DistributedOptimizer(torch.optim.Optimizer):
    """Mixed into a copy of the wrapped optimizer's class (as Horovod does), so `super()` is the optimizer."""

    def __init__(self, params, named_parameters, compression, backward_passes_per_step=1, op=Average, *args, **kw):
        super(self.__class__, self).__init__(params)
        self._compression = compression
        if named_parameters is None:
            named_parameters = [
                (f"allreduce.noname.{i}.{j}", v)
                for i, group in enumerate(self.param_groups)
                for j, v in enumerate(group["params"])
            ]
        named_parameters = list(named_parameters)
        names = [k for k, _ in named_parameters]
        if len(set(names)) != len(names):
            raise ValueError("Parameter names in named_parameters must be unique.")
        self._parameter_names = {v: k for k, v in sorted(named_parameters, key=lambda kv: kv[0])}
        self.backward_passes_per_step = backward_passes_per_step
        self.op = op
        self.process_set = global_process_set
        self._handles = {}
        self._requires_update = set()
        self._synchronized = False
        self._should_synchronize = True

    def load_state_dict(self, *args, **kwargs):
        self._handles = {}
        self._synchronized = False
        self._should_synchronize = True
        return super(self.__class__, self).load_state_dict(*args, **kwargs)

    def _allreduce_grad_async(self, p):
        if p.grad is None:
            p.grad = p.data.new(p.size()).zero_()
        payload, ctx = self._compression.compress(p.grad)
        return payload, ctx

    def synchronize(self):
        for p in self._requires_update - set(self._handles):
            self._handles[p] = self._allreduce_grad_async(p)
        for p, (handle, ctx) in self._handles.items():
            output = handle() if callable(handle) else handle
            p.grad.set_(self._compression.decompress(output, ctx))
        self._handles.clear()
        self._synchronized = True

    @contextlib.contextmanager
    def skip_synchronize(self):
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure=None):
        if self._should_synchronize:
            self.synchronize()
        self._synchronized = False
        return super(self.__class__, self).step(closure)

    def zero_grad(self, *args, **kwargs):
        if self._handles:
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but before step()")
        return super(self.__class__, self).zero_grad(*args, **kwargs)


def DistributedOptimizer(
    optimizer, named_parameters=None, compression=None, backward_passes_per_step=1, op=Average, **kwargs
):
    from .compression import Compression

    cls = type(optimizer.__class__.__name__, (optimizer.__class__,), dict(_DistributedOptimizer.__dict__))
    return cls(optimizer.param_groups, named_parameters, compression or Compression.none, backward_passes_per_step, op)
