"""Issue 6 features end to end: pseudo-labelling and extra data, the collapse guard, the fast-path flags, and every
experiment bench in smoke mode (so the benches cannot rot). Real processes, real CIFAR-10 images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, assert_one_line_error, read_metrics, run_hvdat

TINY_CIFAR = [
    "--dataset",
    "cifar10",
    "--train-samples",
    "128",
    "--test-samples",
    "64",
    "--eval-samples",
    "16",
    "--eval-steps",
    "2",
    "--batch-size",
    "32",
    "--epochs",
    "1",
]


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory, cifar_dir):
    folder = tmp_path_factory.mktemp("unlabeled")
    for cls in ("cat", "ship"):
        for name in sorted(os.listdir(cifar_dir / "test" / cls))[:20]:
            (folder / cls).mkdir(exist_ok=True)
            os.symlink(cifar_dir / "test" / cls / name, folder / cls / name)
    return folder


def test_pseudo_label_is_sharded_and_mixed_into_batches(tmp_path, cifar_dir, unlabeled):
    cifar = [*TINY_CIFAR, "--data-dir", cifar_dir]
    run_hvdat("train", *cifar, "--attack", "none", "--out", tmp_path / "teacher", check=True)
    one = run_hvdat(
        "pseudo-label",
        "--model",
        tmp_path / "teacher",
        "--data-dir",
        unlabeled,
        "--out",
        tmp_path / "one.npz",
        "--json",
        check=True,
    )
    run_hvdat(
        "pseudo-label",
        "--model",
        tmp_path / "teacher",
        "--data-dir",
        unlabeled,
        "--out",
        tmp_path / "two.npz",
        "--np",
        "2",
        check=True,
    )
    assert json.loads(one.stdout)["images"] == 40
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert a["images"].shape == (40, 3, 32, 32) and a["images"].dtype == np.uint8
    assert list(a["files"]) == sorted(a["files"]) and list(a["files"]) == list(b["files"])
    assert (a["labels"] == b["labels"]).all() and np.allclose(a["confidence"], b["confidence"], atol=1e-5)
    # fewer images than ranks: rank 1 has none, and the gather still works
    run_hvdat(
        "pseudo-label",
        "--model",
        tmp_path / "teacher",
        "--data-dir",
        unlabeled,
        "--out",
        tmp_path / "single.npz",
        "--np",
        "2",
        "--limit",
        "1",
        check=True,
    )
    single = np.load(tmp_path / "single.npz")
    assert list(single["files"]) == list(a["files"][:1]) and (single["labels"] == a["labels"][:1]).all()
    run_hvdat(
        "train",
        *cifar,
        "--attack",
        "fgsm-rs",
        "--np",
        "2",
        "--extra-data",
        tmp_path / "two.npz",
        "--extra-fraction",
        "0.5",
        "--out",
        tmp_path / "student",
        check=True,
    )
    run_hvdat("train", *cifar, "--attack", "fgsm-rs", "--np", "2", "--out", tmp_path / "alone", check=True)
    # 64 labeled images per rank: 16 labeled + 16 extra per batch doubles the steps of 32 labeled per batch
    assert read_metrics(tmp_path / "student")[-1]["step"] == 2 * read_metrics(tmp_path / "alone")[-1]["step"] == 4


def test_extra_data_mistakes_are_one_line_errors(tmp_path):
    assert_one_line_error(
        run_hvdat("train", "--extra-data", tmp_path / "missing.npz", "--out", tmp_path / "r"),
        "--extra-data",
        "does not exist",
    )
    (tmp_path / "x.npz").write_bytes(b"")
    assert_one_line_error(
        run_hvdat("train", "--extra-data", tmp_path / "x.npz", "--extra-fraction", "1.5", "--out", tmp_path / "r"),
        "--extra-fraction",
    )
    assert_one_line_error(run_hvdat("train", "--amp", "fp8", "--out", tmp_path / "r"), "--amp")
    assert_one_line_error(
        run_hvdat("train", "--co-guard", "--co-guard-fallback", "nope", "--out", tmp_path / "r"),
        "unknown attack 'nope'",
    )


def test_extra_data_that_does_not_fit_the_dataset_is_a_one_line_error_before_launch(tmp_path):
    def npz(name, images, labels=None):
        arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    digits = ["--dataset", "digits", "--out", tmp_path / "r"]  # 1 x 16 x 16 images, 10 classes
    ok = np.zeros((4, 1, 16, 16), np.uint8)
    cases = [
        (npz("cifar.npz", np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4)), ["(3, 32, 32)", "uint8 (1, 16, 16)"]),
        (npz("float.npz", ok.astype(np.float32), np.zeros(4)), ["float32 images"]),
        (npz("labels.npz", ok, np.array([0, 1, 2, 10])), ["labels outside 0..9"]),
        (npz("few.npz", ok, np.zeros(3)), ["4 images and 3 labels"]),
        (npz("unlabeled.npz", ok), ["not a pseudo-label file", "labels"]),
        (tmp_path / "missing.npz", ["does not exist"]),
    ]
    (tmp_path / "empty.npz").write_bytes(b"")
    cases.append((tmp_path / "empty.npz", ["not a pseudo-label file"]))
    for path, fragments in cases:
        proc = run_hvdat("train", *digits, "--extra-data", path)
        assert_one_line_error(proc, "--extra-data", *fragments)
        assert not (tmp_path / "r" / "logs").exists()  # nothing was launched
    run_hvdat("train", *digits, "--extra-data", npz("fits.npz", ok, np.arange(4)), "--dry-run", check=True)


def _scripted_collapse(tmp_path, env, **settings):
    """Digits FGSM for 3 epochs with the guard's check scripted to collapse at epoch 3 (see co_guard_job.py)."""
    from hvdat.train.config import TrainConfig

    cfg = TrainConfig(
        dataset="digits",
        eps=0.1,
        attack="fgsm",
        epochs=3,
        batch_size=64,
        eval_samples=32,
        eval_steps=2,
        co_guard=True,
        co_guard_steps=2,
        out=str(tmp_path / "run"),
        **settings,
    )
    cfg.save(tmp_path / "run" / "config.json")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HVDAT_TEST_CHECKS": "0.4,0.5,0.1,0.45,0.5", **env}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "co_guard_job.py"), "--config", str(tmp_path / "run" / "config.json")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return read_metrics(tmp_path / "run")


