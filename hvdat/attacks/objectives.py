"""Training objectives: what the outer minimisation minimises, given the inner attack.

- CE on adversarial examples (Madry's PGD-AT, FGSM, FGSM-RS), optionally mixed with clean CE as in DAT:
  `clean_weight * CE(clean) + CE(adv)`.
- TRADES (Zhang et al. 2019): CE(clean) + beta * KL(p(adv) || p(clean)), the attack maximising the KL term.

Each objective is `(model, x, y, params, generator, attack_mode) -> (loss, logits used for train accuracy)`.
`attack_mode` is a context-manager factory that fixes BN's behaviour while the inner attack runs.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F

from .pgd import pgd
from .replay import replay_loss, uniform_start

ModeFactory = Callable[[], ContextManager]


@dataclass(frozen=True)
class AttackParams:
    eps: float
    alpha: float
    steps: int
    norm: str = "linf"
    random_start: bool = True
    clean_weight: float = 0.0
    trades_beta: float = 6.0


def natural(model, x, y, params: AttackParams, generator, attack_mode: Optional[ModeFactory] = None):
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def adversarial_ce(model, x, y, params: AttackParams, generator, attack_mode: Optional[ModeFactory] = None):
    with (attack_mode or nullcontext)():
        x_adv = pgd(
            model,
            x,
            y,
            eps=params.eps,
            alpha=params.alpha,
            steps=params.steps,
            norm=params.norm,
            random_start=params.random_start,
            generator=generator,
        )
    if params.clean_weight > 0:
        clean, adv = model(torch.cat([x, x_adv])).split(len(x))
        return params.clean_weight * F.cross_entropy(clean, y) + F.cross_entropy(adv, y), adv
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits


def free_replay(model, x, y, params: AttackParams, generator, attack_mode: Optional[ModeFactory] = None):
    """One Free-AT replay of a fresh run (its carried perturbation starts at zero); the trainer replays it."""
    return replay_loss(model, x, torch.zeros_like(x), y)


def deat_replay(model, x, y, params: AttackParams, generator, attack_mode: Optional[ModeFactory] = None):
    """DEAT's first replay of a minibatch: CE at a uniform start in the eps-ball; the trainer replays it."""
    return replay_loss(model, x, uniform_start(x, params.eps, generator), y)


def _kl_sum(logits: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")


def trades(model, x, y, params: AttackParams, generator, attack_mode: Optional[ModeFactory] = None):
    """The attack starts from a small Gaussian (std 0.001, as in the reference code) and maximises the KL."""
    with (attack_mode or nullcontext)():
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        init = 0.001 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = pgd(
            model,
            x,
            p_clean,
            eps=params.eps,
            alpha=params.alpha,
            steps=params.steps,
            norm=params.norm,
            generator=generator,
            loss_fn=_kl_sum,
            init=init,
        )
    clean, adv = model(torch.cat([x, x_adv])).split(len(x))
    robust = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1), reduction="batchmean")
    return F.cross_entropy(clean, y) + params.trades_beta * robust, adv
