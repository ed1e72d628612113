"""Elastic training on this machine: 3 workers under three names for it, one SIGKILLed mid-epoch, 2 finish. The job
uses ef-sign, whose per-rank residuals travel in the elastic state (hvdat.rank_state)."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import time

import psutil
import pytest
import torch
from conftest import HVDAT, QUICK, REPO, assert_one_line_error, read_metrics, run_hvdat

COMMIT_EVERY = 5


@pytest.fixture
def discovery(tmp_path):
    # Horovod blacklists a failed worker's whole host, so each worker gets its own name for this machine.
    script = tmp_path / "discover.sh"
    script.write_text('#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\necho "$(hostname):1"\n')
    script.chmod(0o755)
    return script


def _elastic_args(discovery, out):
    return [
        "train",
        "--min-np",
        "2",
        "--max-np",
        "3",
        "--np",
        "3",
        "--host-discovery-script",
        str(discovery),
        "--network-interfaces",
        "lo",
        *QUICK,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--commit-every",
        str(COMMIT_EVERY),
        "--compression",
        "ef-sign",
        "--out",
        str(out),
    ]


def test_dry_run_builds_an_elastic_gloo_command(discovery, tmp_path):
    proc = run_hvdat(*_elastic_args(discovery, tmp_path / "r"), "--dry-run", check=True)
    argv = shlex.split(proc.stdout.replace("\n", ""))
    assert argv[1:10] == [
        "-np",
        "3",
        "--min-np",
        "2",
        "--max-np",
        "3",
        "--host-discovery-script",
        str(discovery),
        "--gloo",
    ]
    assert argv[-3:-1] == ["hvdat.train.elastic", "--config"]


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--launcher", "mpi"], "runs on Gloo only"),
        (["--max-np", "1"], "need 1 <= --min-np <= --max-np"),
        (["--np", "5"], "outside --min-np"),
        (["-H", "localhost:3"], "not both"),
        (["--commit-every", "0"], "--commit-every must be >= 1"),
    ],
)
def test_bad_elastic_options_are_one_line_errors(discovery, tmp_path, extra, fragment):
    assert_one_line_error(run_hvdat(*_elastic_args(discovery, tmp_path / "r"), *extra, "--dry-run"), fragment)


def test_not_executable_discovery_script_is_a_one_line_error(discovery, tmp_path):
    discovery.chmod(0o644)
    assert_one_line_error(run_hvdat(*_elastic_args(discovery, tmp_path / "r"), "--dry-run"), "chmod +x")


def _wait_for_batch(log, proc, at_least: int, timeout: float = 240) -> None:
    pattern = re.compile(r'"event":"batch","epoch":0,"batch":(\d+)')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if any(int(n) >= at_least for n in pattern.findall(text)):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"no batch >= {at_least} in {log}")


def _worker(proc: subprocess.Popen, rank: str) -> psutil.Process:
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if (
                "hvdat.train.elastic" in child.cmdline()
                and child.environ().get("HOROVOD_RANK") == rank
                and "python" in os.path.basename(child.cmdline()[0])
            ):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no worker with rank {rank}")


def test_job_survives_a_sigkilled_worker_and_continues_from_the_last_commit(discovery, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOROVOD_GLOO_TIMEOUT_SECONDS": "5"}
    proc = subprocess.Popen(
        HVDAT + _elastic_args(discovery, out) + ["--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        _wait_for_batch(out / "logs" / "train.log", proc, at_least=2 * COMMIT_EVERY)
        _worker(proc, "2").send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]

    log = (out / "logs" / "train.log").read_text()
    resets = [json.loads(line.split("@@hvdat ", 1)[1]) for line in log.splitlines() if '"event":"reset"' in line]
    assert len(resets) == 1, resets
    reset = resets[0]
    # it rolled back to a commit made mid-epoch 0 (not to the start), and re-formed with the 2 survivors
    assert reset["world_size"] == 2 and reset["epoch"] == 0
    assert reset["batch"] >= 2 * COMMIT_EVERY and reset["batch"] % COMMIT_EVERY == 0
    assert reset["step"] == reset["batch"]

    summary = json.loads(stdout)
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2] and [m["world_size"] for m in metrics] == [2, 2]
    assert summary["final"]["epoch"] == 2
    # epoch 0 = the committed steps at 3 workers (48 images each) + the uncommitted rest, split over the 2 survivors
    # (ElasticSampler: ceil(rest / 2) each, in full batches of 16); nothing committed was trained twice
    remaining = 1437 - reset["batch"] * 48
    assert metrics[0]["step"] == reset["batch"] + math.ceil(remaining / 2) // 16
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == metrics[-1]["step"]
