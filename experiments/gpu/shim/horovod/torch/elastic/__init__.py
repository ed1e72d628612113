"""`horovod.torch.elastic` as far as a one-rank job goes: `run` calls the function once (there is no ring to
re-form). TorchState and ElasticSampler are not provided: elastic jobs need the real Horovod and horovodrun."""

from __future__ import annotations

import functools


def run(func):
    @functools.wraps(func)
    def wrapper(state, *args, **kwargs):
        return func(state, *args, **kwargs)

    return wrapper


def __getattr__(name):
    raise NotImplementedError(f"horovod.torch.elastic.{name}: elastic jobs need the real Horovod (the shim has none)")
