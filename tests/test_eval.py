"""`hvdat eval` and `hvdat report`: real checkpoints, real digits, real horovodrun jobs, the reference AutoAttack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_hvdat

EPS_SLACK = 1e-5  # float32 rounding of x + delta


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    """An undefended small CNN on digits (natural training): accurate, and not robust at all."""
    out = tmp_path_factory.mktemp("plain") / "run"
    run_hvdat(
        "train",
        "--dataset",
        "digits",
        "--attack",
        "none",
        "--eval-samples",
        "32",
        "--eval-steps",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--out",
        out,
        check=True,
    )
    return out


def _constant_checkpoint(path: Path, constant_class: int = 3) -> Path:
    """A small-cnn whose output does not depend on its input: zero head weights, a fixed bias."""
    from hvdat.data import load_splits
    from hvdat.models import build_model

    splits = load_splits("digits", None, train_samples=1)
    model = build_model("small-cnn", splits.num_classes, splits.shape, splits.mean, splits.std)
    head = model.net[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.arange(10, dtype=torch.float32) == constant_class)
    torch.save(
        {
            "model": model.state_dict(),
            "arch": "small-cnn",
            "dataset": "digits",
            "num_classes": 10,
            "shape": list(splits.shape),
            "config": {"dataset": "digits", "data_dir": None},
        },
        path,
    )
    return path


def _eval(target, *args, timeout=600) -> dict:
    proc = run_hvdat("eval", target, "--threads", "1", "--json", *args, timeout=timeout, check=True)
    return json.loads(proc.stdout)


def _file(report_stdout: dict, out: Path) -> dict:
    return json.loads(Path(out).read_text())


DOCUMENTED = {
    "clean_accuracy": float,
    "robust_accuracy": float,
    "stages": dict,
    "n_examples": int,
    "eps": float,
    "norm": str,
    "seconds": float,
    "max_perturbation": float,
    "perturbation_ok": bool,
    "sanity": dict,
    "departures": list,
    "settings": dict,
    "sweep": list,
    "attack": str,
    "world_size": int,
}


def check_report(report: dict, eps: float) -> None:
    """The documented keys with their types, and the invariants any honest report satisfies."""
    for key, kind in DOCUMENTED.items():
        assert isinstance(report[key], kind), (key, report.get(key))
    assert 0 <= report["robust_accuracy"] <= report["clean_accuracy"] <= 1
    accs = list(report["stages"].values())
    assert accs == sorted(accs, reverse=True), "robust accuracy can only fall along the cascade"
    assert report["robust_accuracy"] == (accs[-1] if accs else report["clean_accuracy"])
    assert report["max_perturbation"] <= eps * (1 + EPS_SLACK) and report["perturbation_ok"]
    if report["pixel_range"] is not None:
        assert 0.0 <= report["pixel_range"][0] <= report["pixel_range"][1] <= 1.0
    for flag in report["sanity"].values():
        assert set(flag) == {"raised", "detail"}
    assert not report["sanity"]["nan"]["raised"] and not report["sanity"]["over_eps"]["raised"]


def test_undefended_model_has_no_robustness_under_pgd_and_autoattack(plain_run, tmp_path):
    pgd = _eval(plain_run, "--attack", "pgd", "--eps", "0.3", "--n-examples", "64", "--out", tmp_path / "pgd.json")
    check_report(pgd, 0.3)
    assert pgd["clean_accuracy"] > 0.8 and pgd["robust_accuracy"] <= 0.05
    assert list(pgd["stages"]) == ["pgd"] and pgd["settings"]["pgd"]["steps"] == 20

    aa = _eval(plain_run, "--eps", "0.3", "--n-examples", "32", "--batch-size", "16", "--out", tmp_path / "aa.json")
    check_report(aa, 0.3)
    assert aa["clean_accuracy"] > 0.8 and aa["robust_accuracy"] <= 0.05
    # the reference's standard version, untouched
    assert list(aa["stages"]) == ["apgd-ce", "apgd-t", "fab-t", "square"] and aa["departures"] == []
    assert aa["settings"]["apgd-ce"] == {"steps": 100, "restarts": 1, "targets": None}
    assert aa["settings"]["apgd-t"]["targets"] == 9 and aa["settings"]["square"]["steps"] == 5000
    full = json.loads((tmp_path / "aa.json").read_text())
    assert full["examples"]["index"] == list(range(32)) and len(full["examples"]["by_eps"][0]["broken_by"]) == 32


def test_constant_model_is_exactly_as_robust_as_it_is_accurate(tmp_path):
    ckpt = _constant_checkpoint(tmp_path / "constant.pt")
    for attack in ("pgd", "autoattack"):
        report = _eval(
            ckpt,
            "--attack",
            attack,
            "--eps",
            "0.5",
            "--n-examples",
            "40",
            "--batch-size",
            "20",
            "--out",
            tmp_path / f"{attack}.json",
        )
        check_report(report, 0.5)
        assert 0 < report["clean_accuracy"] < 0.5  # one class only
        assert report["robust_accuracy"] == report["clean_accuracy"], attack
        assert report["max_perturbation"] == 0.0  # nothing was ever misclassified


def test_np2_through_horovodrun_gives_the_per_example_result_of_np1(plain_run, tmp_path):
    args = ["--eps", "0.05", "--n-examples", "16", "--batch-size", "8"]  # all four stages find work here
    one = _eval(plain_run, *args, "--np", "1", "--out", tmp_path / "np1.json")
    two = _eval(plain_run, *args, "--np", "2", "--out", tmp_path / "np2.json")
    assert one["world_size"] == 1 and two["world_size"] == 2
    a, b = (json.loads((tmp_path / f"np{n}.json").read_text()) for n in (1, 2))
    assert a["examples"] == b["examples"]  # same broken_by stage, adversarial label and perturbation per example
    assert a["stages"] == b["stages"] and a["robust_accuracy"] == b["robust_accuracy"]
    assert len(set(a["examples"]["by_eps"][0]["broken_by"])) >= 2, "the test should exercise the cascade"


def test_a_killed_evaluation_resumes_from_its_state_file(plain_run, tmp_path):
    out = tmp_path / "pgd.json"
    args = ["--attack", "pgd", "--eps", "0.1", "--n-examples", "48", "--batch-size", "16", "--out", out]
    first = _file(_eval(plain_run, *args), out)
    work = tmp_path / "pgd.work"
    assert not (work / "state").exists(), "a finished evaluation removes its state"
    # Leave the state a run killed after its first batch of PGD would leave, with a marker a recomputation cannot
    # produce: every example of that batch broken, at a perturbation PGD never reports
    fingerprint = json.loads((work / "config.json").read_text())["fingerprint"]
    labels = first["examples"]["label"]
    correct = [i for i, (p, y) in enumerate(zip(first["examples"]["clean_pred"], labels)) if p == y]
    clean = [
        {
            "key": f"0:-1:{b}",
            "indices": list(range(b * 16, b * 16 + 16)),
            "pred": first["examples"]["clean_pred"][b * 16 : b * 16 + 16],
        }
        for b in range(3)
    ]
    batch0 = {
        "key": "1:0:0",
        "indices": correct[:16],
        "pred": [(labels[i] + 1) % 10 for i in correct[:16]],
        "broken": [True] * 16,
        "perturbation": [0.05] * 16,
        "pixel_min": 0.0,
        "pixel_max": 1.0,
    }
    (work / "state").mkdir()
    (work / "state" / "rank-0.jsonl").write_text(
        "\n".join(json.dumps(r) for r in [{"fingerprint": fingerprint}, *clean, batch0]) + "\n"
    )
    resumed = _file(_eval(plain_run, *args, "--np", "2"), out)
    assert resumed["resumed_batches"] == 4 and 0 < resumed["resumed_share"] < 1
    by_eps, before = resumed["examples"]["by_eps"][0], first["examples"]["by_eps"][0]
    assert [by_eps["broken_by"][i] for i in correct[:16]] == ["pgd"] * 16  # taken from the state, not redone
    assert [by_eps["perturbation"][i] for i in correct[:16]] == [0.05] * 16
    rest = [i for i in range(48) if i not in correct[:16]]
    for key in ("broken_by", "adv_pred", "perturbation"):
        assert [by_eps[key][i] for i in rest] == [before[key][i] for i in rest]


def test_a_line_cut_short_by_a_kill_does_not_swallow_the_next_batch(tmp_path):
    from hvdat.eval.cascade import BatchResult
    from hvdat.eval.store import BatchStore

    def batch(b):
        return BatchResult(f"1:0:{b}", [b], [2], [True], [0.1], seconds=1.0)

    store = BatchStore(tmp_path, "fp", 0)
    store.open()
    store.append(batch(0))
    with open(store.path, "a") as handle:
        handle.write('{"key": "1:0:1", "indi')  # the kill came mid-write
    resumed = BatchStore(tmp_path, "fp", 0)
    assert list(resumed.load()) == ["1:0:0"]
    resumed.open()
    resumed.append(batch(1))
    assert sorted(BatchStore(tmp_path, "fp", 0).load()) == ["1:0:0", "1:0:1"]


def test_the_workers_examples_file_gives_exactly_the_datasets_examples(tmp_path):
    """The workers read the evaluated examples from the file `hvdat eval` writes instead of loading the dataset:
    every batch must be bit-identical to the dataset's, whether stored as uint8 (digits) or as floats."""
    from hvdat.data import load_splits
    from hvdat.eval.examples import Examples, examples, save_examples

    cpu = torch.device("cpu")
    digits = load_splits("digits", None, 1).test
    not_k_over_255 = [(torch.rand(1, 4, 4), i % 3) for i in range(10)]  # not k/255: kept as floats
    for test, n in ((digits, 40), (not_k_over_255, 10)):
        save_examples(test, n, tmp_path / "examples.pt")
        stored = Examples.from_bytes((tmp_path / "examples.pt").read_bytes())
        for lo, hi in ((0, 7), (7, n)):
            for got, want in zip(stored.take(range(lo, hi), cpu), examples(test, lo, hi, cpu)):
                assert got.dtype == want.dtype and torch.equal(got, want)
        picked = [n - 1, 2, 5]  # survivors are any indices, in index order or not
        x, y = stored.take(picked, cpu)
        for k, i in enumerate(picked):
            assert torch.equal(x[k], examples(test, i, i + 1, cpu)[0][0]) and int(y[k]) == int(test[i][1])
    assert stored.x.dtype == torch.float32 and Examples.from_bytes(save_bytes(digits)).x.dtype == torch.uint8


