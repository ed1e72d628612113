"""Graceful stop and crash safety, with real processes: SIGTERM to `hvdat train` mid-epoch, and SIGKILL during a
checkpoint write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import HVDAT, QUICK, REPO, read_metrics, run_hvdat

from hvdat.compression import COMPRESSORS
from hvdat.runtime import checkpoint

# 2 ranks, 44 steps per epoch
ARGS = ["--np", "2", *QUICK, "--epochs", "1", "--batch-size", "16"]


def hold_after(step: int, folder: Path) -> dict:
    """Environment that makes every worker of a job hold after its `step`-th minibatch until it is signalled
    (tests/fault_injection/sitecustomize.py): a SIGTERM sent once `wait_held` returns stops the job right after
    that minibatch, on a fast machine or a slow one."""
    return {
        "PYTHONPATH": f"{REPO / 'tests' / 'fault_injection'}:{REPO}",
        "HVDAT_TEST_HOLD_AT_STEP": f"{step}:{folder / 'hold'}",
    }


def wait_held(folder: Path, proc: subprocess.Popen) -> None:
    _wait_for(folder / "hold.0", "", proc)  # the (empty) file appears once rank 0 holds


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.communicate()}"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


def _same(a, b) -> bool:
    """Equal checkpoint parts: tensors exactly, containers element by element."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


# qsgd's per-rank state is natural's random stream (the same object inside it; tests/test_qsgd.py checks that a
# restored one draws the same bytes), so its ~1-minute stop/resume case would repeat natural's
@pytest.mark.parametrize("compression", [name for name in COMPRESSORS.names() if name != "qsgd"])
def test_sigterm_stops_cleanly_and_resume_matches_an_uninterrupted_run(tmp_path, compression):
    """For every compressor: its per-rank state (ef-sign's residuals and momentum, natural's RNG) and the LR it
    applies after the optimizer's state is loaded must continue exactly where the stopped run left them."""
    args = [*ARGS, "--compression", compression]
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(
        HVDAT + ["train", *args, "--out", str(stopped), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **hold_after(5, tmp_path)},
        cwd=REPO,
    )
    wait_held(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)

    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    assert "stopped by signal at epoch 1" in stderr and "--resume" in stderr, stderr
    log = (stopped / "logs" / "train.log").read_text()
    assert "exited with non-zero" not in log, log
    state = torch.load(stopped / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch"], state["step"]) == (0, 5, 5)
    report = json.loads(stdout)["stopped"]  # --json still gives scripts an object: where it stopped
    assert (report["epoch"], report["batch"], report["step"]) == (0, state["batch"], state["step"])
    assert report["checkpoint"] == str(stopped / "last.pt")
    assert not (stopped / "metrics.jsonl").exists()

    run_hvdat("train", *args, "--out", stopped, "--resume", check=True)
    whole = tmp_path / "whole"
    run_hvdat("train", *args, "--out", whole, check=True)

    resumed, reference = read_metrics(stopped), read_metrics(whole)
    keys = ("epoch", "step", "train_loss", "train_acc", "test_clean_acc", "test_robust_acc", "lr")
    assert [{k: m[k] for k in keys} for m in resumed] == [{k: m[k] for k in keys} for m in reference]
    a = torch.load(stopped / "last.pt", weights_only=True)
    b = torch.load(whole / "last.pt", weights_only=True)
    assert _same(a["model"], b["model"])
    assert _same(a["optimizer"]["state"], b["optimizer"]["state"])  # SGD's momentum (ef-sign keeps its own)
    shards = [checkpoint.load_rank_states(run, b["rank_shards"], b["step"]) for run in (stopped, whole)]
    assert _same(*shards)  # each rank's own state: compressor (and BN statistics mid-epoch)
    if compression in ("ef-sign", "natural"):
        assert b["rank_shards"] == 2 and all(shard["compression"] for shard in shards[0])


WRITER = textwrap.dedent("""
    import sys, torch
    from hvdat.runtime import checkpoint
    path = sys.argv[1]
    checkpoint.save_atomic({"model": {"w": torch.zeros(4)}, "arch": "small-cnn", "version": 0}, path)
    print("saved", flush=True)
    big = torch.randn(48 * 2**20 // 4)  # 48 MB: each write takes long enough to be caught in the middle
    version = 1
    while True:
        checkpoint.save_atomic({"model": {"w": big}, "arch": "small-cnn", "version": version}, path)
        version += 1
""")


def test_sigkill_during_checkpoint_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    from hvdat.runtime import checkpoint

    path = tmp_path / checkpoint.LAST
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline().strip() == "saved"
    tmp = tmp_path / f".{checkpoint.LAST}.{proc.pid}.tmp"
    deadline = time.monotonic() + 60
    while not (tmp.exists() and tmp.stat().st_size > 1 << 20):  # a write is under way
        assert time.monotonic() < deadline and proc.poll() is None
    proc.kill()
    proc.wait()

    assert tmp.exists() and tmp.stat().st_size < 48 * 2**20, "the kill should land mid-write"
    with open(tmp, "rb") as partial:  # what a non-atomic write would have left as last.pt
        try:
            torch.load(partial, weights_only=True)
            raise AssertionError("a half-written file loaded")
        except AssertionError:
            raise
        except Exception:
            pass
    state = checkpoint.load(path, arch="small-cnn")
    assert state["version"] >= 0 and state["model"]["w"].numel() in (4, 48 * 2**20 // 4)
