"""The pure rules of Free-AT, DEAT and AccelAT on scripted sequences (no processes; milliseconds)."""

from __future__ import annotations

import re

import pytest
import torch

from hvdat.attacks import ATTACKS
from hvdat.attacks.replay import replay_update
from hvdat.schedule import AccelatCuts
from hvdat.train.deat_rule import DeatRule


def ks(rule: DeatRule, mgs, accs=None):
    """K of each epoch while the rule is fed the scripted per-epoch MG (and train accuracy)."""
    out = []
    for epoch, mg in enumerate(mgs):
        out.append(rule.k_for(epoch))
        rule.after_epoch(epoch, mg, accs[epoch] if accs else 0.0)
    return out


def test_mdeat_raises_k_when_the_gradient_magnitude_exceeds_the_last_threshold():
    # epoch 0 -> K 2; epoch 1 sets the threshold (3); 4 > 3 -> K 3 (threshold 4); 2 < 4; 6 > 4 -> K 4 = Kmax
    rule = DeatRule("deat", max_k=4, gamma=1.0)
    assert ks(rule, [5, 3, 4, 2, 6, 7, 8, 9]) == [1, 2, 2, 3, 3, 4, 4, 4]
    assert rule.threshold == 6  # not reset once K is at Kmax (the authors' `and nb_replay < max_iteration`)
    # gamma scales the threshold: 1.5 x 3 = 4.5 > 4, so epoch 2's MG no longer raises K
    assert ks(DeatRule("deat", max_k=8, gamma=1.5), [5, 3, 4, 5, 7]) == [1, 2, 2, 2, 3]


def test_mdeat_resumed_from_its_state_continues_the_same_sequence():
    mgs = [5, 3, 4, 2, 6, 7, 8, 9]
    whole = ks(DeatRule("deat", max_k=8), mgs)
    first = DeatRule("deat", max_k=8)
    head = ks(first, mgs[:3])
    resumed = DeatRule.from_state(first.state_dict())
    tail = []
    for e in range(3, 8):
        tail.append(resumed.k_for(e))
        resumed.after_epoch(e, mgs[e], 0.0)
    assert head + tail == whole


def test_deat_d_and_deat_p():
    assert ks(DeatRule("deat-d", max_k=5, delay=3), [0] * 16) == [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3 + [5] * 4
    accs = [0.3, 0.5, 0.2, 0.6, 0.9, 0.9, 0.9]
    assert ks(DeatRule("deat-p", max_k=4, accuracy=0.4), [0] * 7, accs) == [1, 1, 2, 2, 3, 4, 4]


def test_deat_defaults_follow_the_authors_scripts():
    eps = 8 / 255
    assert ATTACKS.get("deat").params(eps, None, 10, "linf").alpha == pytest.approx(12 / 255)
    assert ATTACKS.get("deat-d").params(eps, None, 10, "linf").alpha == pytest.approx(10 / 255)
    assert [ATTACKS.get(n).max_replays for n in ("deat", "deat-d", "deat-p")] == [8, 5, 4]
    assert ATTACKS.get("free").params(eps, None, 10, "linf").alpha == pytest.approx(eps)


def cuts(rule: AccelatCuts, accs):
    return [e for e, acc in enumerate(accs) if rule.after_epoch(acc)]


def test_accelat_cuts_when_the_mean_robust_accuracy_stalls():
    # means of the last 5: .1 .15 .2 .25 .3 .4 .48 .54 .58 .6 .6 ... gains fall below .005 at epoch 10; the count
    # since a cut restarts at 1 and must exceed 5, so the next cut comes 5 epochs later
    accs = [0.1, 0.2, 0.3, 0.4, 0.5] + [0.6] * 11
    rule = AccelatCuts()
    assert cuts(rule, accs) == [10, 15]
    assert rule.scale == pytest.approx(0.8**2)
    assert rule.apply(0.1) == pytest.approx(0.064)
    # still rising by >= 0.005 per mean: no cut
    assert cuts(AccelatCuts(), [0.01 * e for e in range(30)]) == []
    # stalled from the start: the first cut needs more than 5 means before it, and none since the start
    assert cuts(AccelatCuts(), [0.3] * 13) == [6, 11]


def test_accelat_floor_and_resume():
    rule = AccelatCuts(window=1, cooldown=0, min_gain=1.0, factor=0.1, min_lr=1e-6)
    assert cuts(rule, [0.5] * 8) == [2, 3, 4, 5, 6, 7]  # > 1 earlier mean, every epoch after (cooldown 0)
    assert rule.apply(0.1) == 1e-6  # 0.1 x 1e-6 is below the floor
    accs = [0.1, 0.2, 0.3, 0.4, 0.5] + [0.6] * 11
    first = AccelatCuts()
    head = cuts(first, accs[:8])
    resumed = AccelatCuts.from_state(first.state_dict())
    assert head + [8 + e for e in cuts(resumed, accs[8:])] == [10, 15]


def test_free_at_perturbation_stays_in_the_eps_ball_and_the_image_box():
    gen = torch.Generator().manual_seed(0)
    eps = 8 / 255
    buffer = torch.zeros(6, 1, 4, 4)
    for step in range(40):
        n = 6 if step % 3 else 4  # a short last batch moves only the buffer's first rows
        x = torch.rand(n, 1, 4, 4, generator=gen).round()  # pixels at 0 and 1: the box binds
        x[:, :, :2] = 0.5  # and some inside it: only the ball binds
        grad = torch.randn(n, 1, 4, 4, generator=gen)
        before = buffer.clone()
        buffer = replay_update(buffer, grad, x, eps, eps)
        assert buffer.shape == (6, 1, 4, 4)
        assert buffer.abs().max() <= eps + 1e-7
        assert (x + buffer[:n]).min() >= 0 and (x + buffer[:n]).max() <= 1
        assert torch.equal(buffer[n:], before[n:])
        inside = (x == 0.5) & ((before[:n] + eps * grad.sign()).abs() <= eps)
        assert torch.allclose(buffer[:n][inside], (before[:n] + eps * grad.sign())[inside])
    assert buffer[:, :, :2].abs().max() == pytest.approx(eps)  # it did move (to the ball's edge)


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"attack": "free", "norm": "l2", "eps": 0.5}, "does not support norm 'l2'"),
        ({"attack": "deat", "amp": "fp16"}, "--amp fp16"),
        ({"attack": "free", "replays": 0}, "--replays must be >= 1"),
        ({"schedule": "accelat", "eval_samples": 0}, "--eval-samples"),
        ({"schedule": "accelat", "accelat_factor": 1.5}, "--accelat-factor"),
        ({"attack": "free", "co_guard": True}, "--co-guard cannot switch to or from 'free'"),
        ({"co_guard": True, "co_guard_fallback": "deat"}, "--co-guard cannot switch to or from 'deat'"),
    ],
)
def test_method_settings_are_checked_up_front(settings, fragment):
    from hvdat.errors import UsageError
    from hvdat.train.config import TrainConfig

    with pytest.raises(UsageError, match=re.escape(fragment)):
        TrainConfig(**settings).validate()
