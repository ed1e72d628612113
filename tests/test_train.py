"""End to end through real horovodrun jobs (Gloo and MPI) on the embedded digits data."""

import json
import shutil

import torch
from conftest import QUICK, read_metrics, run_hvdat
from rich.console import Console

from hvdat.cli.progress import epochs_table

TIMING = {"images_per_sec", "seconds", "train_seconds"}
REQUIRED = {"epoch", "train_loss", "train_acc", "test_clean_acc", "test_robust_acc", "images_per_sec", "lr", "seconds"}
# PGD-AT that reaches a clearly robust model on digits in about half a minute on 2 cores.
RECIPE = [
    "--dataset",
    "digits",
    "--eps",
    "0.1",
    "--steps",
    "5",
    "--epochs",
    "6",
    "--lr",
    "0.4",
    "--eval-samples",
    "360",
]


def test_two_workers_match_one_worker_with_the_same_global_batch(tmp_path):
    one = run_hvdat(
        "train", *RECIPE, "--np", "1", "--batch-size", "64", "--out", tmp_path / "one", "--json", check=True
    )
    two = run_hvdat("train", *RECIPE, "--np", "2", "--batch-size", "32", "--out", tmp_path / "two", check=True)
    summary = json.loads(one.stdout)
    assert summary["final"]["world_size"] == 1 and summary["final"]["global_batch"] == 64
    m1, m2 = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert len(m1) == len(m2) == 6
    assert all(row.keys() >= REQUIRED for row in m1 + m2)
    assert m2[-1]["world_size"] == 2 and m2[-1]["global_batch"] == 64
    robust1, robust2 = m1[-1]["test_robust_acc"], m2[-1]["test_robust_acc"]
    assert robust1 > 0.5 and robust2 > 0.5, (robust1, robust2)  # chance is 0.1
    assert abs(robust1 - robust2) < 0.1, (robust1, robust2)
    assert m2[-1]["test_clean_acc"] > 0.85
    # every test image is scored, the last partial batch of each rank's shard included (180 = 2 x 64 + 52)
    assert all(row["test_clean_examples"] == row["test_robust_examples"] == 360 for row in m1 + m2)
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt"):
        assert (tmp_path / "two" / name).is_file()
    assert "epoch" in two.stderr and "robust" in two.stderr  # the per-epoch progress lines


def test_mpi_and_gloo_give_the_same_training(tmp_path):
    args = [*QUICK, "--np", "2", "--epochs", "1", "--batch-size", "32"]
    run_hvdat("train", *args, "--launcher", "gloo", "--out", tmp_path / "gloo", check=True)
    run_hvdat("train", *args, "--launcher", "mpi", "--out", tmp_path / "mpi", check=True)
    gloo, mpi = read_metrics(tmp_path / "gloo")[-1], read_metrics(tmp_path / "mpi")[-1]
    assert mpi["world_size"] == 2
    assert {k: v for k, v in gloo.items() if k not in TIMING} == {k: v for k, v in mpi.items() if k not in TIMING}


def test_resume_equals_uninterrupted(tmp_path):
    args = [*QUICK, "--np", "2", "--batch-size", "32", "--schedule", "constant", "--optimizer", "lamb", "--lr", "0.01"]
    run_hvdat("train", *args, "--epochs", "2", "--out", tmp_path / "straight", check=True)
    run_hvdat("train", *args, "--epochs", "1", "--out", tmp_path / "split", check=True)
    run_hvdat("train", *args, "--epochs", "2", "--out", tmp_path / "split", "--resume", check=True)
    straight, split = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in straight] == [
        {k: v for k, v in r.items() if k not in TIMING} for r in split
    ]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resuming_with_another_np_keeps_the_lr_schedule_on_course(tmp_path):
    """Epoch 1 at --np 2 (half the steps per epoch), epoch 2 resumed at --np 1: epoch 2's rates are those of an
    uninterrupted --np 1 run (the schedule follows the position in the run, not the optimiser steps taken)."""
    args = [*QUICK, "--batch-size", "32", "--warmup-epochs", "0.5", "--epochs", "2"]
    run_hvdat("train", *args, "--np", "1", "--out", tmp_path / "straight", check=True)
    run_hvdat("train", *args, "--np", "2", "--epochs", "1", "--out", tmp_path / "split", check=True)
    run_hvdat("train", *args, "--np", "1", "--out", tmp_path / "split", "--resume", check=True)
    straight, split = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert split[0]["world_size"] == 2 and split[1]["world_size"] == 1
    assert split[1]["lr"] == straight[1]["lr"]
    assert split[1]["step"] == split[0]["step"] + straight[1]["step"] - straight[0]["step"]  # a full epoch at np 1


def test_a_failing_worker_is_named_with_its_last_lines(tmp_path):
    data = tmp_path / "broken"
    shutil.copytree(
        __import__("conftest").SHARED_CIFAR / "test" / "cat", data / "train" / "cat", ignore=lambda d, names: names[20:]
    )
    shutil.copytree(
        __import__("conftest").SHARED_CIFAR / "test" / "dog", data / "test" / "dog", ignore=lambda d, names: names[20:]
    )
    (data / "train" / "cat" / "zz-corrupt.jpg").write_bytes(b"not a jpeg at all")
    proc = run_hvdat(
        "train",
        "--np",
        "2",
        "--dataset",
        "imagefolder",
        "--data-dir",
        data,
        "--out",
        tmp_path / "r",
        env={"HVDAT_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode not in (0, 2)
    assert "training failed: rank" in proc.stderr and "raised UnidentifiedImageError" in proc.stderr
    assert "last lines of rank" in proc.stderr and "full log:" in proc.stderr
    assert (tmp_path / "r" / "logs" / "train.log").is_file()


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def test_json_is_strict_and_an_unmeasured_robust_accuracy_is_null(tmp_path):
    """--eval-samples 0 skips the per-epoch PGD check: the JSON says null (jq and other strict parsers reject NaN),
    the table says '-', and no best.pt is chosen on a number that was never measured."""
    proc = run_hvdat(
        "train",
        *QUICK,
        "--eval-samples",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--out",
        tmp_path / "run",
        "--json",
        check=True,
    )
    summary = json.loads(proc.stdout, parse_constant=_reject_constant)
    assert summary["final"]["test_robust_acc"] is None and summary["best_robust_acc"] is None
    assert summary["final"]["test_clean_acc"] > 0
    assert read_metrics(tmp_path / "run")[-1]["test_robust_acc"] is None
    assert (tmp_path / "run" / "last.pt").is_file() and not (tmp_path / "run" / "best.pt").exists()
    run_hvdat("report", tmp_path / "run", check=True)
    assert (tmp_path / "run" / "plots" / "training.png").stat().st_size > 1000
    console = Console(width=200, record=True)
    console.print(epochs_table(summary["epochs"]))
    row = [line for line in console.export_text().splitlines() if line.lstrip("│ ").startswith("1 ")][0]
    assert [cell.strip() for cell in row.split("│")][5] == "-", row  # the robust column
