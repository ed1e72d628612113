"""The evaluation plan: which attack (`hvdat eval --attack NAME`, one registry), its stages in cascade order, their
settings, and every departure from the reference settings spelled out. Resolved once by `hvdat eval` and frozen
into the evaluation's config; the workers read it from there."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from ..errors import UsageError, require_at_least
from ..registry import Registry
from .stages import AA_NORMS, STAGES, StageSettings, reference_autoattack


@dataclass(frozen=True)
class EvalAttack:
    name: str
    stages: Callable[[str, str], Tuple[str, ...]]  # (version, norm) -> stage names, in cascade order
    doc: str

    def norms(self, version: str = "standard") -> Tuple[str, ...]:
        names = self.stages(version, "linf")
        return tuple(n for n in AA_NORMS if all(n in STAGES.get(s).norms for s in names))


def _autoattack_stages(version: str, norm: str) -> Tuple[str, ...]:
    return tuple(reference_autoattack(version, norm).attacks_to_run)


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
        return {
            "attack": self.attack,
            "version": self.version,
            "norm": self.norm,
            "stages": list(self.stages),
            "settings": {k: dataclasses.asdict(v) for k, v in self.settings.items()},
            "departures": list(self.departures),
        }

    def cost(self, stage: str) -> float:
        """A stage's work per example it attacks, in gradient steps (steps x restarts x target classes; Square's
        queries are forward passes only, a third of one): the progress bar's estimate of what is left."""
        s = self.settings[stage]
        steps = s.steps * s.restarts * (s.targets or 1)
        return steps if STAGES.get(stage).white_box else steps / 3

    @classmethod
    def from_dict(cls, d: Dict) -> Plan:
        return cls(
            d["attack"],
            d["version"],
            d["norm"],
            tuple(d["stages"]),
            {k: StageSettings(**v) for k, v in d["settings"].items()},
            tuple(d["departures"]),
        )


def make_plan(
    attack: str, version: str, norm: str, num_classes: int, steps: Optional[int] = None, restarts: Optional[int] = None
) -> Plan:
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
        require_at_least(name, value)
    settings, departures = {}, []
    for name in stages:
        ref = STAGES.get(name).reference_settings(version, norm)
        new = ref
        # --steps sets iterations of gradient stages; for AutoAttack it leaves Square's query budget alone
        if steps is not None and (name != "square" or attack == "square"):
            new = dataclasses.replace(new, steps=steps)
        if restarts is not None:
            new = dataclasses.replace(new, restarts=restarts)
        if new.targets is not None and new.targets > num_classes - 1:
            new = dataclasses.replace(new, targets=num_classes - 1)
            departures.append(
                f"{name}: {num_classes - 1} target classes instead of {ref.targets} "
                f"(the dataset has only {num_classes} classes)"
            )
        if new.targets is not None and new.targets < 1:
            raise UsageError(f"{name} needs at least 2 classes; the model has {num_classes}")
        for field in ("steps", "restarts"):
            if getattr(new, field) != getattr(ref, field):
                word = "queries" if name == "square" and field == "steps" else field
                departures.append(
                    f"{name}: {getattr(new, field)} {word} instead of the reference {getattr(ref, field)}"
                )
        settings[name] = new
    return Plan(attack, version, norm, stages, settings, tuple(departures))


EVAL_ATTACKS: Registry[EvalAttack] = Registry("eval attack")
EVAL_ATTACKS.add("clean", EvalAttack("clean", lambda v, n: (), "clean accuracy only"))
for _name in ("fgsm", "pgd", "cw", "apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab"):
    EVAL_ATTACKS.add(_name, EvalAttack(_name, lambda v, n, _s=_name: (_s,), STAGES.get(_name).doc))
EVAL_ATTACKS.add(
    "autoattack",
    EvalAttack(
        "autoattack",
        _autoattack_stages,
        "AutoAttack (Croce & Hein 2020): standard = APGD-CE, APGD-T, FAB-T, Square on still-robust points",
    ),
)
