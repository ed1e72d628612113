"""Optimizers and schedules: LAMB/LARS layer-wise adaptation, exclusions, LR scaling, schedule shapes."""

import math

import pytest
import torch

from hvdat.models import build_model
from hvdat.optim import OPTIMIZERS, Lamb, build_optimizer, param_groups
from hvdat.schedule import SCHEDULES, lr_at, scale_factor


def small_model():
    torch.manual_seed(0)
    return build_model("small-cnn", 10, (1, 16, 16), (0.3,), (0.4,))


def test_param_groups_exclude_bn_and_bias_from_decay_and_adaptation():
    decay, no_decay = param_groups(small_model(), 5e-4)
    assert decay["weight_decay"] == 5e-4 and decay["adapt"]
    assert no_decay["weight_decay"] == 0 and not no_decay["adapt"]
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert len(no_decay["params"]) > 0


def test_lamb_applies_the_trust_ratio_per_layer():
    w = torch.nn.Parameter(torch.full((4, 4), 2.0))  # ||w|| = 8
    b = torch.nn.Parameter(torch.ones(4))
    opt = Lamb(
        [{"params": [w], "weight_decay": 0.0, "adapt": True}, {"params": [b], "weight_decay": 0.0, "adapt": False}],
        lr=0.1,
    )
    w.grad, b.grad = torch.full((4, 4), 3.0), torch.full((4,), 3.0)
    opt.step()
    # first Adam step with bias correction: update = g/|g| = 1 per element (eps aside), ||update|| = 4
    assert torch.allclose(w.detach(), torch.full((4, 4), 2.0 - 0.1 * (8 / 4)), atol=1e-5)
    assert torch.allclose(b.detach(), torch.full((4,), 1.0 - 0.1), atol=1e-5)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_reduces_a_simple_loss(name):
    model = small_model()
    lr = {"sgd": 0.05, "lamb": 0.01, "dat-lamb": 0.01, "lars": 1.0}[name]
    opt = build_optimizer(name, model, lr, 0.9, 5e-4, False)
    x, y = torch.rand(32, 1, 16, 16), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_optimizer_state_round_trips():
    model = small_model()
    opt = build_optimizer("lamb", model, 0.01, 0.9, 0.0, False)
    torch.nn.functional.cross_entropy(model(torch.rand(4, 1, 16, 16)), torch.tensor([1, 2, 3, 4])).backward()
    opt.step()
    clone = build_optimizer("lamb", small_model(), 0.01, 0.9, 0.0, False)
    clone.load_state_dict(opt.state_dict())
    assert clone.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_lr_scaling_with_global_batch():
    assert scale_factor(1024, 128, "linear") == 8
    assert scale_factor(1024, 256, "sqrt") == 2
    assert scale_factor(1024, 128, "none") == 1


def test_warmup_then_cosine():
    lrs = [lr_at(s, 10, 10, 1.0, "cosine", warmup_epochs=2) for s in range(100)]
    assert lrs[0] == pytest.approx(1 / 20) and lrs[19] == pytest.approx(1.0)
    assert lrs[20] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))


def test_multistep_and_onecycle_shapes():
    assert [lr_at(s, 10, 10, 1.0, "multistep", milestones=(0.5, 0.75)) for s in (0, 49, 50, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.01, 0.01]
    )
    peak = max(range(100), key=lambda s: lr_at(s, 10, 10, 1.0, "onecycle"))
    assert 35 <= peak <= 45 and lr_at(0, 10, 10, 1.0, "onecycle") == 0


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_stays_within_peak(name):
    values = [SCHEDULES.get(name)(p / 50, (0.5, 0.75)) for p in range(51)]
    assert all(0 <= v <= 1 + 1e-12 and not math.isnan(v) for v in values)
