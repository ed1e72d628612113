"""The model's state while the inner attack runs during training: BatchNorm's behaviour (`--attack-bn`), and the
weights frozen (`requires_grad` off), so the attack's backward computes the input gradient only.

Eager autograd already skips weight gradients that `torch.autograd.grad(loss, x)` does not ask for, but a
`torch.compile`d model's backward is a joint graph that computes the gradient of every input requiring one, weights
included, at every attack step; with the weights frozen it is compiled (once more) without them. Horovod's gradient
hooks sit on the weights' gradient accumulators, which survive the toggle.

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


@contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


BN_MODES = {"train": frozen_running_stats, "eval": eval_mode}


def attack_mode(model: nn.Module, mode: str) -> Callable[[], ContextManager]:
    """A factory of the context the inner attack runs in: BN as `mode` says, weights frozen."""

    @contextmanager
    def attacking() -> Iterator[None]:
        with BN_MODES[mode](model), frozen_weights(model):
            yield

    return attacking
