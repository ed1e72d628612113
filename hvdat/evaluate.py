"""The evaluation engine, free of Horovod: a cascade over still-robust points, per-example results, the
perturbation check, sanity flags in AutoAttack's spirit, and the summary that becomes the JSON report.

Work is cut into fixed chunks of `batch_size` examples. Each chunk runs the whole cascade on its own, seeded by
`seed` alone, exactly as the reference `AutoAttack.run_standard_evaluation(x_chunk, y_chunk, bs=len(chunk))` runs
it. A chunk's result therefore depends only on its examples and the settings, never on which rank computes it
or how many ranks there are, so sharding chunks over Horovod ranks reproduces a single-process evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .eval_attacks import STAGES, Plan, StageRunner

SQUARE_ALPHA = 0.002  # AutoAttack's checks.check_square_sr tolerance
MONOTONE_TOLERANCE = 0.01  # robust accuracy may wobble by this much between PGD iterates before we flag it


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


@dataclass
class ChunkResult:
    chunk: int
    indices: List[int]
    labels: List[int]
    clean_pred: List[int]
    per_eps: List[EpsResult]
    randomized: bool = False
    seconds: float = 0.0


def evaluate_chunk(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, plan: Plan,
                   runners: Sequence[StageRunner], generator_seed: int) -> Tuple[List[int], List[EpsResult], bool]:
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
    runner.curve = {}
    for k, stage in enumerate(plan.stages):
        idx = robust.nonzero().flatten()
        if len(idx) == 0:
            break
        x_sub, y_sub = x[idx].clone(), y[idx].clone()
        adv = runner.run(stage, x_sub, y_sub, generator).detach()
        with torch.no_grad():
            pred = model(adv).argmax(1)
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
    result.curve = dict(runner.curve)
    return result


# --- the summary ---------------------------------------------------------------------------------------------------
def summarise(chunks: Sequence[ChunkResult], plan: Plan, eps_values: Sequence[float]) -> Dict:
    """Merge chunk results (any order) into the report's numbers: per eps, stage by stage, with sanity flags."""
    chunks = sorted(chunks, key=lambda c: c.chunk)
    labels = [v for c in chunks for v in c.labels]
    clean_pred = [v for c in chunks for v in c.clean_pred]
    n = len(labels)
    clean_correct = sum(p == t for p, t in zip(clean_pred, labels))
    randomized = any(c.randomized for c in chunks)
    sweep = []
    for e, eps in enumerate(eps_values):
        per = [c.per_eps[e] for c in chunks]
        broken_by = [v for r in per for v in r.broken_by]
        perturbation = [v for r in per for v in r.perturbation]
        stages = {}
        for k, stage in enumerate(plan.stages):
            stages[stage] = sum(b > k for b in broken_by) / max(n, 1)
        robust = sum(b == len(plan.stages) for b in broken_by) / max(n, 1)
        used = [p for p, b in zip(perturbation, broken_by) if 0 <= b < len(plan.stages)]
        max_pert = max(used, default=0.0)
        pixel_min = min((r.pixel_min for r in per), default=1.0)
        pixel_max = max((r.pixel_max for r in per), default=0.0)
        curve = _sum_curves(r.curve for r in per)
        entry = {
            "eps": eps, "robust_accuracy": robust, "stages": stages, "max_perturbation": max_pert,
            "perturbation_ok": all(within_budget(torch.tensor([p]), eps).item() for p in used)
                               and (not used or (pixel_min >= 0 and pixel_max <= 1)),
            "pixel_range": [pixel_min, pixel_max] if used else None,
            "pgd_curve": {k: [c / max(n, 1) for c in v] for k, v in curve.items()},
            "broken_by": [_stage_name(b, plan.stages) for b in broken_by],
            "adv_pred": [v for r in per for v in r.adv_pred],
            "perturbation": perturbation,
        }
        entry["sanity"] = sanity_flags(plan, clean_correct / max(n, 1), stages, curve, n,
                                       nan=sum(r.nan for r in per), rejected=sum(r.rejected for r in per),
                                       randomized=randomized)
        sweep.append(entry)
    return {"n_examples": n, "clean_accuracy": clean_correct / max(n, 1),
            "indices": [v for c in chunks for v in c.indices], "labels": labels, "clean_pred": clean_pred,
            "sweep": sweep}


def _stage_name(b: int, stages: Sequence[str]) -> Optional[str]:
    if b < 0:
        return "clean"
    return stages[b] if b < len(stages) else None


def _sum_curves(curves) -> Dict[str, List[int]]:
    total: Dict[str, List[int]] = {}
    for curve in curves:
        for stage, counts in curve.items():
            old = total.get(stage, [0] * len(counts))
            total[stage] = [a + b for a, b in zip(old, counts)]
    return total


def sanity_flags(plan: Plan, clean_acc: float, stages: Dict[str, float], curve: Dict[str, List[int]], n: int,
                 nan: int, rejected: int, randomized: bool) -> Dict[str, Dict]:
    """Signs of an unreliable evaluation (gradient masking, broken numerics), each with a one-line detail."""
    flags = {}
    white = [acc for s, acc in stages.items() if STAGES.get(s).white_box]
    if "square" in stages and white:
        before = min([clean_acc] + [acc for s, acc in stages.items() if s != "square"])
        drop = before - stages["square"]
        flags["square_beats_whitebox"] = {
            "raised": drop > SQUARE_ALPHA,
            "detail": f"black-box Square lowered robust accuracy by {drop:.2%} after the white-box attacks"
                      if drop > SQUARE_ALPHA else "Square found nothing the white-box attacks missed"}
    for stage, counts in curve.items():
        if len(counts) < 3:
            continue
        worst = min(counts)
        rise = (counts[-1] - worst) / max(n, 1)
        raised = counts[-1] - worst > max(1, MONOTONE_TOLERANCE * n)
        flags[f"{stage}_accuracy_rises_with_steps"] = {
            "raised": raised,
            "detail": f"robust accuracy rose by {rise:.2%} from its lowest iterate to the last one"
                      if raised else "robust accuracy does not rise with more steps"}
    flags["nan"] = {"raised": nan > 0, "detail": f"{nan} NaN outputs or adversarial examples" if nan else "no NaNs"}
    flags["over_eps"] = {"raised": rejected > 0,
                         "detail": f"{rejected} misclassified candidates left the eps-ball or [0,1] and were "
                                   "not counted" if rejected else "every adversarial example is within eps and [0,1]"}
    flags["randomized"] = {"raised": randomized,
                           "detail": "two forward passes differ: a randomized defense? use --version rand"
                           if randomized else "the model is deterministic"}
    return flags


def headline(summary: Dict) -> Dict:
    """The top-level numbers: those of the largest eps in the sweep."""
    last = max(summary["sweep"], key=lambda e: e["eps"])
    return {k: last[k] for k in ("eps", "robust_accuracy", "stages", "max_perturbation", "perturbation_ok",
                                 "pixel_range", "sanity")}


def chunk_bounds(n_examples: int, batch_size: int) -> List[Tuple[int, int]]:
    return [(start, min(start + batch_size, n_examples)) for start in range(0, n_examples, batch_size)]


def chunks_of_rank(n_chunks: int, rank: int, size: int) -> List[int]:
    return list(range(rank, n_chunks, size))

