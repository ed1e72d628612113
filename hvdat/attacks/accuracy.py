"""Accuracy under attack: the per-epoch robust check of training and the collapse guard's check, one loop."""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch

from .pgd import madry_alpha, pgd

Batches = Iterable[Tuple[torch.Tensor, torch.Tensor]]


def clean_correct(model: torch.nn.Module, batches: Batches) -> Tuple[int, int]:
    """(correct predictions, examples) over the batches; the caller sets the model's mode."""
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct, total


def pgd_correct(
    model: torch.nn.Module, batches: Batches, *, eps: float, steps: int, norm: str, generator: Optional[torch.Generator]
) -> Tuple[int, int]:
    """(correct predictions, examples) on PGD-`steps` adversarial examples (Madry's step 2.5*eps/steps, random
    start); the caller sets the model's mode."""
    correct = total = 0
    for x, y in batches:
        x_adv = pgd(model, x, y, eps=eps, alpha=madry_alpha(eps, steps), steps=steps, norm=norm, generator=generator)
        with torch.no_grad():
            correct += (model(x_adv).argmax(1) == y).sum().item()
        total += len(y)
    return correct, total
