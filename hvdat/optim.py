"""Optimizers, one registry: SGD, LAMB, DAT's own LAMB and LARS.

LAMB and LARS rescale each layer's update by a trust ratio ||w|| / ||update||. As in You et al. (2020), BN
parameters and biases get neither weight decay nor the trust ratio: `param_groups` puts them in a group with
`weight_decay=0, adapt=False`. `dat-lamb` is the LAMB of DAT's code instead (see `DatLamb`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Tuple

import torch
from torch import nn

from .registry import Registry


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    build: Callable[[List[Dict], float, float, float, bool], torch.optim.Optimizer]  # groups, lr, mom, wd, nest
    doc: str


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict]:
    """Split parameters: weights of conv/linear layers get decay and adaptation; biases and norms get neither."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "adapt": False},
    ]


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning"): Adam moments with bias correction,
    decoupled weight decay, and a per-layer trust ratio ||w|| / ||adam_update + wd*w||, clipped to [0, 10]."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        max_trust: float = 10.0,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adapt=True, max_trust=max_trust)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                m, v = _adam_moments(state, p, beta1, beta2)
                t = float(state["step"])
                update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                if group["adapt"]:  # a tensor multiply: no host sync per parameter on a GPU
                    update.mul_(_trust_ratio(p, update, group["max_trust"]))
                p.add_(update, alpha=-group["lr"])
        return loss


class Lars(torch.optim.Optimizer):
    """LARS (You et al. 2017): SGD with momentum where each layer's step is scaled by
    trust_coef * ||w|| / (||g|| + wd*||w||)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coef: float = 0.001,
        nesterov: bool = False,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coef=trust_coef, adapt=True, nesterov=nesterov
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["adapt"]:
                    w_norm, g_norm = p.norm(), grad.norm()
                    denom = g_norm + group["weight_decay"] * w_norm
                    local = torch.where(
                        (w_norm > 0) & (denom > 0), group["trust_coef"] * w_norm / denom, torch.ones_like(w_norm)
                    )
                    grad = (grad + group["weight_decay"] * p) * local
                elif group["weight_decay"]:
                    grad = grad + group["weight_decay"] * p
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                buf = state["momentum_buffer"]
                step = grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.add_(step, alpha=-group["lr"])
        return loss


class DatLamb(torch.optim.Optimizer):
    """The LAMB of DAT's code (dat-2022/dat lamb.py, itself cybertronai/pytorch-lamb), which differs from `Lamb`:

    * no bias correction: step = m / (sqrt(v) + eps), with m, v Adam's moments as they are;
    * weight decay added to that step, and the trust ratio min(||w||, 10) / ||step|| applied, on every tensor
      (biases and BN parameters too): ||w|| is clamped to [0, 10], not the ratio; the ratio is 1 where ||w|| or
      ||step|| is 0;
    * w <- w - lr * ratio * step.

    DAT trains it with weight_decay 1e-4, betas (0.9, 0.999), eps 1e-6 (its defaults)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        max_weight_norm: float = 10.0,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_weight_norm=max_weight_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m, v = _adam_moments(self.state[p], p, beta1, beta2)
                update = m / v.sqrt().add_(group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm().clamp(0, group["max_weight_norm"]), update.norm()
                ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.sub_(update.mul_(ratio), alpha=group["lr"])  # a tensor multiply: no host sync on a GPU
        return loss


def _adam_moments(state: dict, p: torch.Tensor, beta1: float, beta2: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Adam's running first and second moments of p.grad, updated in place (created at the first step)."""
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
    state["step"] += 1
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
    return m, v


def _trust_ratio(p: torch.Tensor, update: torch.Tensor, max_trust: float) -> torch.Tensor:
    w_norm, u_norm = p.norm(), update.norm()
    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
    return ratio.clamp(max=max_trust)


def _sgd(groups, lr, momentum, weight_decay, nesterov):
    return torch.optim.SGD(
        [{k: v for k, v in g.items() if k != "adapt"} for g in groups],
        lr=lr,
        momentum=momentum,
        nesterov=nesterov and momentum > 0,
    )


OPTIMIZERS.add("sgd", OptimizerSpec("sgd", _sgd, "SGD with momentum (and --nesterov)"))
OPTIMIZERS.add(
    "lamb",
    OptimizerSpec(
        "lamb", lambda g, lr, mom, wd, nest: Lamb(g, lr=lr), "LAMB: DAT's layer-wise adaptive LR (LALR) on Adam"
    ),
)
OPTIMIZERS.add(
    "dat-lamb",
    OptimizerSpec(
        "dat-lamb",
        lambda g, lr, mom, wd, nest: DatLamb(
            [{"params": [p for group in g for p in group["params"]]}], lr=lr, weight_decay=wd
        ),
        "DAT's own LAMB: no bias correction, weight decay and the trust ratio on every tensor, ||w|| clamped to 10",
    ),
)
OPTIMIZERS.add(
    "lars",
    OptimizerSpec(
        "lars",
        lambda g, lr, mom, wd, nest: Lars(g, lr=lr, momentum=mom, nesterov=nest),
        "LARS: layer-wise adaptive rate scaling on SGD with momentum",
    ),
)


def build_optimizer(
    name: str, model: nn.Module, lr: float, momentum: float, weight_decay: float, nesterov: bool
) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(name).build(param_groups(model, weight_decay), lr, momentum, weight_decay, nesterov)
