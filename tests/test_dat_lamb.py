"""`--optimizer dat-lamb`: the LAMB of DAT's code, checked against steps computed by hand from its formula."""

from __future__ import annotations

import math

import pytest
import torch

from hvdat.optim import DatLamb, Lamb, build_optimizer


def dat_lamb_by_hand(w, grads, lr, weight_decay, betas=(0.9, 0.999), eps=1e-6):
    """DAT's lamb.py on plain Python lists: no bias correction, weight decay in the step, trust ratio
    min(||w||, 10) / ||step|| (1 if either is 0)."""
    w, m, v = list(w), [0.0] * len(w), [0.0] * len(w)
    for g in grads:
        m = [betas[0] * a + (1 - betas[0]) * b for a, b in zip(m, g)]
        v = [betas[1] * a + (1 - betas[1]) * b * b for a, b in zip(v, g)]
        step = [a / (math.sqrt(b) + eps) + weight_decay * p for a, b, p in zip(m, v, w)]
        w_norm = min(math.sqrt(sum(p * p for p in w)), 10.0)
        s_norm = math.sqrt(sum(s * s for s in step))
        ratio = w_norm / s_norm if w_norm > 0 and s_norm > 0 else 1.0
        w = [p - lr * ratio * s for p, s in zip(w, step)]
    return w


def test_first_step_by_hand():
    """w = [3, 4], g = [1, -2], lr 0.1, no decay: m = 0.1 g and v = 0.001 g^2, so the step is sqrt(10) sign(g)
    (eps aside; Adam with bias correction would give sign(g)); the trust ratio ||w|| / ||step|| = 5 / sqrt(20)
    makes its norm ||w|| = 5: w - 0.1 * 5 * sign(g) / sqrt(2)."""
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = DatLamb([w], lr=0.1)
    w.grad = torch.tensor([1.0, -2.0])
    opt.step()
    assert w.detach().tolist() == pytest.approx([3 - 0.5 / math.sqrt(2), 4 + 0.5 / math.sqrt(2)], abs=1e-5)


@pytest.mark.parametrize(
    "start",
    [
        [3.0, 4.0, -1.0],  # ||w|| < 10
        [30.0, -40.0, 10.0],  # ||w|| > 10: ||w|| clamped to 10 (not the ratio)
        [0.0, 0.0, 0.0],  # ||w|| = 0: ratio 1
    ],
)
def test_three_steps_match_the_hand_computed_rule_on_every_tensor(start):
    grads = [[0.5, -1.0, 2.0], [-0.3, 0.2, 1.0], [1.0, 1.0, -4.0]]
    weight = torch.nn.Parameter(torch.tensor([start, start]))  # a weight matrix
    bias = torch.nn.Parameter(torch.tensor(start))  # 1-D: DAT adapts and decays it as well
    lamb_bias = torch.nn.Parameter(torch.tensor(start))
    opt = DatLamb([weight, bias], lr=0.05, weight_decay=1e-2)
    lamb = Lamb([{"params": [lamb_bias], "weight_decay": 1e-2, "adapt": True}], lr=0.05)  # hvdat's other LAMB
    for g in grads:
        weight.grad, bias.grad, lamb_bias.grad = torch.tensor([g, g]), torch.tensor(g), torch.tensor(g)
        opt.step()
        lamb.step()
    by_hand = dat_lamb_by_hand(start, grads, 0.05, 1e-2)
    assert bias.detach().tolist() == pytest.approx(by_hand, rel=1e-5, abs=1e-6)
    assert lamb_bias.detach().tolist() != pytest.approx(by_hand, rel=1e-4, abs=1e-4)  # the check tells them apart
    by_hand = dat_lamb_by_hand(start + start, [g + g for g in grads], 0.05, 1e-2)  # the matrix: its own ||w||
    assert weight.detach().view(-1).tolist() == pytest.approx(by_hand, rel=1e-5, abs=1e-6)


def test_registry_builds_it_with_weight_decay_on_every_parameter():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer("dat-lamb", model, 0.01, 0.9, 1e-4, False)
    assert isinstance(opt, DatLamb)
    (group,) = opt.param_groups
    assert group["weight_decay"] == 1e-4 and len(group["params"]) == len(list(model.parameters()))
