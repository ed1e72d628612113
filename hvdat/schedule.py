"""Learning-rate schedules as pure functions of progress, with linear warm-up, and LR scaling with global batch.

`lr_at(step, steps_per_epoch, ...)` is stateless, so a resumed run recomputes the same rate for the same step.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from .registry import Registry

Schedule = Callable[[float, Sequence[float]], float]  # (progress in [0,1], milestones) -> multiplier

SCHEDULES: Registry[Schedule] = Registry("schedule")


@SCHEDULES.register("constant")
def constant(progress: float, milestones: Sequence[float]) -> float:
    return 1.0


@SCHEDULES.register("cosine")
def cosine(progress: float, milestones: Sequence[float]) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


@SCHEDULES.register("multistep")
def multistep(progress: float, milestones: Sequence[float]) -> float:
    """Divide by 10 at each milestone (fractions of training: Madry's/Rice's 0.5 and 0.75)."""
    return 0.1 ** sum(progress >= m for m in milestones)


@SCHEDULES.register("onecycle")
def onecycle(progress: float, milestones: Sequence[float]) -> float:
    """Triangular one-cycle (Smith 2018; fast-AT's schedule): 0 -> peak at 40% -> 0."""
    peak = 0.4
    return progress / peak if progress < peak else max(0.0, (1.0 - progress) / (1.0 - peak))


def scale_factor(global_batch: int, base_batch: int, rule: str) -> float:
    """LR multiplier for a global batch: linear (Goyal et al. 2017), sqrt (Krizhevsky 2014), or none."""
    ratio = global_batch / base_batch
    return {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]


def lr_at(
    step: float,
    steps_per_epoch: int,
    epochs: int,
    peak_lr: float,
    schedule: str,
    warmup_epochs: float = 0.0,
    milestones: Sequence[float] = (),
) -> float:
    """The rate at schedule position `step` (0-based, in steps of `steps_per_epoch`; fractional after a change of
    world size): linear warm-up to `peak_lr`, then the schedule."""
    total = max(1, steps_per_epoch * epochs)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak_lr * SCHEDULES.get(schedule)(progress, milestones)
