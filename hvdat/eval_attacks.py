"""Evaluation attacks, one registry: `hvdat eval --attack NAME`.

An evaluation attack is a cascade of *stages*; each stage attacks only the points that are still robust. The
AutoAttack stages (APGD-CE, APGD-DLR, APGD-T, FAB, FAB-T, Square; Croce & Hein 2020) are the reference code from
the `pyautoattack` package, configured by the package's own `AutoAttack(version=...)` and called exactly as its
`run_standard_evaluation` calls them, so their defaults (100 iterations, 9 target classes, 5000 Square queries)
come from the reference, not from a copy. PGD (Madry et al. 2018), CW-loss PGD (Carlini & Wagner 2017's margin
loss, as in TRADES' evaluation) and FGSM (Goodfellow et al. 2015) use hvdat's own pure `pgd()`.

All stages take and return images in [0,1]; the model holds its normalisation and is in eval mode.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .attacks.pgd import pgd
from .errors import UsageError
from .registry import Registry

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
class Stage:
    name: str
    norms: Tuple[str, ...]
    white_box: bool
    reference: Callable[[str, str], StageSettings]  # (version, norm) -> the reference's settings
    run: Callable  # (runner, stage name, x, y, generator) -> x_adv
    doc: str


STAGES: Registry[Stage] = Registry("attack stage")


def _aa(version: str, norm: str):
    """The reference AutoAttack, configured for `version`; only its attack objects' settings are read here."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(torch.nn.Identity(), eps=1.0, norm=_AA_NORM_NAME[norm], version=version, seed=0)
    aa.logger.setLevel(logging.WARNING)
    return aa


def _reference_apgd(version: str, norm: str) -> StageSettings:
    apgd = _aa(version, norm).apgd
    return StageSettings(apgd.n_iter, apgd.n_restarts)


def _reference_apgd_t(version: str, norm: str) -> StageSettings:
    aa = _aa(version, norm)
    return StageSettings(aa.apgd_targeted.n_iter, aa.apgd_targeted.n_restarts, aa.apgd_targeted.n_target_classes)


def _reference_fab(version: str, norm: str) -> StageSettings:
    fab = _aa(version, norm).fab
    return StageSettings(fab.n_iter, fab.n_restarts)


def _reference_fab_t(version: str, norm: str) -> StageSettings:
    fab = _aa(version, norm).fab
    return StageSettings(fab.n_iter, 1, fab.n_target_classes)  # run_standard_evaluation forces 1 restart


def _reference_square(version: str, norm: str) -> StageSettings:
    square = _aa(version, norm).square
    return StageSettings(square.n_queries, square.n_restarts)


def _fixed(steps: int, restarts: int = 1):
    return lambda version, norm: StageSettings(steps, restarts)


@dataclass(frozen=True)
class EvalAttack:
    name: str
    stages: Callable[[str, str], Tuple[str, ...]]  # (version, norm) -> stage names, in cascade order
    doc: str

    def norms(self, version: str = "standard") -> Tuple[str, ...]:
        names = self.stages(version, "linf")
        return tuple(n for n in AA_NORMS if all(n in STAGES.get(s).norms for s in names))


def _autoattack_stages(version: str, norm: str) -> Tuple[str, ...]:
    return tuple(_aa(version, norm).attacks_to_run)


# --- the plan: stages and their settings, with every departure from the reference spelled out ---------------------
@dataclass(frozen=True)
class Plan:
    attack: str
    version: str
    norm: str
    stages: Tuple[str, ...]
    settings: Dict[str, StageSettings]
    departures: Tuple[str, ...]  # every way this run differs from the reference settings

    def to_dict(self) -> Dict:
        return {"attack": self.attack, "version": self.version, "norm": self.norm, "stages": list(self.stages),
                "settings": {k: dataclasses.asdict(v) for k, v in self.settings.items()},
                "departures": list(self.departures)}

    @classmethod
    def from_dict(cls, d: Dict) -> "Plan":
        return cls(d["attack"], d["version"], d["norm"], tuple(d["stages"]),
                   {k: StageSettings(**v) for k, v in d["settings"].items()}, tuple(d["departures"]))


