"""Evaluation stages, one table: what each stage is, where its reference settings come from, and how it runs.

An evaluation attack is a cascade of stages; each stage attacks only the points that are still robust. The
AutoAttack stages (APGD-CE, APGD-DLR, APGD-T, FAB, FAB-T, Square; Croce & Hein 2020) are the reference code from
the `pyautoattack` package, configured by the package's own `AutoAttack(version=...)` and called exactly as its
`run_standard_evaluation` calls them, so their defaults (100 iterations, 9 target classes, 5000 Square queries)
come from the reference, not from a copy. PGD (Madry et al. 2018), CW-loss PGD (Carlini & Wagner 2017's margin
loss, as in TRADES' evaluation) and FGSM (Goodfellow et al. 2015) use hvdat's own pure `pgd()`.

All stages take and return images in [0,1]; the model holds its normalisation and is in eval mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..attacks.pgd import madry_alpha, pgd
from ..registry import Registry

log = logging.getLogger(__name__)

AA_NORMS = ("linf", "l2", "l1")
PGD_NORMS = ("linf", "l2")
_AA_NORM_NAME = {"linf": "Linf", "l2": "L2", "l1": "L1"}


@dataclass(frozen=True)
class StageSettings:
    """The knobs of one stage as they will run. `steps` is iterations (queries for Square)."""

    steps: int
    restarts: int
    targets: Optional[int] = None  # target classes (APGD-T, FAB-T)


@dataclass(frozen=True)
class Reference:
    """Where a stage's settings live on the reference AutoAttack object: `aa.<attack>.<steps>`, its restarts
    (or a number run_standard_evaluation forces) and its target classes, and what the stage fixes on it."""

    attack: str  # apgd, apgd_targeted, fab or square
    steps: str = "n_iter"
    forced_restarts: Optional[int] = None
    targeted: bool = False  # has n_target_classes
    fixed: Tuple[Tuple[str, Any], ...] = ()  # attributes the stage sets before each run (e.g. APGD's loss)
    derives_schedule: bool = False  # APGD derives its step-size checkpoints from n_iter in __init__


@dataclass(frozen=True)
class Stage:
    name: str
    norms: Tuple[str, ...]
    white_box: bool
    doc: str
    reference: Optional[Reference] = None  # AutoAttack's stages
    fixed_steps: int = 0  # hvdat's own stages: their steps
    run: Optional[Callable] = None  # hvdat's own stages: (runner, stage, x, y, generator, curve) -> x_adv

    def reference_settings(self, version: str, norm: str) -> StageSettings:
        if self.reference is None:
            return StageSettings(self.fixed_steps, 1)
        ref = self.reference
        attack = getattr(reference_autoattack(version, norm), ref.attack)
        return StageSettings(
            getattr(attack, ref.steps),
            ref.forced_restarts or attack.n_restarts,
            attack.n_target_classes if ref.targeted else None,
        )


STAGES: Registry[Stage] = Registry("attack stage")


def reference_autoattack(
    version: str,
    norm: str,
    model: Optional[torch.nn.Module] = None,
    eps: float = 1.0,
    seed: int = 0,
    device: Optional[torch.device] = None,
):
    """The reference AutoAttack, configured for `version` (with no model: only its settings are read)."""
    from pyautoattack import AutoAttack

    kwargs = {"device": device} if device is not None else {}
    aa = AutoAttack(
        model if model is not None else torch.nn.Identity(),
        eps=eps,
        norm=_AA_NORM_NAME[norm],
        version=version,
        seed=seed,
        **kwargs,
    )
    aa.logger.setLevel(logging.WARNING)
    return aa


def _set_apgd_iters(apgd, n_iter: int) -> None:
    """APGD derives its checkpoints from n_iter in __init__; redo that for a changed n_iter."""
    apgd.n_iter, apgd.n_iter_orig = n_iter, n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


def configure(aa, stage: Stage, settings: StageSettings) -> None:
    """Put one stage's settings on the reference AutoAttack object (restarts are set before each run)."""
    ref = stage.reference
    attack = getattr(aa, ref.attack)
    if getattr(attack, ref.steps) != settings.steps:
        if ref.derives_schedule:
            _set_apgd_iters(attack, settings.steps)
        else:
            setattr(attack, ref.steps, settings.steps)
    if ref.targeted and settings.targets is not None:
        attack.n_target_classes = settings.targets


