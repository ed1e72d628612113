"""Attack math, with no cluster: budgets, box constraints, step sizes, RNG hygiene, BN behaviour."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from hvdat.attacks import ATTACKS, pgd
from hvdat.attacks.attack_mode import attack_mode
from hvdat.attacks.objectives import AttackParams
from hvdat.data import load_splits
from hvdat.models import build_model

EPS = 8 / 255


@pytest.fixture(scope="module")
def model_and_batch():
    """A small CNN trained briefly on real digits, and 16 test digits it mostly gets right."""
    torch.manual_seed(0)
    splits = load_splits("digits", None)
    model = build_model("small-cnn", 10, splits.shape, splits.mean, splits.std)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, labels = splits.train.images.float() / 255, splits.train.labels
    for _ in range(60):
        index = torch.randint(0, len(labels), (64,))
        loss = F.cross_entropy(model(images[index]), labels[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, splits.test.images[:16].float() / 255, splits.test.labels[:16]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_box_and_raises_loss(model_and_batch, norm):
    model, x, y = model_and_batch
    eps = 0.1 if norm == "linf" else 1.0
    x_adv = pgd(
        model, x, y, eps=eps, alpha=2.5 * eps / 10, steps=10, norm=norm, generator=torch.Generator().manual_seed(1)
    )
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > 2 * F.cross_entropy(model(x), y)


def test_pgd_respects_box_at_the_edges(model_and_batch):
    model, _, y = model_and_batch
    x = torch.zeros(16, 1, 16, 16)
    x[:8] = 1.0  # saturated pixels cannot move outside [0,1]
    x_adv = pgd(model, x, y, eps=0.3, alpha=0.1, steps=5, generator=torch.Generator().manual_seed(0))
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_fgsm_rs_takes_the_documented_step():
    """Wong et al.: delta0 ~ U(-eps, eps), one step of 1.25*eps along sign(grad), projected to the ball."""
    spec = ATTACKS.get("fgsm-rs")
    params = spec.params(EPS, None, steps=10, norm="linf")
    assert params.alpha == pytest.approx(1.25 * EPS) and params.steps == 1 and params.random_start
    # A linear model: the input gradient of CE is known in closed form, so the step can be checked exactly.
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.rand(5, 3, 2, 2) * 0.5 + 0.25  # away from the box edges
    y = torch.tensor([0, 1, 2, 0, 1])
    x_adv = pgd(linear, x, y, eps=EPS, alpha=params.alpha, steps=1, generator=torch.Generator().manual_seed(7))
    delta0 = (torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1) * EPS
    xs = (x + delta0).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(linear(xs), y, reduction="sum"), xs)
    expected = x + (delta0 + 1.25 * EPS * grad.sign()).clamp(-EPS, EPS)
    assert torch.allclose(x_adv, expected, atol=1e-7)


def test_default_steps_and_alphas():
    assert ATTACKS.get("fgsm").params(EPS, None, 10, "linf").alpha == pytest.approx(EPS)
    assert not ATTACKS.get("fgsm").params(EPS, None, 10, "linf").random_start
    assert ATTACKS.get("pgd").params(EPS, None, 10, "linf").alpha == pytest.approx(2.5 * EPS / 10)
    assert ATTACKS.get("pgd").params(EPS, 0.01, 7, "linf").alpha == 0.01


def test_attacks_leave_global_rng_alone(model_and_batch):
    model, x, y = model_and_batch
    before = torch.get_rng_state()
    for name in ATTACKS.names():
        spec = ATTACKS.get(name)
        spec.objective(model, x, y, spec.params(EPS, None, 2, "linf"), torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_training_objective_gives_a_finite_differentiable_loss(model_and_batch, name):
    model, x, y = model_and_batch
    model.train()
    spec = ATTACKS.get(name)
    loss, logits = spec.objective(
        model,
        x,
        y,
        spec.params(EPS, None, 2, "linf", clean_weight=0.5),
        torch.Generator().manual_seed(0),
        attack_mode(model, "train"),
    )
    assert torch.isfinite(loss) and logits.shape == (16, 10)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    model.eval()


def test_bn_running_stats_frozen_during_attack_but_not_training(model_and_batch):
    _, x, y = model_and_batch
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, (1, 16, 16), (0.3,), (0.4,)).train()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    with attack_mode(model, "train")():
        pgd(model, x, y, eps=EPS, alpha=EPS / 4, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(before, bn.running_mean)
    assert model.training and bn.momentum == 0.1
    model(x)
    assert not torch.equal(before, bn.running_mean)


def test_eval_bn_mode_restores_training(model_and_batch):
    model = build_model("small-cnn", 10, (1, 16, 16), (0.3,), (0.4,)).train()
    with attack_mode(model, "eval")():
        assert not model.training
    assert model.training


def test_trades_adversarial_logits_come_from_the_ball(model_and_batch):
    model, x, y = model_and_batch
    spec = ATTACKS.get("trades")
    params = AttackParams(eps=EPS, alpha=EPS / 4, steps=3, norm="linf", trades_beta=6.0)
    loss, _ = spec.objective(model, x, y, params, torch.Generator().manual_seed(0))
    clean = F.cross_entropy(model(x), y)
    assert loss >= clean - 1e-5  # the KL term is non-negative


def _confident_model():
    """A classifier so sure of class 0 (1 - p ~ 1e-7) that the input gradient of its CE underflows in fp16."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        model[3].bias[0] = 18.0
    return model, torch.rand(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)


def test_an_fp16_autocast_attack_moves_confidently_classified_examples(monkeypatch):
    """--amp fp16 runs the inner attack under fp16 autocast: its loss is scaled, or PGD would stay at its start."""
    pgd_module = importlib.import_module("hvdat.attacks.pgd")  # the package's `pgd` is the function

    model, x, y = _confident_model()

    def moved() -> float:
        with torch.autocast("cpu", dtype=torch.float16):
            adv = pgd(model, x, y, eps=0.1, alpha=0.1, steps=1, random_start=False)
        return (adv != x).float().mean().item()

    assert moved() > 0.9
    monkeypatch.setattr(pgd_module, "FP16_LOSS_SCALE", 1.0)
    assert moved() == 0.0  # unscaled, every input gradient underflows: the premise of the test


def test_a_compiled_attack_computes_no_weight_gradients():
    """Under --compile the attack's backward is a joint graph; with the weights frozen by the attack mode it has one
    gradient output (the input's), not one per weight as well."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    backward_outputs = []

    def forward(graph, example_inputs):
        return make_boxed_func(graph.forward)

    def backward(graph, example_inputs):
        output = next(node for node in graph.graph.nodes if node.op == "output")
        backward_outputs.append(sum(arg is not None for arg in output.args[0]))
        return make_boxed_func(graph.forward)

    splits = load_splits("digits", None, train_samples=64, test_samples=8)
    model = build_model("small-cnn", splits.num_classes, splits.shape, splits.mean, splits.std)
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=forward, bw_compiler=backward))
    x, y = splits.train.images[:16].float() / 255, splits.train.labels[:16]
    with attack_mode(model, "train")():
        pgd(compiled, x, y, eps=0.1, alpha=0.05, steps=2, generator=torch.Generator().manual_seed(0))
    assert backward_outputs == [1]  # compiled once, for the input's gradient only
    torch._dynamo.reset()