def make_plan(attack: str, version: str, norm: str, num_classes: int, steps: Optional[int] = None,
              restarts: Optional[int] = None) -> Plan:
    """Resolve the stages and settings; raise UsageError for an unsupported norm or an impossible setting."""
    spec = EVAL_ATTACKS.get(attack)
    if version not in ("standard", "plus", "rand"):
        raise UsageError(f"unknown --version {version!r}", "choose from: standard, plus, rand")
    if norm not in AA_NORMS:
        raise UsageError(f"unknown --norm {norm!r}", f"choose from: {', '.join(AA_NORMS)}")
    if attack != "autoattack" and version != "standard":
        raise UsageError(f"--version {version} applies to --attack autoattack only")
    stages = spec.stages(version, norm)
    unsupported = [s for s in stages if norm not in STAGES.get(s).norms]
    if unsupported:
        allowed = spec.norms(version)
        raise UsageError(f"attack {attack!r} does not support norm {norm!r}", f"use --norm {' or '.join(allowed)}")
    for value, name in ((steps, "--steps"), (restarts, "--restarts")):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    settings, departures = {}, []
    for name in stages:
        ref = STAGES.get(name).reference(version, norm)
        new = ref
        # --steps sets iterations of gradient stages; for AutoAttack it leaves Square's query budget alone
        if steps is not None and (name != "square" or attack == "square"):
            new = dataclasses.replace(new, steps=steps)
        if restarts is not None:
            new = dataclasses.replace(new, restarts=restarts)
        if new.targets is not None and new.targets > num_classes - 1:
            new = dataclasses.replace(new, targets=num_classes - 1)
            departures.append(f"{name}: {num_classes - 1} target classes instead of {ref.targets} "
                              f"(the dataset has only {num_classes} classes)")
        if new.targets is not None and new.targets < 1:
            raise UsageError(f"{name} needs at least 2 classes; the model has {num_classes}")
        for field in ("steps", "restarts"):
            if getattr(new, field) != getattr(ref, field):
                word = "queries" if name == "square" and field == "steps" else field
                departures.append(f"{name}: {getattr(new, field)} {word} instead of the reference "
                                  f"{getattr(ref, field)}")
        settings[name] = new
    return Plan(attack, version, norm, stages, settings, tuple(departures))


# --- running the stages ------------------------------------------------------------------------------------------
def cw_margin_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner's margin, summed: max_{j != y} z_j - z_y (positive once misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - true).sum()


def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


