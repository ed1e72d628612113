"""`hvdat eval` on models hvdat did not train: every target kind loads and evaluates to the same per-example results
as the model it was made from; --mean/--std equals normalisation built in; the batch queue over 2 horovodrun ranks
equals one rank; --compare finds disagreements; a randomised model is flagged; bad targets are one line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_one_line_error, run_hvdat

MEAN, STD = (0.3,), (0.25,)  # digits' normalisation, as the user would pass it

TINY_NETS = '''
import torch
import torch.nn as nn


class TinyNet(nn.Sequential):
    """A small CNN for 1x16x16 digits; `width` is a keyword argument of the factory."""

    def __init__(self, width=8, num_classes=10):
        super().__init__(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(8 * width, num_classes),
        )


def tiny(width=8):
    return TinyNet(width=width)


class Noisy(nn.Module):
    """A randomised defence: noise on the input at every forward pass."""

    def __init__(self):
        super().__init__()
        self.net = TinyNet()

    def forward(self, x):
        return self.net(x + 0.1 * torch.randn_like(x))
'''


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One tiny CNN trained briefly on digits (without normalisation inside), saved as every kind of target."""
    import sys

    from hvdat.data import load_splits
    from hvdat.models import Normalized

    root = tmp_path_factory.mktemp("zoo")
    (root / "tinynets.py").write_text(textwrap.dedent(TINY_NETS))
    sys.path.insert(0, str(root))
    import tinynets

    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = tinynets.TinyNet(width=12)
    model = Normalized(net, MEAN, STD)
    train = load_splits("digits", None).train
    x = train.images.float().div(255)
    y = train.labels
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(60):
        idx = torch.arange(step * 64, step * 64 + 64) % len(y)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.save(net.state_dict(), root / "tiny.pt")
    example = torch.rand(2, 1, 16, 16)
    torch.jit.save(torch.jit.trace(model, example), root / "tiny_script.pt")  # normalisation built in
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(exported, root / "tiny.pt2")
    # torchvision's resnet18 for 10 classes (its weights: this random init, as a local file)
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), root / "resnet18.pt")
    sys.path.remove(str(root))
    return {"root": root, "model": model}


def _prepare(target, cwd: Path, **options):
    from hvdat.eval.config import EvalConfig
    from hvdat.eval.run import prepare

    defaults = dict(attack="pgd", eps=(0.03,), steps=3, n_examples=24, batch_size=12, dataset="digits", threads=1)
    request = EvalConfig(**{**defaults, **options, "out": str(cwd / "out" / "report.json")})
    return prepare(Path(str(target)), request)


def _per_example(cfg) -> list:
    """The cascade's per-example result for the config, in this process (the workers' code path, phase by phase)."""
    from hvdat.data import load_splits
    from hvdat.eval.cascade import evaluate
    from hvdat.eval.examples import examples
    from hvdat.eval.plan import Plan
    from hvdat.eval.stages import StageRunner
    from hvdat.eval.targets import build_eval_model, read_files, spec_of

    cpu = torch.device("cpu")
    model, _ = build_eval_model(cfg, read_files(spec_of(cfg)), cpu)
    x, y = examples(load_splits(cfg.dataset, None, 1).test, 0, cfg.n_examples, cpu)
    plan = Plan.from_dict(cfg.plan)
    runner = StageRunner(model, plan, cfg.eps[0], cfg.seed, cpu)
    return evaluate(model, x, y, plan, [runner], cfg.seed, cfg.batch_size, cfg.even_batches).per_eps[0].broken_by


