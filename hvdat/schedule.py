"""Learning-rate schedules as pure functions of progress, with linear warm-up, and LR scaling with global batch.

`lr_at(step, steps_per_epoch, ...)` is stateless, so a resumed run recomputes the same rate for the same step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

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


@SCHEDULES.register("accelat")
def accelat(progress: float, milestones: Sequence[float]) -> float:
    """AccelAT (Nikfam et al. 2022): constant, cut by 0.8 when the robust accuracy stalls (AccelatCuts, per epoch)."""
    return 1.0


@dataclass
class AccelatCuts:
    """AccelAT's per-epoch LR cuts (farzadnikfam/AccelAT, function_callback.py's accelat_function with accelat.py's
    values: window 5, cooldown 5, min gain 0.005, factor 0.8, floor 1e-6).

    After each epoch the held-out robust accuracy is appended and the mean of the last `window` taken; when more
    than `window` means came before, at least `cooldown` epochs passed since the last cut (the first needs no wait:
    the authors' count starts at `cooldown`) and the mean rose by less than `min_gain` over the previous mean,
    the LR is multiplied by `factor`. The LR never goes below `min_lr`. Fed rank-summed accuracies, every rank cuts
    alike."""

    window: int = 5
    cooldown: int = 5
    min_gain: float = 0.005
    factor: float = 0.8
    min_lr: float = 1e-6
    accuracies: List[float] = field(default_factory=list)
    means: List[float] = field(default_factory=list)
    quiet: Optional[int] = None  # epochs since the last cut (None: `cooldown`, as the authors start it)
    scale: float = 1.0  # the product of the cuts so far

    def after_epoch(self, accuracy: float) -> bool:
        """Feed one epoch's robust accuracy; True when the LR is cut from the next epoch on."""
        self.accuracies.append(float(accuracy))
        mean = sum(self.accuracies[-self.window :]) / len(self.accuracies[-self.window :])
        quiet = (self.cooldown if self.quiet is None else self.quiet) + 1
        cut = len(self.means) > self.window and quiet > self.cooldown and mean - self.means[-1] < self.min_gain
        if cut:
            self.scale *= self.factor
            quiet = 1
        self.means.append(mean)
        self.quiet = quiet
        return cut

    def apply(self, lr: float) -> float:
        """The schedule's `lr` after the cuts, not below `min_lr` once cut."""
        return lr if self.scale == 1.0 else max(lr * self.scale, self.min_lr)

    def state_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> AccelatCuts:
        return cls(**state)


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