def test_collapse_guard_rolls_back_and_switches_to_pgd(tmp_path):
    # the collapsed epoch scores best on the test set: it must not become best.pt (its weights were discarded)
    rows = _scripted_collapse(tmp_path, {"HVDAT_TEST_ROBUST": "0.2,0.3,0.9,0.35,0.4"})
    assert [r["epoch"] for r in rows] == [1, 2, 3, 3, 4][: len(rows)] or [r["epoch"] for r in rows] == [1, 2, 3, 3]
    collapsed = [r for r in rows if r["co_guard_collapsed"]]
    assert len(collapsed) == 1 and collapsed[0]["epoch"] == 3
    assert collapsed[0]["co_guard_rolled_back_to_epoch"] == 2 and collapsed[0]["co_guard_switched_to"] == "pgd"
    assert [r["attack"] for r in rows] == ["fgsm", "fgsm", "fgsm", "pgd"]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["attack"]["name"] == "pgd" and state["attack"]["params"]["steps"] == 2 and state["epoch"] == 3
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["epoch"] == 3 and best["attack"]["name"] == "pgd" and best["best_robust_acc"] == 0.35


def test_a_rollback_restores_the_error_feedback_of_the_epoch_it_returns_to(tmp_path):
    _scripted_collapse(tmp_path, {"HVDAT_TEST_SAVES": str(tmp_path / "saves.pt")}, compression="ef-sign")
    epoch1, epoch2, collapsed = torch.load(tmp_path / "saves.pt", weights_only=True)[:3]

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert epoch2[0] and not same(epoch1[0], epoch2[0])  # residuals and momentum moved during epoch 2
    assert same(collapsed[0], epoch2[0])  # rolled back to epoch 2's model: and to its residuals


def test_fast_path_flags_train_correctly_on_cpu(tmp_path, cifar_dir):
    cifar = [*TINY_CIFAR, "--data-dir", cifar_dir, "--attack", "fgsm-rs", "--train-samples", "64"]
    run_hvdat("train", *cifar, "--out", tmp_path / "plain", check=True)
    run_hvdat("train", *cifar, "--channels-last", "--out", tmp_path / "cl", check=True)
    plain, cl = read_metrics(tmp_path / "plain")[-1], read_metrics(tmp_path / "cl")[-1]
    assert abs(plain["train_loss"] - cl["train_loss"]) < 1e-3  # a layout, not a different computation
    run_hvdat("train", *cifar, "--np", "2", "--amp", "bf16", "--channels-last", "--out", tmp_path / "bf16", check=True)
    run_hvdat("train", *cifar, "--amp", "fp16", "--out", tmp_path / "fp16", check=True)
    for name in ("bf16", "fp16"):
        row = read_metrics(tmp_path / name)[-1]
        assert np.isfinite(row["train_loss"]) and row["step"] > 0
    assert torch.load(tmp_path / "fp16" / "last.pt", weights_only=True)["scaler"]["scale"] > 0


BENCHES = {  # extra arguments: the methods smoke runs the two methods whose rows have logic of their own (M+DEAT's
    # epoch budget, AccelAT's eval split; a row is 3 launches, and each method is trained in tests/test_methods.py);
    # the compression smoke the uncompressed baseline and one stateful compressor (every row is the same code path)
    "methods": ["--methods", "m-deat,accelat"],
    "scaling": [],
    "compression": ["--compressors", "none,ef-sign"],
    "co_guard": [],
    "unlabeled": [],
    "train_step": [],
    "slow_link": [],
}


@pytest.mark.parametrize("bench", sorted(BENCHES))
def test_bench_smoke(bench, tmp_path, cifar_dir):
    args = [sys.executable, str(REPO / "experiments" / f"{bench}.py"), "--smoke", "--out", str(tmp_path)]
    args += BENCHES[bench]
    if bench != "train_step":
        args += ["--data-dir", str(cifar_dir)]
    proc = subprocess.run(
        args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    payload = json.loads((tmp_path / f"{bench}.json").read_text())
    assert payload["bench"] == bench and payload["machine_at_end"]["cpu_count"]
    assert (tmp_path / f"{bench}.png").stat().st_size > 1000


def test_compile_trains_and_checkpoints_the_plain_model(tmp_path):
    run_hvdat(
        "train",
        "--dataset",
        "digits",
        "--eps",
        "0.1",
        "--attack",
        "fgsm-rs",
        "--epochs",
        "1",
        "--train-samples",
        "128",
        "--eval-samples",
        "16",
        "--eval-steps",
        "1",
        "--batch-size",
        "64",
        "--compile",
        "--out",
        tmp_path / "run",
        check=True,
    )
    assert np.isfinite(read_metrics(tmp_path / "run")[-1]["train_loss"])
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert not any(key.startswith("_orig_mod") for key in state["model"])  # loadable without torch.compile
