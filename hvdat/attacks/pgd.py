"""Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks"), L-inf and L2, in [0,1] pixel space. With one step it is FGSM (Goodfellow et al. 2015), and with one
step from a uniform random start of size 1.25*eps it is FGSM-RS (Wong et al. 2020, "Fast is better than free").

Input gradients come from `torch.autograd.grad(loss, x)`, so parameter gradients (and Horovod's allreduce
hooks) are never touched. Randomness comes only from the `generator` passed in. The caller sets the model's mode.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

# 10 more bits below fp16's smallest normal; CE's logit gradients (at most 1) stay far from fp16's overflow
FP16_LOSS_SCALE = 1024.0
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> scalar to maximise


def madry_alpha(eps: float, steps: int) -> float:
    """The step size of Madry et al.'s PGD: 2.5 * eps / steps."""
    return 2.5 * eps / steps


def cross_entropy_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def random_init(x: torch.Tensor, eps: float, norm: str, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A uniform draw from the eps-ball around x (L-inf: per coordinate; L2: uniform in the ball's volume)."""
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / _per_example_norm(direction)
    d = x[0].numel()
    radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype) ** (
        1.0 / d
    )
    return direction * radius * eps


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _per_example_norm(delta)).clamp(max=1.0)


def attack_loss_scale(device: torch.device) -> float:
    """The factor the attack's loss is multiplied by before its input gradient is taken: FP16_LOSS_SCALE under an
    fp16 autocast on `device` (`--amp fp16`), else 1. Without it the input gradients of confidently classified
    examples underflow in fp16, sign() gives 0 and PGD stays at its start; the sign step and the L2-normalised step
    do not depend on the scale."""
    if torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.float16:
        return FP16_LOSS_SCALE
    return 1.0


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    generator: Optional[torch.Generator] = None,
    loss_fn: LossFn = cross_entropy_sum,
    init: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Return x_adv with ||x_adv - x|| <= eps (in `norm`) and x_adv in [0,1], maximising `loss_fn`.

    `y` is passed to `loss_fn` untouched (labels for CE; clean probabilities for TRADES' KL). `init`, when
    given, is the starting perturbation and replaces the random start.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"pgd supports linf and l2, not {norm!r}")
    x = x.detach()
    if init is not None:
        delta = project(init.detach(), eps, norm)
    else:
        delta = random_init(x, eps, norm, generator) if random_start else torch.zeros_like(x)
    delta = (x + delta).clamp(0, 1) - x
    scale = attack_loss_scale(x.device)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss * scale if scale != 1 else loss, delta)
        with torch.no_grad():
            if scale != 1:  # an fp16 overflow moves nothing rather than making delta NaN
                grad = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
            if norm == "linf":
                step = alpha * grad.sign()
            else:
                step = alpha * grad / _per_example_norm(grad)
            delta = project(delta + step, eps, norm)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()