def save_bytes(test) -> bytes:
    import io

    from hvdat.eval.examples import save_examples

    buffer = io.BytesIO()
    save_examples(test, 5, buffer)
    return buffer.getvalue()


def test_the_batch_size_flop_count_matches_torchs_counter():
    """Forward hooks on convolutions and linear layers count what FlopCounterMode counts (without its TorchDynamo
    import); a TorchScript model, whose submodules take no hooks, falls back to FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from hvdat.eval.targets import _hooked_flops, forward_flops
    from hvdat.models import build_model

    model = build_model("small-cnn", 10, (1, 16, 16), [0.0], [1.0]).eval()
    x = torch.rand(2, 1, 16, 16)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x[:1])
    assert forward_flops(model, x) == _hooked_flops(model, x) == counter.get_total_flops() > 0
    assert forward_flops(torch.jit.trace(model, x), x) == counter.get_total_flops()


def test_randomized_check_has_the_reference_tolerance():
    from hvdat.eval.cascade import _differ

    logits = torch.randn(8, 10)
    assert not _differ(logits, logits + 1e-7)  # nondeterministic GPU kernels: not a randomized defence
    assert _differ(logits, logits + 0.1 * torch.randn(8, 10))
    dropout = torch.nn.Dropout(0.5).train()
    x = torch.ones(4, 10)
    assert _differ(dropout(x), dropout(x))


def test_faithful_to_the_reference_autoattack_batch_for_batch(plain_run):
    """With blocks of B, our cascade is the reference run_standard_evaluation(bs=B): the same batches of
    survivors in every stage, so exactly the same points stay robust."""
    from pyautoattack import AutoAttack

    from hvdat.data import load_splits
    from hvdat.eval.cascade import evaluate
    from hvdat.eval.plan import make_plan
    from hvdat.eval.stages import StageRunner
    from hvdat.eval.worker import examples, load_model
    from hvdat.runtime import checkpoint

    torch.set_num_threads(1)
    model = load_model(checkpoint.load(plain_run / "best.pt"), torch.device("cpu"))
    x, y = examples(load_splits("digits", None, 1).test, 100, 124, torch.device("cpu"))
    eps, seed, bs = 0.05, 7, 6
    plan = make_plan("autoattack", "standard", "linf", 10)
    batches = []
    runner = StageRunner(model, plan, eps, seed, torch.device("cpu"))
    ours = evaluate(model, x, y, plan, [runner], 0, bs, on_batch=lambda batch, _: batches.append(batch))
    reference = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=seed)
    x_adv, _ = reference.run_standard_evaluation(x, y, batch_size=bs)
    with torch.no_grad():
        reference_robust = (model(x_adv).argmax(1) == y).tolist()
    assert [b == len(plan.stages) for b in ours.per_eps[0].broken_by] == reference_robust
    assert 0 < sum(reference_robust) < len(y), "pick eps so that the comparison is not trivial"
    assert sum(b.phase == 1 for b in batches) > 1, "the first stage should run more than one batch of survivors"


def test_the_default_cut_splits_each_phase_evenly_never_by_world_size():
    from hvdat.eval.batches import split

    assert [len(b) for b in split(range(360), 500, even=True)] == [180, 180]
    assert [len(b) for b in split(range(175), 500, even=True)] == [88, 87]  # survivors: still two batches
    assert [len(b) for b in split(range(1000), 300, even=True)] == [250] * 4
    assert [len(b) for b in split(range(20), 500, even=True)] == [20]  # too few to share
    assert [len(b) for b in split(range(20), 8, even=False)] == [8, 8, 4]  # the reference's blocks
    assert split([3, 9, 12], 2, even=False) == [(3, 9), (12,)] and split([], 4, even=True) == []


def test_square_beating_the_white_box_attacks_is_flagged(plain_run):
    """Masked gradients (a quantising input layer) stop APGD; Square still succeeds, and that must be flagged."""
    from hvdat.data import load_splits
    from hvdat.eval.cascade import evaluate
    from hvdat.eval.plan import make_plan
    from hvdat.eval.stages import StageRunner
    from hvdat.eval.summary import summarise
    from hvdat.eval.worker import examples, load_model
    from hvdat.runtime import checkpoint

    class Quantised(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(torch.round(x * 2) / 2)  # zero gradient almost everywhere

    torch.set_num_threads(1)
    model = Quantised(load_model(checkpoint.load(plain_run / "best.pt"), torch.device("cpu"))).eval()
    x, y = examples(load_splits("digits", None, 1).test, 0, 16, torch.device("cpu"))
    plan = make_plan("autoattack", "standard", "linf", 10, steps=5)
    assert any("5 steps instead of the reference 100" in d for d in plan.departures)
    runner = StageRunner(model, plan, 0.5, 0, torch.device("cpu"))
    summary = summarise(evaluate(model, x, y, plan, [runner], 0, 16), plan, [0.5])
    entry = summary["sweep"][0]
    assert entry["stages"]["square"] < entry["stages"]["fab-t"]
    assert entry["sanity"]["square_beats_whitebox"]["raised"]
    # every stage ran on survivors, and its time is in the report
    assert list(entry["stage_seconds"]) == list(plan.stages) and min(entry["stage_seconds"].values()) > 0


def test_plan_reports_every_departure_and_rejects_impossible_norms():
    from hvdat.errors import UsageError
    from hvdat.eval.plan import EVAL_ATTACKS, make_plan

    plan = make_plan("autoattack", "standard", "linf", num_classes=5)
    assert plan.settings["apgd-t"].targets == 4 and plan.settings["fab-t"].targets == 4
    assert len(plan.departures) == 2 and all("only 5 classes" in d for d in plan.departures)
    plan = make_plan("autoattack", "standard", "linf", 10, restarts=3)
    assert len(plan.departures) == 4
    assert make_plan("autoattack", "standard", "l1", 10).settings["apgd-t"].targets == 5  # the reference's L1 value
    assert make_plan("autoattack", "plus", "linf", 10).stages[:3] == ("apgd-ce", "apgd-dlr", "fab")
    for name in EVAL_ATTACKS.names():
        for norm in EVAL_ATTACKS.get(name).norms():
            make_plan(name, "standard", norm, 10)
    with pytest.raises(UsageError, match="does not support norm 'l1'"):
        make_plan("pgd", "standard", "l1", 10)


def test_report_plots_training_curves_and_robust_accuracy_against_eps(trained_run, tmp_path):
    run_hvdat(
        "eval",
        trained_run,
        "--attack",
        "fgsm",
        "--eps",
        "1/255,0.05,0.1",
        "--n-examples",
        "64",
        "--threads",
        "1",
        check=True,
    )
    report = json.loads((trained_run / "eval" / "fgsm-linf.json").read_text())
    assert [e["eps"] for e in report["sweep"]] == [1 / 255, 0.05, 0.1] and report["eps"] == 0.1
    proc = run_hvdat("report", trained_run, check=True)
    for name in ("training.png", "robust_vs_eps.png"):
        png = trained_run / "plots" / name
        assert name in proc.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_eval_workers_wake_horovod_rarely_unless_told(tmp_path):
    """Horovod's 1 ms cycle costs CPU workers about 9% of a core each; an evaluation barely uses collectives."""
    from types import SimpleNamespace

    from hvdat.eval.run import EVAL_CYCLE_TIME_MS, eval_launch
    from hvdat.launch import LaunchSpec

    cfg = SimpleNamespace(work_dir=str(tmp_path))
    two = eval_launch(cfg, LaunchSpec(np=2)).argv
    assert two[two.index("--cycle-time-ms") + 1] == "50" and EVAL_CYCLE_TIME_MS == 50
    assert eval_launch(cfg, LaunchSpec(np=1)).env["HOROVOD_CYCLE_TIME"] == "50"  # the worker started directly
    told = eval_launch(cfg, LaunchSpec(np=2, cycle_time_ms=3)).argv
    assert told[told.index("--cycle-time-ms") + 1] == "3"
    assert "--cycle-time-ms" not in eval_launch(cfg, LaunchSpec(np=2, autotune=True)).argv  # autotune tunes it


def test_bad_input_is_one_clear_line(plain_run, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    cases = [
        ((tmp_path / "missing",), "no run directory or checkpoint"),
        ((foreign,), "not an hvdat checkpoint"),
        ((plain_run, "--eps", "8/0"), "invalid eps"),
        ((plain_run, "--eps", "eight"), "invalid eps"),
        ((plain_run, "--attack", "pgd", "--norm", "l1"), "does not support norm 'l1'"),
        ((plain_run, "--n-examples", "1000"), "more than the 360 test images"),
        ((plain_run, "--attack", "deepfool"), "unknown eval attack"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run_hvdat("eval", *args), fragment)
    assert_one_line_error(run_hvdat("report", tmp_path), "holds neither")
    (tmp_path / "afile").write_text("")
    assert_one_line_error(run_hvdat("report", plain_run, "--out", tmp_path / "afile"), "is a file, not a folder")
