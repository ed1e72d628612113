"""Training attacks, one registry: `hvdat train --attack NAME`.

Each entry pairs an inner attack with the outer objective it feeds, its default step size and its norms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from ..registry import Registry
from .objectives import AttackParams, adversarial_ce, deat_replay, free_replay, natural, trades
from .pgd import madry_alpha, pgd, project, random_init


@dataclass(frozen=True)
class AttackSpec:
    name: str
    objective: Callable
    default_alpha: Callable[[float, int], float]  # (eps, steps) -> alpha
    norms: Tuple[str, ...]
    fixed_steps: Optional[int]  # FGSM variants always take one step
    random_start: bool
    doc: str
    # the weights step at every replay of a minibatch (Free-AT, DEAT): the trainer runs the replays; `objective`
    # is the loss of the first one
    replayed: bool = False
    max_replays: int = 0  # DEAT variants: the most replays per minibatch (--deat-max-k 0)

    def params(
        self,
        eps: float,
        alpha: Optional[float],
        steps: int,
        norm: str,
        random_start: bool = True,
        clean_weight: float = 0.0,
        trades_beta: float = 6.0,
    ) -> AttackParams:
        steps = self.fixed_steps or steps
        return AttackParams(
            eps=eps,
            alpha=alpha if alpha is not None else self.default_alpha(eps, steps),
            steps=steps,
            norm=norm,
            random_start=random_start and self.random_start,
            clean_weight=clean_weight,
            trades_beta=trades_beta,
        )


ATTACKS: Registry[AttackSpec] = Registry("attack")


for _spec in (
    AttackSpec("none", natural, lambda eps, steps: 0.0, ("linf", "l2"), 0, False, "natural training on clean images"),
    AttackSpec(
        "fgsm",
        adversarial_ce,
        lambda eps, steps: eps,
        ("linf", "l2"),
        1,
        False,
        "FGSM (Goodfellow et al. 2015): one step of size eps from x; prone to catastrophic overfitting",
    ),
    AttackSpec(
        "fgsm-rs",
        adversarial_ce,
        lambda eps, steps: 1.25 * eps,
        ("linf", "l2"),
        1,
        True,
        "FGSM-RS (Wong et al. 2020): uniform start in the eps-ball, one step of 1.25*eps, projected",
    ),
    AttackSpec(
        "pgd",
        adversarial_ce,
        madry_alpha,
        ("linf", "l2"),
        None,
        True,
        "PGD-AT (Madry et al. 2018): k steps of alpha (default 2.5*eps/k) from a random start",
    ),
    AttackSpec(
        "trades",
        trades,
        madry_alpha,
        ("linf", "l2"),
        None,
        False,
        "TRADES (Zhang et al. 2019): CE(clean) + beta*KL(adv||clean), k-step KL attack",
    ),
    AttackSpec(
        "free",
        free_replay,
        lambda eps, steps: eps,
        ("linf",),
        1,
        False,
        "Free-AT (Shafahi et al. 2019): each minibatch replayed --replays times, every replay one weight step and "
        "one eps step of a perturbation carried across minibatches",
        replayed=True,
    ),
    AttackSpec(
        "deat",
        deat_replay,
        lambda eps, steps: 1.5 * eps,
        ("linf",),
        1,
        True,
        "M+DEAT (Wang & Ruan): K replays per minibatch from a uniform start, each a weight step and an alpha "
        "step (default 1.5*eps); K grows when the epoch's input-gradient magnitude rises (up to 8)",
        replayed=True,
        max_replays=8,
    ),
    AttackSpec(
        "deat-d",
        deat_replay,
        lambda eps, steps: 1.25 * eps,
        ("linf",),
        1,
        True,
        "DEAT-d: as deat, K = epoch // --deat-delay + 1 (up to 5)",
        replayed=True,
        max_replays=5,
    ),
    AttackSpec(
        "deat-p",
        deat_replay,
        lambda eps, steps: 1.25 * eps,
        ("linf",),
        1,
        True,
        "DEAT-p: as deat, K += 1 after an epoch whose train accuracy exceeds --deat-acc (up to 4)",
        replayed=True,
        max_replays=4,
    ),
):
    ATTACKS.add(_spec.name, _spec)

__all__ = ["ATTACKS", "AttackSpec", "AttackParams", "madry_alpha", "pgd", "project", "random_init"]
