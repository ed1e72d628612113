"""Free-AT, DEAT and AccelAT through real 2-worker horovodrun jobs on digits: each trains; a run stopped by SIGTERM
mid-run and resumed ends exactly as an uninterrupted one (weights, optimiser, Free-AT's carried perturbation in
each rank's shard, DEAT's K and MG, AccelAT's cuts); every rank takes the same decisions (the workers check it
each epoch and fail the job otherwise)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch
from conftest import HVDAT, REPO, read_metrics, run_hvdat
from test_signals import _same, hold_after, wait_held

from hvdat.runtime import checkpoint

EPS = 0.1
BASE = ["--np", "2", "--dataset", "digits", "--eps", str(EPS), "--batch-size", "16", "--test-samples", "64"]
BASE += ["--eval-samples", "32", "--eval-steps", "2", "--lr", "0.05"]
# 512 images over 2 ranks: 16 minibatches per rank, each replayed twice; one epoch, stopped in the middle
FREE = ["--attack", "free", "--replays", "2", "--epochs", "1", "--train-samples", "512"]
# 8 minibatches per rank and epoch; AccelAT with a window of 1 and any gain too small: a cut from the third epoch on
DEAT = ["--attack", "deat", "--schedule", "accelat", "--epochs", "3", "--train-samples", "256"]
DEAT += ["--accelat-window", "1", "--accelat-cooldown", "1", "--accelat-min-gain", "1"]
KEYS = ("epoch", "step", "train_loss", "train_acc", "test_clean_acc", "test_robust_acc", "lr")


def stopped_and_resumed(tmp_path, args, hold_at: int):
    """SIGTERM while the workers hold after their `hold_at`-th minibatch (tests/fault_injection/), so the job stops
    right after it on any machine; resume to the end; and the same run uninterrupted, alongside."""
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"

    def start(out, **env):
        return subprocess.Popen(
            HVDAT + ["train", *args, "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            cwd=REPO,
        )

    proc, uninterrupted = start(stopped, **hold_after(hold_at, tmp_path)), start(whole)
    wait_held(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    at_stop = torch.load(stopped / "last.pt", weights_only=True)
    run_hvdat("train", *args, "--out", stopped, "--resume", check=True)
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.communicate()
    resumed, reference = read_metrics(stopped), read_metrics(whole)
    a = torch.load(stopped / "last.pt", weights_only=True)
    b = torch.load(whole / "last.pt", weights_only=True)
    assert _same(a["model"], b["model"]) and _same(a["optimizer"]["state"], b["optimizer"]["state"])
    assert _same(a["replays"], b["replays"]) and _same(a["accelat"], b["accelat"])
    shards = [checkpoint.load_rank_states(run, b["rank_shards"], b["step"]) for run in (stopped, whole)]
    assert _same(*shards)
    return at_stop, resumed, reference, shards[1]


@pytest.mark.parametrize("method", ["free", "deat+accelat"])
def test_method_trains_and_resumes_exactly(tmp_path, method):
    args = BASE + (FREE if method == "free" else DEAT)
    # free: the third of epoch 0's 16 minibatches; deat: the first of epoch 1's (8 per epoch), after K changed
    at_stop, resumed, reference, shards = stopped_and_resumed(tmp_path, args, 3 if method == "free" else 9)
    keys = KEYS + (
        ("deat_k", "deat_mg", "deat_next_k", "accelat_mean", "accelat_cut", "lr_scale") if "deat" in method else ()
    )
    assert [{k: m[k] for k in keys} for m in resumed] == [{k: m[k] for k in keys} for m in reference]
    if method == "free":
        assert (at_stop["epoch"], at_stop["batch"], at_stop["step"]) == (0, 3, 6)  # stopped mid-epoch, 2 replays each
        assert [m["step"] for m in reference] == [32]  # 16 minibatches x 2 replays
        assert reference[-1]["train_acc"] > 0.15 and reference[-1]["test_clean_acc"] > 0.15  # chance: 0.1
        deltas = [shard["replays"]["free_delta"] for shard in shards]
        assert all(d.shape == (16, 1, 16, 16) and 0 < d.abs().max() <= EPS + 1e-6 for d in deltas)
        assert not torch.equal(*deltas)  # each rank carries its own
    else:
        assert (at_stop["epoch"], at_stop["batch"], at_stop["step"]) == (1, 1, 10)  # after DEAT had changed K to 2
        ks = [m["deat_k"] for m in reference]
        assert ks == [1, 2, 2]  # K=2 after epoch 0; epoch 1's MG sets the threshold
        assert all(m["deat_next_k"] == n["deat_k"] for m, n in zip(reference, reference[1:]))
        assert reference[-1]["deat_next_k"] in (2, 3)
        assert [m["step"] for m in reference] == [8, 24, 40]  # K optimiser steps per minibatch
        assert all(m["deat_mg"] > 0 for m in reference)
        assert [m["accelat_cut"] for m in reference] == [False, False, True]
        assert [m["lr_scale"] for m in reference] == pytest.approx([1, 1, 0.8])
        lrs = [m["lr"] for m in reference]  # the rate in force during each epoch: cut from the one after
        assert lrs == pytest.approx([lrs[0]] * 3)