def test_every_target_kind_loads_and_evaluates_as_the_model_it_was_made_from(zoo, monkeypatch):
    root = zoo["root"]
    monkeypatch.chdir(root)  # a factory's module is imported from where hvdat runs, as `python -m` would
    factory = _prepare(
        "tinynets:tiny", root, weights=str(root / "tiny.pt"), model_args={"width": 12}, mean=MEAN, std=STD
    )
    script = _prepare(root / "tiny_script.pt", root)
    exported = _prepare(root / "tiny.pt2", root)
    assert (factory.target_kind, script.target_kind, exported.target_kind) == ("factory", "torchscript", "export")
    reference = _per_example(factory)
    assert 0 < sum(b == 1 for b in reference) < sum(b >= 0 for b in reference), "PGD should break some points"
    assert _per_example(script) == reference
    assert _per_example(exported) == reference

    vision = _prepare("resnet18", root, weights=str(root / "resnet18.pt"), num_classes=10, input_size=(3, 16, 16))
    assert vision.target_kind == "torchvision" and vision.num_classes == 10
    assert len(_per_example(vision)) == 24

    randomised = _prepare("tinynets:Noisy", root)
    from hvdat.data import load_splits
    from hvdat.eval.cascade import evaluate
    from hvdat.eval.examples import examples
    from hvdat.eval.plan import Plan
    from hvdat.eval.stages import StageRunner
    from hvdat.eval.summary import sanity_flags
    from hvdat.eval.targets import build_eval_model, read_files, spec_of

    model, _ = build_eval_model(randomised, read_files(spec_of(randomised)), torch.device("cpu"))
    assert not model.net.training, "the model is put in eval mode"
    x, y = examples(load_splits("digits", None, 1).test, 0, 8, torch.device("cpu"))
    plan = Plan.from_dict(randomised.plan)
    runner = StageRunner(model, plan, 0.1, 0, torch.device("cpu"))
    assert evaluate(model, x, y, plan, [runner], 0, 8).randomized, "two identical passes differ: randomised"
    flag = sanity_flags(plan, 1.0, {}, {}, 8, 0, 0, randomized=True)["randomized"]
    assert flag["raised"] and "--version rand" in flag["detail"]


def test_a_robustbench_checkpoint_loads_from_its_local_file(zoo, tmp_path):
    from hvdat.eval.targets import robustbench_import_shims

    robustbench_import_shims()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    entry = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Wong2020Fast"]  # a PreAct ResNet-18
    torch.manual_seed(0)
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    source = entry["model"]().eval()
    torch.save(source.state_dict(), folder / "Wong2020Fast.pt")
    cfg = _prepare(
        folder / "Wong2020Fast.pt", tmp_path, dataset=None, data_dir="/work/shared/data/cifar10-jpg", n_examples=2
    )
    assert cfg.target_kind == "robustbench" and cfg.dataset == "cifar10" and cfg.num_classes == 10
    from hvdat.eval.targets import build_eval_model, read_files, spec_of

    model, loaded = build_eval_model(cfg, read_files(spec_of(cfg)), torch.device("cpu"))
    assert loaded.arch == "robustbench:Wong2020Fast"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_bad_targets_are_one_line(zoo, tmp_path):
    from hvdat.errors import UsageError

    root = zoo["root"]
    cases = [
        (("tinynets:nothing",), {}, "has no 'nothing'"),
        (("nosuchpackage.mod:fn",), {}, "cannot import 'nosuchpackage.mod'"),
        (("resnet18",), {}, "needs --weights FILE"),
        (("tinynets:tiny",), {"weights": str(root / "resnet18.pt")}, "does not fit the model"),
        (("tinynets:tiny",), {"model_args": {"depth": 3}}, "check --model-args"),
        ((root / "tiny.pt",), {}, "not an hvdat checkpoint"),
        ((root / "tiny_script.pt",), {"dataset": "synthetic"}, "the model failed on a batch"),
        (("tinynets:tiny",), {"mean": MEAN}, "--mean and --std go together"),
        ((tmp_path / "models" / "cifar10" / "Linf" / "Nobody2099.pt",), {}, "no run directory or model file"),
    ]
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        for args, options, fragment in cases:
            with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
                _prepare(*args, root, **options)
    finally:
        os.chdir(cwd)
    # and through the CLI: one line, exit code 2
    assert_one_line_error(
        run_hvdat("eval", "tinynets:tiny", "--dataset", "digits", "--model-args", "width"), "KEY=VALUE"
    )


