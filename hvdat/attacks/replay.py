"""Replayed minibatches: Free-AT (Shafahi et al. 2019, "Adversarial Training for Free!") and DEAT (Wang & Ruan,
"Dynamic Efficient Adversarial Training Guided by Gradient Magnitude"), L-inf in [0,1] pixel space.

Each replay of a minibatch is one forward/backward on x + delta that gives both the weight gradient (an optimiser
step) and the input gradient, which moves delta by one signed step. The trainer runs the replays (they step the
weights); this module holds the pure parts: the start, the loss of one replay and the perturbation's update.

- Free-AT: delta starts at zero once and is carried across minibatches and epochs, step eps
  (locuslab/fast_adversarial CIFAR10/train_free.py; mahyarnajibi/FreeAdversarialTraining).
- DEAT: a fresh uniform start in the eps-ball per minibatch, step alpha (wangaxe/DEAT), no clamp to the image box
  before the first replay, as there.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def replay_loss(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor):
    """CE (batch mean) at x + delta[:len(x)] (the buffer may hold more rows than a short last batch); logits."""
    logits = model(x + delta[: len(x)])
    return F.cross_entropy(logits.float(), y), logits


def replay_update(delta: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float, step: float) -> torch.Tensor:
    """delta + step * sign(grad), clamped to the eps-ball and so that x + delta stays in [0,1]. `delta` may have more
    rows than `x` (Free-AT's buffer against a short last batch): only its first len(x) rows move, as in the authors'
    `delta[:X.size(0)]`."""
    n = len(x)
    moved = (delta[:n].detach() + step * grad[:n].sign()).clamp(-eps, eps)
    moved = torch.max(torch.min(moved, 1 - x), -x)
    if n == len(delta):
        return moved
    return torch.cat([moved, delta[n:].detach()])


def uniform_start(x: torch.Tensor, eps: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