class StageRunner:
    """Runs the stages of one plan at one eps. The AutoAttack objects are built once and reused per batch."""

    def __init__(self, model: torch.nn.Module, plan: Plan, eps: float, seed: int, device: torch.device):
        self.model, self.plan, self.eps, self.seed, self.device = model, plan, eps, seed, device
        self._aa = None
        self.curve: Dict[str, List[int]] = {}  # PGD-type stages: correct predictions at each iterate, summed

    def run(self, stage: str, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return STAGES.get(stage).run(self, stage, x, y, generator)

    # AutoAttack: the same calls, in the same order, as AutoAttack.run_standard_evaluation makes them
    def aa(self):
        if self._aa is None:
            from pyautoattack import AutoAttack

            aa = AutoAttack(self.model, eps=self.eps, norm=_AA_NORM_NAME[self.plan.norm],
                            version=self.plan.version, seed=self.seed, device=self.device)
            aa.logger.setLevel(logging.WARNING)
            for name, s in self.plan.settings.items():
                _configure(aa, name, s)
            self._aa = aa
        return self._aa


def _set_apgd_iters(apgd, n_iter: int) -> None:
    """APGD derives its checkpoints from n_iter in __init__; redo that for a changed n_iter."""
    apgd.n_iter, apgd.n_iter_orig = n_iter, n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


def _configure(aa, name: str, s: StageSettings) -> None:
    if name in ("apgd-ce", "apgd-dlr"):
        if aa.apgd.n_iter != s.steps:
            _set_apgd_iters(aa.apgd, s.steps)
        aa.apgd.n_restarts = s.restarts
    elif name == "apgd-t":
        if aa.apgd_targeted.n_iter != s.steps:
            _set_apgd_iters(aa.apgd_targeted, s.steps)
        aa.apgd_targeted.n_restarts, aa.apgd_targeted.n_target_classes = s.restarts, s.targets
    elif name in ("fab", "fab-t"):
        aa.fab.n_iter = s.steps
        if s.targets is not None:
            aa.fab.n_target_classes = s.targets
    elif name == "square":
        aa.square.n_queries, aa.square.n_restarts = s.steps, s.restarts


def _run_reference(attack: str, **fixed):
    """Run one reference attack object of the AutoAttack (`apgd`, `apgd_targeted`, `fab`, `square`), after setting
    what this stage fixes on it (e.g. APGD's loss), its restarts and the seed, as run_standard_evaluation does.
    apgd-ce/apgd-dlr and fab/fab-t share one object, so every stage sets its own settings again."""

    def run(r: StageRunner, stage, x, y, generator):
        runner = getattr(r.aa(), attack)
        for name, value in fixed.items():
            setattr(runner, name, value)
        runner.n_restarts = r.plan.settings[stage].restarts
        runner.seed = r.seed
        return runner.perturb(x, y)

    return run


def _pgd_like(loss_fn, alpha_of: Callable[[float, int], float], random_start: bool):
    def run(r: StageRunner, stage, x, y, generator):
        s = r.plan.settings[stage]
        best = x.clone()
        broken = torch.zeros(len(y), dtype=torch.bool, device=x.device)
        for restart in range(s.restarts):
            correct_per_iterate: List[int] = []

            def tracked(logits, labels):
                correct_per_iterate.append(int((logits.argmax(1) == labels).sum()))
                return loss_fn(logits, labels)

            adv = pgd(r.model, x, y, eps=r.eps, alpha=alpha_of(r.eps, s.steps), steps=s.steps, norm=r.plan.norm,
                      random_start=random_start, generator=generator, loss_fn=tracked)
            with torch.no_grad():
                wrong = r.model(adv).argmax(1) != y
            correct_per_iterate.append(int((~wrong).sum()))
            if restart == 0:
                total = r.curve.setdefault(stage, [0] * len(correct_per_iterate))
                r.curve[stage] = [a + b for a, b in zip(total, correct_per_iterate)]
            new = wrong & ~broken
            best[new], broken = adv[new], broken | wrong
            if bool(broken.all()):
                break
        return best

    return run


# --- the registries ----------------------------------------------------------------------------------------------
_FGSM = _pgd_like(_ce_sum, lambda eps, steps: eps, random_start=False)
_PGD = _pgd_like(_ce_sum, lambda eps, steps: 2.5 * eps / steps, random_start=True)
_CW = _pgd_like(cw_margin_sum, lambda eps, steps: 2.5 * eps / steps, random_start=True)

for _stage in (
    Stage("fgsm", PGD_NORMS, True, _fixed(1), _FGSM, "FGSM: one step of size eps from x"),
    Stage("pgd", PGD_NORMS, True, _fixed(20), _PGD, "PGD-20 on cross-entropy, step 2.5*eps/steps, random start"),
    Stage("cw", PGD_NORMS, True, _fixed(30), _CW, "PGD-30 on the CW margin loss max_{j!=y} z_j - z_y"),
    Stage("apgd-ce", AA_NORMS, True, _reference_apgd, _run_reference("apgd", loss="ce"),
          "APGD on cross-entropy (AutoAttack)"),
    Stage("apgd-dlr", AA_NORMS, True, _reference_apgd, _run_reference("apgd", loss="dlr"),
          "APGD on the DLR loss (AutoAttack plus)"),
    Stage("apgd-t", AA_NORMS, True, _reference_apgd_t, _run_reference("apgd_targeted"),
          "targeted APGD-DLR (AutoAttack)"),
    Stage("fab", AA_NORMS, True, _reference_fab, _run_reference("fab", targeted=False),
          "untargeted FAB (AutoAttack plus)"),
    Stage("fab-t", AA_NORMS, True, _reference_fab_t, _run_reference("fab", targeted=True), "targeted FAB (AutoAttack)"),
    Stage("square", AA_NORMS, False, _reference_square, _run_reference("square"), "Square, black-box (AutoAttack)"),
):
    STAGES.add(_stage.name, _stage)

EVAL_ATTACKS: Registry[EvalAttack] = Registry("eval attack")
EVAL_ATTACKS.add("clean", EvalAttack("clean", lambda v, n: (), "clean accuracy only"))
for _name in ("fgsm", "pgd", "cw", "apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab"):
    EVAL_ATTACKS.add(_name, EvalAttack(_name, lambda v, n, _s=_name: (_s,), STAGES.get(_name).doc))
EVAL_ATTACKS.add("autoattack", EvalAttack(
    "autoattack", _autoattack_stages,
    "AutoAttack (Croce & Hein 2020): standard = APGD-CE, APGD-T, FAB-T, Square on still-robust points"))
