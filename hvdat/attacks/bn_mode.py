"""How BatchNorm behaves while the inner attack runs during training (`--attack-bn`).

- `train`: batch statistics, as in the training step the examples feed, but running statistics are frozen, so
  the k attack passes do not drag them towards adversarial batches (the training pass still updates them).
- `eval`: the model's running statistics, as TRADES' reference code does.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator

from torch import nn

_BN = (nn.modules.batchnorm._BatchNorm,)


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    saved = []
    for module in model.modules():
        if isinstance(module, _BN) and module.training:
            saved.append((module, module.momentum))
            module.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for module, momentum in saved:
            module.momentum = momentum


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def attack_mode(model: nn.Module, mode: str) -> Callable[[], ContextManager]:
    factories = {"train": frozen_running_stats, "eval": eval_mode}
    return lambda: factories[mode](model)
