"""The evaluation engine, free of Horovod: the cascade over still-robust points in phases of batches
(hvdat.eval.batches), each batch's result, the per-example state between phases, and the perturbation check.

A batch's result depends only on its examples, its stage, its eps and the seed, never on which rank computes it or
how many ranks there are: the reference's stages reseed at every call (as `run_standard_evaluation` calls them),
hvdat's own take a generator seeded by the batch's place in the cascade. So the batches of a phase can be shared
out over Horovod ranks in any order and the result is a single process's; with blocks of B it is the reference's
`run_standard_evaluation(x, y, bs=B)`, per example.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import torch

from ..runtime.seeds import seed_for
from .batches import Batch, split
from .plan import Plan
from .stages import StageRunner

CLEAN_COST = 1 / 3  # a forward pass, in the units of Plan.cost


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(dim=1)
    return flat.abs().sum(1)


def within_budget(norms: torch.Tensor, eps: float) -> torch.Tensor:
    """Float32 slack: images are rounded after the projection, so allow a relative 1e-5."""
    return norms <= eps * (1 + 1e-5) + 1e-7


@dataclass
class BatchResult:
    """What one batch found. Phase 0: `pred` the clean predictions. A stage: `broken` per example (fooled by a
    candidate within the eps-ball and [0,1]), `pred` and `perturbation` the adversarial prediction and the norm of
    the perturbation where broken."""

    key: str
    indices: List[int]
    pred: List[int]
    broken: List[bool] = field(default_factory=list)
    perturbation: List[float] = field(default_factory=list)
    randomized: bool = False
    nan: int = 0
    rejected: int = 0  # misclassifying candidates dropped for leaving the eps-ball or [0,1]
    pixel_min: float = 1.0
    pixel_max: float = 0.0
    curve: Dict[str, List[int]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class EpsResult:
    """The whole cascade at one eps. `broken_by[i]`: -1 misclassified clean, k stage k broke it, len(stages)
    robust."""

    broken_by: List[int]
    adv_pred: List[int]
    perturbation: List[float]  # norm of the adversarial perturbation used (0 where none was found)
    pixel_min: float = 1.0
    pixel_max: float = 0.0
    rejected: int = 0
    nan: int = 0
    curve: Dict[str, List[int]] = field(default_factory=dict)
    stage_seconds: Dict[str, float] = field(default_factory=dict)  # each stage's time, summed over its batches


@dataclass
class CascadeResult:
    """Per example, the whole evaluation: labels, clean predictions and each eps's cascade."""

    labels: List[int]
    clean_pred: List[int]
    per_eps: List[EpsResult]
    randomized: bool = False


def run_batch(
    batch: Batch,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: Plan,
    runners: Sequence[StageRunner],
    seed: int,
) -> BatchResult:
    """One batch: clean predictions (phase 0, with the check for a randomised model) or one stage's attack."""
    start = time.perf_counter()
    if batch.phase == 0:
        with torch.no_grad():
            logits = model(x)
            randomized = _differ(logits, model(x))
        return BatchResult(
            batch.key,
            list(batch.indices),
            logits.argmax(1).tolist(),
            randomized=randomized,
            nan=int(torch.isnan(logits).any(1).sum()),
            seconds=time.perf_counter() - start,
        )
    stage, runner = plan.stages[batch.phase - 1], runners[batch.eps]
    generator = torch.Generator(x.device).manual_seed(seed_for(seed, batch.phase, batch.eps, batch.number))
    result = BatchResult(batch.key, list(batch.indices), [])
    adv = runner.run(stage, x.clone(), y.clone(), generator, result.curve).detach()
    with torch.no_grad():
        pred = model(adv).argmax(1)
    finite = torch.isfinite(adv.flatten(1)).all(1)
    norms = perturbation_norm(adv - x, plan.norm)
    in_range = (adv.flatten(1).amin(1) >= 0) & (adv.flatten(1).amax(1) <= 1)
    fooled = pred != y
    success = fooled & finite & in_range & within_budget(norms, runner.eps)
    result.rejected = int((fooled & ~success).sum())
    result.nan = int((~finite).sum())
    if bool(success.any()):
        used = adv[success]
        result.pixel_min, result.pixel_max = float(used.min()), float(used.max())
    result.pred, result.broken = pred.tolist(), success.tolist()
    result.perturbation = torch.where(success, norms, torch.zeros_like(norms)).double().tolist()
    result.seconds = time.perf_counter() - start
    return result


def _differ(a: torch.Tensor, b: torch.Tensor, alpha: float = 1e-4) -> bool:
    """AutoAttack's check_randomized: two passes differ if their L2-normalised outputs are more than alpha apart
    (a tolerance, not exact equality: GPU kernels need not be bit-deterministic)."""
    a, b = (t.float() / (t.float().norm(dim=1, keepdim=True) + 1e-10) for t in (a, b))
    return bool(((a - b).norm(dim=1) > alpha).any())


