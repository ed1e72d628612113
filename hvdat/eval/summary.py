"""The summary of an evaluation: the cascade's per-example results turned into per-eps, stage-by-stage accuracies,
with sanity flags in AutoAttack's spirit (signs of gradient masking or broken numerics); it becomes the JSON report."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from .cascade import CascadeResult, within_budget
from .plan import Plan
from .stages import STAGES

SQUARE_ALPHA = 0.002  # AutoAttack's checks.check_square_sr tolerance
MONOTONE_TOLERANCE = 0.01  # robust accuracy may wobble by this much between PGD iterates before we flag it


def summarise(result: CascadeResult, plan: Plan, eps_values: Sequence[float]) -> Dict:
    """The report's numbers: per eps, stage by stage, with sanity flags."""
    labels, clean_pred = result.labels, result.clean_pred
    n = len(labels)
    clean_correct = sum(p == t for p, t in zip(clean_pred, labels))
    sweep = []
    for eps, r in zip(eps_values, result.per_eps):
        broken_by, perturbation = r.broken_by, r.perturbation
        stages = {}
        for k, stage in enumerate(plan.stages):
            stages[stage] = sum(b > k for b in broken_by) / max(n, 1)
        robust = sum(b == len(plan.stages) for b in broken_by) / max(n, 1)
        used = [p for p, b in zip(perturbation, broken_by) if 0 <= b < len(plan.stages)]
        max_pert = max(used, default=0.0)
        pixel_min, pixel_max, curve = r.pixel_min, r.pixel_max, r.curve
        entry = {
            "eps": eps,
            "robust_accuracy": robust,
            "stages": stages,
            "max_perturbation": max_pert,
            "perturbation_ok": all(within_budget(torch.tensor([p]), eps).item() for p in used)
            and (not used or (pixel_min >= 0 and pixel_max <= 1)),
            "pixel_range": [pixel_min, pixel_max] if used else None,
            "pgd_curve": {k: [c / max(n, 1) for c in v] for k, v in curve.items()},
            "stage_seconds": dict(r.stage_seconds),  # compute time per stage, summed over its batches (and ranks)
            "broken_by": [_stage_name(b, plan.stages) for b in broken_by],
            "adv_pred": r.adv_pred,
            "perturbation": perturbation,
        }
        entry["sanity"] = sanity_flags(
            plan,
            clean_correct / max(n, 1),
            stages,
            curve,
            n,
            nan=r.nan,
            rejected=r.rejected,
            randomized=result.randomized,
        )
        sweep.append(entry)
    return {
        "n_examples": n,
        "clean_accuracy": clean_correct / max(n, 1),
        "indices": list(range(n)),
        "labels": labels,
        "clean_pred": clean_pred,
        "sweep": sweep,
    }


def _stage_name(b: int, stages: Sequence[str]) -> Optional[str]:
    if b < 0:
        return "clean"
    return stages[b] if b < len(stages) else None


def sanity_flags(
    plan: Plan,
    clean_acc: float,
    stages: Dict[str, float],
    curve: Dict[str, List[int]],
    n: int,
    nan: int,
    rejected: int,
    randomized: bool,
) -> Dict[str, Dict]:
    """Signs of an unreliable evaluation (gradient masking, broken numerics), each with a one-line detail."""
    flags = {}
    white = [acc for s, acc in stages.items() if STAGES.get(s).white_box]
    if "square" in stages and white:
        before = min([clean_acc] + [acc for s, acc in stages.items() if s != "square"])
        drop = before - stages["square"]
        flags["square_beats_whitebox"] = {
            "raised": drop > SQUARE_ALPHA,
            "detail": f"black-box Square lowered robust accuracy by {drop:.2%} after the white-box attacks"
            if drop > SQUARE_ALPHA
            else "Square found nothing the white-box attacks missed",
        }
    for stage, counts in curve.items():
        if len(counts) < 3:
            continue
        worst = min(counts)
        rise = (counts[-1] - worst) / max(n, 1)
        raised = counts[-1] - worst > max(1, MONOTONE_TOLERANCE * n)
        flags[f"{stage}_accuracy_rises_with_steps"] = {
            "raised": raised,
            "detail": f"robust accuracy rose by {rise:.2%} from its lowest iterate to the last one"
            if raised
            else "robust accuracy does not rise with more steps",
        }
    flags["nan"] = {"raised": nan > 0, "detail": f"{nan} NaN outputs or adversarial examples" if nan else "no NaNs"}
    flags["over_eps"] = {
        "raised": rejected > 0,
        "detail": f"{rejected} misclassified candidates left the eps-ball or [0,1] and were not counted"
        if rejected
        else "every adversarial example is within eps and [0,1]",
    }
    flags["randomized"] = {
        "raised": randomized,
        "detail": "two forward passes differ: a randomized defense? use --version rand"
        if randomized
        else "the model is deterministic",
    }
    return flags


def headline(summary: Dict) -> Dict:
    """The top-level numbers: those of the largest eps in the sweep."""
    last = max(summary["sweep"], key=lambda e: e["eps"])
    return {
        k: last[k]
        for k in (
            "eps",
            "robust_accuracy",
            "stages",
            "stage_seconds",
            "max_perturbation",
            "perturbation_ok",
            "pixel_range",
            "sanity",
        )
    }
