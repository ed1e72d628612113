"""The evaluation engine, free of Horovod: a cascade over still-robust points, per-example results and the
perturbation check.

Work is cut into fixed chunks of `batch_size` examples. Each chunk runs the whole cascade on its own, seeded by
`seed` alone, exactly as the reference `AutoAttack.run_standard_evaluation(x_chunk, y_chunk, bs=len(chunk))` runs
it. A chunk's result therefore depends only on its examples and the settings, never on which rank computes it
or how many ranks there are, so sharding chunks over Horovod ranks reproduces a single-process evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

from .plan import Plan
from .stages import StageRunner


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
class EpsResult:
    """One chunk at one eps. `broken_by[i]`: -1 misclassified clean, k stage k broke it, len(stages) robust."""

    broken_by: List[int]
    adv_pred: List[int]
    perturbation: List[float]  # norm of the adversarial perturbation used (0 where none was found)
    pixel_min: float = 1.0
    pixel_max: float = 0.0
    rejected: int = 0  # misclassifying candidates dropped for leaving the eps-ball or [0,1]
    nan: int = 0
    curve: Dict[str, List[int]] = field(default_factory=dict)
    stage_seconds: Dict[str, float] = field(default_factory=dict)  # each stage's time on this chunk


@dataclass
class ChunkResult:
    chunk: int
    indices: List[int]
    labels: List[int]
    clean_pred: List[int]
    per_eps: List[EpsResult]
    randomized: bool = False
    seconds: float = 0.0


def evaluate_chunk(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: Plan,
    runners: Sequence[StageRunner],
    generator_seed: int,
) -> Tuple[List[int], List[EpsResult], bool]:
    """Clean predictions, then for each eps (one runner each) the cascade over the still-robust points."""
    with torch.no_grad():
        logits = model(x)
        randomized = _differ(logits, model(x))
    clean_pred = logits.argmax(1)
    results = []
    for runner in runners:
        generator = torch.Generator(x.device).manual_seed(generator_seed)
        results.append(_cascade(model, x, y, clean_pred, plan, runner, generator))
        results[-1].nan += int(torch.isnan(logits).any(1).sum())
    return clean_pred.tolist(), results, randomized


def _differ(a: torch.Tensor, b: torch.Tensor, alpha: float = 1e-4) -> bool:
    """AutoAttack's check_randomized: two passes differ if their L2-normalised outputs are more than alpha apart
    (a tolerance, not exact equality: GPU kernels need not be bit-deterministic)."""
    a, b = (t.float() / (t.float().norm(dim=1, keepdim=True) + 1e-10) for t in (a, b))
    return bool(((a - b).norm(dim=1) > alpha).any())


def _cascade(model, x, y, clean_pred, plan: Plan, runner: StageRunner, generator) -> EpsResult:
    n_stages = len(plan.stages)
    robust = clean_pred == y
    broken_by = torch.where(robust, n_stages, -1)
    adv_pred = clean_pred.clone()
    perturbation = torch.zeros(len(y), dtype=torch.float64, device=y.device)  # indexed with on-device masks
    result = EpsResult([], [], [])
    for k, stage in enumerate(plan.stages):
        idx = robust.nonzero().flatten()
        if len(idx) == 0:
            break
        stage_start = time.perf_counter()
        x_sub, y_sub = x[idx].clone(), y[idx].clone()
        adv = runner.run(stage, x_sub, y_sub, generator, result.curve).detach()
        with torch.no_grad():
            pred = model(adv).argmax(1)
        result.stage_seconds[stage] = time.perf_counter() - stage_start
        finite = torch.isfinite(adv.flatten(1)).all(1)
        norms = perturbation_norm(adv - x_sub, plan.norm)
        in_range = (adv.flatten(1).amin(1) >= 0) & (adv.flatten(1).amax(1) <= 1)
        valid = finite & in_range & within_budget(norms, runner.eps)
        fooled = pred != y_sub
        success = fooled & valid
        result.rejected += int((fooled & ~valid).sum())
        result.nan += int((~finite).sum())
        hit = idx[success]
        robust[hit] = False
        broken_by[hit] = k
        adv_pred[hit] = pred[success]
        perturbation[hit] = norms[success].double()
        if bool(success.any()):
            used = adv[success]
            result.pixel_min = min(result.pixel_min, float(used.min()))
            result.pixel_max = max(result.pixel_max, float(used.max()))
    result.broken_by, result.adv_pred = broken_by.tolist(), adv_pred.tolist()
    result.perturbation = perturbation.tolist()
    return result