class StageRunner:
    """Runs the stages of one plan at one eps. The AutoAttack objects are built once and reused per batch."""

    def __init__(self, model: torch.nn.Module, plan, eps: float, seed: int, device: torch.device):
        self.model, self.plan, self.eps, self.seed, self.device = model, plan, eps, seed, device
        self._aa = None

    def run(
        self, stage: str, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, curve: Dict[str, List[int]]
    ) -> torch.Tensor:
        """x_adv for the stage; PGD-type stages add their correct predictions at each iterate to `curve`."""
        spec = STAGES.get(stage)
        if spec.reference is None:
            return spec.run(self, stage, x, y, generator, curve)
        return self._run_reference(spec, stage, x, y)

    def aa(self):
        if self._aa is None:
            aa = reference_autoattack(self.plan.version, self.plan.norm, self.model, self.eps, self.seed, self.device)
            for name, settings in self.plan.settings.items():
                if STAGES.get(name).reference is not None:
                    configure(aa, STAGES.get(name), settings)
            self._aa = aa
        return self._aa

    def _run_reference(self, spec: Stage, stage: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The same calls, in the same order, as AutoAttack.run_standard_evaluation makes them. apgd-ce/apgd-dlr
        and fab/fab-t share one object, so every stage sets its own attributes again."""
        attack = getattr(self.aa(), spec.reference.attack)
        for name, value in spec.reference.fixed:
            setattr(attack, name, value)
        attack.n_restarts = self.plan.settings[stage].restarts
        attack.seed = self.seed
        return attack.perturb(x, y)


# --- hvdat's own stages ----------------------------------------------------------------------------------------
def cw_margin_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner's margin, summed: max_{j != y} z_j - z_y (positive once misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - true).sum()


def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def _tracking(loss_fn, correct_per_iterate: List[int]):
    """loss_fn that also records the correct predictions at each iterate."""

    def tracked(logits, labels):
        correct_per_iterate.append(int((logits.argmax(1) == labels).sum()))
        return loss_fn(logits, labels)

    return tracked


def _pgd_like(loss_fn, alpha_of: Callable[[float, int], float], random_start: bool):
    def run(r: StageRunner, stage, x, y, generator, curve):
        s = r.plan.settings[stage]
        best = x.clone()
        broken = torch.zeros(len(y), dtype=torch.bool, device=x.device)
        for restart in range(s.restarts):
            correct_per_iterate: List[int] = []
            tracked = _tracking(loss_fn, correct_per_iterate)

            adv = pgd(
                r.model,
                x,
                y,
                eps=r.eps,
                alpha=alpha_of(r.eps, s.steps),
                steps=s.steps,
                norm=r.plan.norm,
                random_start=random_start,
                generator=generator,
                loss_fn=tracked,
            )
            with torch.no_grad():
                wrong = r.model(adv).argmax(1) != y
            correct_per_iterate.append(int((~wrong).sum()))
            if restart == 0:
                total = curve.setdefault(stage, [0] * len(correct_per_iterate))
                curve[stage] = [a + b for a, b in zip(total, correct_per_iterate)]
            new = wrong & ~broken
            best[new], broken = adv[new], broken | wrong
            if bool(broken.all()):
                break
        return best

    return run


# --- the table -----------------------------------------------------------------------------------------------------
for _stage in (
    Stage(
        "fgsm",
        PGD_NORMS,
        True,
        "FGSM: one step of size eps from x",
        fixed_steps=1,
        run=_pgd_like(_ce_sum, lambda eps, steps: eps, random_start=False),
    ),
    Stage(
        "pgd",
        PGD_NORMS,
        True,
        "PGD-20 on cross-entropy, step 2.5*eps/steps, random start",
        fixed_steps=20,
        run=_pgd_like(_ce_sum, madry_alpha, random_start=True),
    ),
    Stage(
        "cw",
        PGD_NORMS,
        True,
        "PGD-30 on the CW margin loss max_{j!=y} z_j - z_y",
        fixed_steps=30,
        run=_pgd_like(cw_margin_sum, madry_alpha, random_start=True),
    ),
    Stage(
        "apgd-ce",
        AA_NORMS,
        True,
        "APGD on cross-entropy (AutoAttack)",
        reference=Reference("apgd", fixed=(("loss", "ce"),), derives_schedule=True),
    ),
    Stage(
        "apgd-dlr",
        AA_NORMS,
        True,
        "APGD on the DLR loss (AutoAttack plus)",
        reference=Reference("apgd", fixed=(("loss", "dlr"),), derives_schedule=True),
    ),
    Stage(
        "apgd-t",
        AA_NORMS,
        True,
        "targeted APGD-DLR (AutoAttack)",
        reference=Reference("apgd_targeted", targeted=True, derives_schedule=True),
    ),
    Stage(
        "fab",
        AA_NORMS,
        True,
        "untargeted FAB (AutoAttack plus)",
        reference=Reference("fab", fixed=(("targeted", False),)),
    ),
    # run_standard_evaluation forces one restart for FAB-T
    Stage(
        "fab-t",
        AA_NORMS,
        True,
        "targeted FAB (AutoAttack)",
        reference=Reference("fab", forced_restarts=1, targeted=True, fixed=(("targeted", True),)),
    ),
    Stage(
        "square", AA_NORMS, False, "Square, black-box (AutoAttack)", reference=Reference("square", steps="n_queries")
    ),
):
    STAGES.add(_stage.name, _stage)