def test_queue_over_two_ranks_and_mean_std_equal_one_rank_with_normalisation_built_in(zoo, tmp_path):
    """The factory with --mean/--std on 2 horovodrun ranks pulling batches from the queue, PGD; the TorchScript
    file with the normalisation inside on 1 rank: the same per-example results; --compare says so, and finds a
    planted disagreement."""
    root = zoo["root"]
    common = ["--eps", "0.03", "--n-examples", "24", "--batch-size", "6", "--threads", "1", "--dataset", "digits"]
    common += ["--attack", "pgd", "--steps", "3", "--no-tensorboard"]
    env = {"PYTHONPATH": f"{REPO}:{root}"}
    two = tmp_path / "two.json"
    run_hvdat(
        "eval",
        "tinynets:tiny",
        "--weights",
        root / "tiny.pt",
        "--model-args",
        "width=12",
        "--mean",
        "0.3",
        "--std",
        "0.25",
        "--np",
        "2",
        "--out",
        two,
        *common,
        env=env,
        check=True,
    )
    one = tmp_path / "one.json"
    run_hvdat("eval", root / "tiny_script.pt", "--np", "1", "--out", one, *common, check=True)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["world_size"] == 2 and b["handout"] == "queue" and b["batches"]["clean"] == 4
    assert "freed memory kept" in a["heap"] and "freed memory kept" in b["heap"]  # every worker, through horovodrun too
    assert a["examples"]["by_eps"] == b["examples"]["by_eps"]
    assert set(a["examples"]["by_eps"][0]["broken_by"]) == {"clean", "pgd", None}, "some, not all, robust"
    robust = a["examples"]["by_eps"][0]["robust_after"]
    assert list(robust) == ["clean", "pgd"] and sum(robust["pgd"]) == round(24 * a["robust_accuracy"])

    same = json.loads(run_hvdat("eval", "--compare", one, two, "--json", check=True).stdout)
    assert same["identical"] and same["sweep"][0]["disagree"] == 0 and same["sweep"][0]["compared"] == 24
    planted = json.loads(two.read_text())
    flip = planted["examples"]["by_eps"][0]["robust_after"]["pgd"].index(True)
    planted["examples"]["by_eps"][0]["robust_after"]["pgd"][flip] = False
    planted["examples"]["by_eps"][0]["broken_by"][flip] = "pgd"
    from hvdat.eval.compare import compare_reports

    differ = compare_reports(a, planted)["sweep"][0]
    assert [e["index"] for e in differ["examples"]] == [flip] and differ["stage_disagreements"]["pgd"] == 1


def test_default_batches_follow_the_model_size_and_the_phase_not_the_world_size():
    from hvdat.eval.batches import default_batch_size, split

    def sizes(n, flops, device="cpu"):
        return [len(b) for b in split(range(n), default_batch_size(flops, device), even=True)]

    small_cnn, wrn = 12e6, 13e9  # forward FLOPs per example
    assert sizes(360, small_cnn) == [180, 180]  # a tiny model: few large batches amortise per-call overhead
    assert sizes(1000, small_cnn) == [250] * 4  # an even count of equal batches
    assert default_batch_size(wrn) == 16  # a big model: small batches, which the queue balances
    assert sizes(20, wrn) == [10, 10] and sizes(5, small_cnn) == [5]
    preact = 0.56e9  # PreActResNet-18: the CPU's smallest batches; a GPU's hold 250x the work, to 1,000 examples
    assert default_batch_size(preact) == 16
    assert sizes(1000, preact, "cuda") == [500, 500] and default_batch_size(preact, "cuda") == 1000
    assert default_batch_size(wrn, "cuda") == 76