class Cascade:
    """The per-example state between phases: which batches each phase attacks (from what the phases before it
    found), and the results folded in as they come, in any order within a phase."""

    def __init__(self, labels: Sequence[int], plan: Plan, n_eps: int, batch_size: int, even: bool):
        self.labels, self.plan, self.batch_size, self.even = list(labels), plan, batch_size, even
        n, robust = len(self.labels), len(plan.stages)
        self.clean_pred = list(self.labels)
        self.per_eps = [
            EpsResult([robust] * n, [0] * n, [0.0] * n, stage_seconds=dict.fromkeys(plan.stages, 0.0))
            for _ in range(n_eps)
        ]
        self.randomized = False

    @property
    def phases(self) -> int:
        return 1 + len(self.plan.stages)

    def batches(self, phase: int) -> List[Batch]:
        """The phase's batches; those of phase k > 0 follow from the results of phase k - 1."""
        if phase == 0:
            cut = split(range(len(self.labels)), self.batch_size, self.even)
            return [Batch(0, -1, number, indices) for number, indices in enumerate(cut)]
        still = len(self.plan.stages)
        batches = []
        for e, state in enumerate(self.per_eps):
            survivors = [i for i, b in enumerate(state.broken_by) if b == still]
            cut = split(survivors, self.batch_size, self.even)
            batches += [Batch(phase, e, number, indices) for number, indices in enumerate(cut)]
        return batches

    def apply(self, batch: Batch, result: BatchResult) -> None:
        if batch.phase == 0:
            self.randomized |= result.randomized
            for state in self.per_eps:  # NaN logits count against every eps
                state.nan += result.nan
            for i, pred in zip(batch.indices, result.pred):
                self.clean_pred[i] = pred
                for state in self.per_eps:
                    state.adv_pred[i] = pred
                    if pred != self.labels[i]:
                        state.broken_by[i] = -1
            return
        k = batch.phase - 1
        state, stage = self.per_eps[batch.eps], self.plan.stages[k]
        for i, broken, pred, norm in zip(batch.indices, result.broken, result.pred, result.perturbation):
            if broken:
                state.broken_by[i], state.adv_pred[i], state.perturbation[i] = k, pred, norm
        if any(result.broken):
            state.pixel_min = min(state.pixel_min, result.pixel_min)
            state.pixel_max = max(state.pixel_max, result.pixel_max)
        state.rejected += result.rejected
        state.nan += result.nan
        for name, counts in result.curve.items():
            old = state.curve.get(name, [0] * len(counts))
            state.curve[name] = [a + b for a, b in zip(old, counts)]
        state.stage_seconds[stage] += result.seconds

    def total_work(self) -> float:
        """The most work the evaluation can take, if every example stayed robust (Plan.cost's units)."""
        return len(self.labels) * (CLEAN_COST + len(self.per_eps) * sum(map(self.plan.cost, self.plan.stages)))

    def work(self, batch: Batch, result: BatchResult) -> Tuple[float, float]:
        """The batch's work, and the work its broken examples no longer need (their later stages): for the
        progress bar and its ETA."""
        if batch.phase == 0:
            wrong = sum(p != self.labels[i] for i, p in zip(batch.indices, result.pred))
            rest = len(self.per_eps) * sum(map(self.plan.cost, self.plan.stages))
            return len(batch.indices) * CLEAN_COST, wrong * rest
        later = sum(map(self.plan.cost, self.plan.stages[batch.phase :]))
        return len(batch.indices) * self.plan.cost(self.plan.stages[batch.phase - 1]), sum(result.broken) * later

    def result(self) -> CascadeResult:
        return CascadeResult(self.labels, self.clean_pred, self.per_eps, self.randomized)


def evaluate(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: Plan,
    runners: Sequence[StageRunner],
    seed: int,
    batch_size: int,
    even: bool = False,
    on_batch: Callable[[Batch, BatchResult], None] = lambda batch, result: None,
) -> CascadeResult:
    """The whole cascade in this process, phase by phase (the workers share each phase's batches out instead)."""
    cascade = Cascade(y.tolist(), plan, len(runners), batch_size, even)
    for phase in range(cascade.phases):
        for batch in cascade.batches(phase):
            index = torch.as_tensor(batch.indices, dtype=torch.long)
            result = run_batch(batch, model, x[index], y[index], plan, runners, seed)
            on_batch(batch, result)
            cascade.apply(batch, result)
    return cascade.result()


def fold(cascade: Cascade, phase_results: Iterable[Tuple[Batch, BatchResult]]) -> None:
    """Fold a phase's results into the cascade in batch order (sums of floats do not depend on who finished first)."""
    for batch, result in sorted(phase_results, key=lambda pair: (pair[0].eps, pair[0].number)):
        cascade.apply(batch, result)
