"""The fault matrix: real faults injected into real 2-rank jobs (Gloo; MPI for evaluation), each checking the
failure report (its first line names the rank, its host and the cause), what survived, and how the job continues.

The README's "What survives what" table names these tests. One uninterrupted reference run serves every case.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import psutil
import pytest
import torch
from conftest import HVDAT, QUICK, REPO, assert_one_line_error, read_metrics, run_hvdat

# 10 steps of 2 x 16 per epoch: an epoch and its evaluation take seconds, so a kill after epoch 1 lands in epoch 2.
ARGS = ["--np", "2", *QUICK, "--batch-size", "16", "--train-samples", "320", "--epochs", "2"]
TIMING = {"images_per_sec", "seconds", "train_seconds"}
HOST = socket.gethostname()


def start(*args, cwd=REPO) -> subprocess.Popen:
    return subprocess.Popen(
        HVDAT + [str(a) for a in args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=cwd,
    )


def wait_until(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.communicate()}"
        assert time.monotonic() < deadline, "the job never reached the point of the fault"
        time.sleep(0.05)


def count(path: Path, text: str) -> int:
    return path.read_text(errors="replace").count(text) if path.is_file() else 0


def worker(proc: subprocess.Popen, module: str, rank: int) -> psutil.Process:
    """The worker process of `rank` under this hvdat command (the rank horovodrun gave it, in its environment)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                env = child.environ()
                if module in child.cmdline() and rank == int(
                    env.get("HOROVOD_RANK", env.get("OMPI_COMM_WORLD_RANK", -1))
                ):
                    return child
        time.sleep(0.05)
    raise AssertionError(f"no {module} worker of rank {rank}")


def stop_rank_and_wait(proc: subprocess.Popen, rank: int):
    """SIGSTOP the training worker of `rank` and wait for the job to end: the job's stdout, stderr, the seconds it
    took to end, and whether the stopped process outlived the job (it is killed then, after the look)."""
    stopped = worker(proc, "hvdat.train.worker", rank)
    stopped.suspend()
    began = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        took, outlived = time.monotonic() - began, False
        with contextlib.suppress(psutil.Error):
            outlived = stopped.is_running() and stopped.status() != psutil.STATUS_ZOMBIE
        with contextlib.suppress(psutil.Error):
            stopped.kill()
    return stdout, stderr, took, outlived


def headline(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert lines, stderr
    return lines[0]


def continue_command(stderr: str) -> List[str]:
    line = next(line for line in stderr.splitlines() if line.strip().startswith("continue with: "))
    argv = shlex.split(line.split("continue with: ", 1)[1])
    assert argv[0] == "hvdat"
    return argv[1:]


def same_metrics(a: Path, b: Path) -> None:
    ma, mb = read_metrics(a), read_metrics(b)
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in ma] == [
        {k: v for k, v in r.items() if k not in TIMING} for r in mb
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every case compares with (2 epochs)."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    run_hvdat("train", *ARGS, "--out", out, check=True)
    return out


def test_sigkill_of_a_rank_names_it_keeps_last_pt_and_resume_matches(tmp_path, reference):
    """SIGKILL (what the out-of-memory killer sends) to rank 1 in epoch 2: the report names rank 1, its host and the
    signal, calls rank 0's HorovodInternalError a consequence, and ends with the last good checkpoint and the exact
    --resume command, which finishes the run with the reference's metrics."""
    out = tmp_path / "killed"
    proc = start("train", *ARGS, "--out", out, "--json")
    log = out / "logs" / "train.log"
    wait_until(lambda: count(log, '"event":"epoch"') >= 1 and (out / "last.pt").is_file(), proc)
    worker(proc, "hvdat.train.worker", 1).kill()
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 1, stderr
    assert headline(stderr) == (
        f"error: training failed: rank 1 on host {HOST} was killed by SIGKILL: possibly the out-of-memory killer "
        "(or a `kill -9`)"
    ), stderr
    assert "consequence: rank 0 raised HorovodInternalError" in stderr
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert f"last good checkpoint: {out / 'last.pt'} (epoch {state['epoch']} done, step {state['step']})" in stderr
    report = json.loads(stdout)  # --json: the same fields
    assert report["failure"]["rank"] == 1 and report["failure"]["host"] == HOST
    assert report["failure"]["signal"] == "SIGKILL" and report["failure"]["kind"] == "signal"
    assert "HorovodInternalError" in report["failure"]["consequences"]["0"]
    assert report["way_back"]["epoch"] == state["epoch"] and report["way_back"]["resume"]
    command = continue_command(stderr)
    assert command[-1] == "--resume" and report["way_back"]["command"] == shlex.join(["hvdat", *command])
    assert "Traceback" not in stderr

    run_hvdat(*command, check=True)
    same_metrics(out, reference)


def test_sigkill_inside_the_compressed_allgather_names_the_rank_and_resume_matches(tmp_path_factory):
    """--compression ef-sign: packed gradients go through Horovod's allgather. Rank 1 SIGKILLs itself right after
    handing step 14's first payload to the allgather (tests/fault_injection/sitecustomize.py), so rank 0 is inside
    that collective when its peer dies. The report names rank 1 and the signal; epoch 1's last.pt and each rank's
    error-feedback residuals (rank-state/) are kept, and --resume ends with the uninterrupted run's metrics."""
    folder = tmp_path_factory.mktemp("allgather")
    args = ["train", *ARGS, "--compression", "ef-sign"]
    reference, out = folder / "reference", folder / "killed"
    run_hvdat(*args, "--out", reference, check=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests' / 'fault_injection'}:{REPO}"}
    proc = subprocess.run(
        HVDAT + [*map(str, args), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        env={**env, "HVDAT_TEST_SIGKILL_IN_ALLGATHER": "1:14"},
    )

    assert proc.returncode == 1, proc.stderr
    assert headline(proc.stderr) == (
        f"error: training failed: rank 1 on host {HOST} was killed by SIGKILL: possibly the out-of-memory killer "
        "(or a `kill -9`)"
    ), proc.stderr
    assert "consequence: rank 0 " in proc.stderr
    assert [m["epoch"] for m in read_metrics(out)] == [1]  # the kill landed in epoch 2
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["rank_shards"] == 2
    assert sorted(p.name for p in (out / "rank-state").iterdir()) == ["rank-0.pt", "rank-1.pt"]
    command = continue_command(proc.stderr)
    assert command[-1] == "--resume"
    run_hvdat(*command, check=True)
    same_metrics(out, reference)


def test_a_corrupt_last_pt_is_named_in_one_line_with_best_pt_offered(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    with open(run / "last.pt", "r+b") as handle:
        handle.truncate(1000)  # what a copy cut short leaves
    proc = run_hvdat("train", *ARGS, "--epochs", "3", "--out", run, "--resume")
    assert_one_line_error(proc, f"{run / 'last.pt'} is truncated or corrupt", f"cp {run / 'best.pt'}", "--overwrite")


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the full-disk case mounts a tmpfs: run the tests as root (CI does)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    """Fill the disk to its last page."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        for size in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while handle.write(b"\0" * size):
                    pass


def test_a_full_disk_is_a_clear_error_and_the_previous_last_pt_survives(small_disk):
    """The disk fills up after epoch 1's checkpoint: the job ends (no hang on the launcher's own log, which is on
    that disk too), the report says the disk is full, and last.pt of epoch 1 still loads and is offered."""
    out = small_disk / "run"
    proc = start("train", *ARGS, "--out", out)
    log = out / "logs" / "train.log"
    wait_until(lambda: count(log, '"event":"epoch"') >= 1 and (out / "last.pt").is_file(), proc)
    fill(small_disk)
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 1, stderr
    first = headline(stderr)
    assert first.startswith(f"error: training failed: rank 0 on host {HOST} raised OSError: [Errno 28] No space"), first
    assert "the disk is full" in first
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert f"last good checkpoint: {out / 'last.pt'} (epoch 1 done" in stderr
    assert continue_command(stderr)[-1] == "--resume"


def test_a_stopped_rank_ends_the_job_within_the_gloo_timeout(tmp_path):
    """SIGSTOP of rank 1 (a hang): with --gloo-timeout 8 rank 0 gives up waiting, and the report names rank 1, not
    the rank that timed out."""
    out = tmp_path / "stopped"
    # the whole digits training split (45 steps): the epoch must still be running when the rank is stopped
    proc = start("train", *ARGS, "--epochs", "1", "--train-samples", "1437", "--gloo-timeout", "8", "--out", out)
    log = out / "logs" / "train.log"
    wait_until(lambda: count(log, '"event":"batch"') >= 2, proc)
    stdout, stderr, took, outlived = stop_rank_and_wait(proc, 1)

    assert proc.returncode == 1, stderr
    assert took < 60, took  # 8 s of Gloo timeout, then horovodrun ends the stopped rank
    assert headline(stderr).startswith(f"error: training failed: rank 1 on host {HOST} stopped responding"), stderr
    assert "consequence: rank 0 timed out waiting 8000 ms for another rank" in stderr
    assert "no checkpoint to resume from (none was written yet)" in stderr


def test_a_stopped_rank_under_mpi_is_named_by_the_watchdog_and_resume_matches(tmp_path, reference):
    """MPI has no Gloo timeout: a SIGSTOPped rank used to hang the job for ever. The launcher's watchdog sees rank 1's
    heartbeats stop (--hang-timeout 8), ends the job and names the rank, its host and why; rank 0, blocked in a
    collective with it, kept beating and is not blamed. --resume continues from epoch 1 to the reference's metrics."""
    out = tmp_path / "stopped"
    proc = start("train", *ARGS, "--launcher", "mpi", "--hang-timeout", "8", "--out", out)
    log = out / "logs" / "train.log"
    wait_until(lambda: count(log, '"event":"epoch"') >= 1 and (out / "last.pt").is_file(), proc)
    stdout, stderr, took, outlived = stop_rank_and_wait(proc, 1)

    assert proc.returncode == 1, stderr
    assert took < 30, took  # 8 s of silence, then a check each second
    assert headline(stderr) == (
        f"error: training failed: rank 1 on host {HOST} stopped responding (no heartbeat for 8 s): hung or stopped"
    ), stderr
    assert not outlived  # the watchdog ended the stopped rank with the job
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    command = continue_command(stderr)
    assert command[-1] == "--resume"
    run_hvdat(*command, check=True)
    same_metrics(out, reference)


SLOW_BUT_HEALTHY = """
import pickle, time, torch
from hvdat.runtime.heartbeat import Heartbeat
with Heartbeat(interval=0.25):
    end = time.monotonic() + 2
    while time.monotonic() < end:  # pure Python: the main thread holds the GIL but for its switch interval
        sum(i * i for i in range(1000))
    a = torch.randn(1500, 1500)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:  # long torch ops (a slow first batch, an evaluation chunk)
        a = torch.tanh(a @ a)
    state = {f"layer{i}": torch.randn(1 << 20) for i in range(32)}  # a 128 MB checkpoint write
    torch.save(state, CKPT)
    time.sleep(1)  # blocked (a collective, a slow disk): no GIL held at all
"""


def test_the_watchdog_does_not_fire_on_a_slow_healthy_rank(tmp_path):
    """The heartbeat thread beats through what a healthy rank's main thread does for long: Python loops, long torch
    ops, a large checkpoint write, blocking waits. A 2 s --hang-timeout against 0.25 s beats never fires."""
    from hvdat.launch.job import run_job

    script = tmp_path / "slow.py"
    checkpoint = tmp_path / "ckpt.pt"
    script.write_text(f"CKPT = {str(checkpoint)!r}\n" + SLOW_BUT_HEALTHY)
    result = run_job(
        [sys.executable, str(script)], tmp_path / "log", lambda event: None, {"PYTHONPATH": str(REPO)},
        hang_timeout=2.0, rank_hosts=("localhost",),
    )  # fmt: skip
    assert result.returncode == 0, result.tails
    assert not result.observed.hung
    assert result.observed.ended == {0} and checkpoint.stat().st_size > 128e6


ORPHANING_LAUNCHER = """
import subprocess, sys
sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
# a worker detached from the launcher's session (as an elastic driver that died leaves them), and a bystander that
# names the module but another job's config
worker = subprocess.Popen(sleep + ["hvdat.train.worker", CONFIG], start_new_session=True)  # holds the job's output
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
other = subprocess.Popen(sleep + ["hvdat.train.worker", CONFIG + ".x"], start_new_session=True, **quiet)
print(worker.pid, other.pid, flush=True)
"""


def test_workers_that_outlive_the_launcher_are_ended(tmp_path):
    """A job whose launcher exits while one of its workers still runs (outside its process group, holding the output
    pipe): run_job ends that worker, by its command line, and leaves a process of another job alone."""
    from hvdat.launch.job import run_job

    config = str(tmp_path / "config.json")
    script = tmp_path / "launcher.py"
    script.write_text(f"CONFIG = {config!r}\n" + ORPHANING_LAUNCHER)
    lines = []
    started = time.monotonic()
    result = run_job(
        [sys.executable, str(script)], tmp_path / "log", lambda event: None, echo=lines.append,
        workers=("hvdat.train.worker", config),
    )  # fmt: skip
    worker, other = (int(pid) for pid in lines[0].split())
    try:
        assert result.returncode == 0 and result.leftover_workers == [worker]
        assert time.monotonic() - started < 8  # not the reader's 10 s wait on the pipe the worker held
        assert not running(worker)
        assert running(other)
        assert f"ended them (pids {worker})" in (tmp_path / "log").read_text()
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(other).kill()


def running(pid: int) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


def test_sigkill_during_mpi_eval_keeps_its_batches_and_the_rerun_continues(tmp_path, reference):
    """MPI this time: mpirun's own report of the killed rank is read. The rerun (the report's command) skips the
    batches done before the kill and gives the uninterrupted evaluation's result."""
    args = ["eval", reference, "--attack", "pgd", "--steps", "10", "--eps", "0.1", "--n-examples", "160"]
    args += ["--batch-size", "8", "--np", "2", "--launcher", "mpi", "--threads", "1"]
    report = tmp_path / "pgd.json"
    proc = start(*args, "--out", report)
    log = report.with_suffix(".work") / "logs" / "eval.log"
    wait_until(lambda: count(log, '"stage":"pgd"') >= 3, proc)  # the 20 clean batches and 3 of PGD's are done
    worker(proc, "hvdat.eval.worker", 1).kill()
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode != 0, stderr
    assert headline(stderr) == (
        f"error: evaluation failed: rank 1 on host {HOST} was killed by SIGKILL: possibly the out-of-memory killer "
        "(or a `kill -9`)"
    ), stderr
    kept = next(line for line in stderr.splitlines() if "kept:" in line)
    done = int(kept.split("kept: ")[1].split(" finished batches")[0])
    assert 23 <= done < 40, kept  # PGD attacks at most 20 batches of survivors
    command = continue_command(stderr)
    resumed = json.loads(run_hvdat(*command, "--json", check=True).stdout)
    assert resumed["resumed_batches"] >= done and resumed["n_examples"] == 160
    assert resumed["batches"]["clean"] == 20 and 0 < resumed["resumed_share"] < 1


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory) -> Path:
    """The digits test images as PNG files: unlabeled images of the digits models' shape."""
    from PIL import Image

    from hvdat.data import load_splits

    folder = tmp_path_factory.mktemp("digit-images")
    for i, image in enumerate(load_splits("digits", None, train_samples=1).test.images):
        Image.fromarray(np.asarray(image[0])).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def slow_labeller(tmp_path_factory) -> Path:
    """An untrained preact-resnet18 for digits: labelling with it takes a few seconds, so a kill lands mid-job."""
    from hvdat.data import load_splits
    from hvdat.models import build_model

    splits = load_splits("digits", None, train_samples=1)
    torch.manual_seed(0)
    model = build_model("preact-resnet18", splits.num_classes, splits.shape, splits.mean, splits.std)
    path = tmp_path_factory.mktemp("labeller") / "model.pt"
    state = {"model": model.state_dict(), "arch": "preact-resnet18", "dataset": "digits", "num_classes": 10}
    torch.save({**state, "shape": list(splits.shape), "config": {"dataset": "digits", "data_dir": None}}, path)
    return path


def test_sigkill_during_pseudo_label_keeps_its_batches_and_the_rerun_continues(tmp_path, slow_labeller, digit_images):
    args = ["pseudo-label", "--model", slow_labeller, "--data-dir", digit_images, "--np", "2", "--batch-size", "4"]
    args += ["--limit", "160"]
    out = tmp_path / "labels.npz"
    parts = Path(f"{out}.parts")
    proc = start(*args, "--out", out)
    wait_until(lambda: len(list(parts.glob("*/rank-1-*.npz"))) >= 3, proc)
    worker(proc, "hvdat.pseudo_label.worker", 1).kill()
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 1, stderr
    assert headline(stderr).startswith(f"error: pseudo-labelling failed: rank 1 on host {HOST} was killed by SIGKILL")
    assert f"in {parts}; the same command continues" in stderr
    assert not out.exists()
    summary = json.loads(run_hvdat(*continue_command(stderr), "--json", check=True).stdout)
    assert summary["resumed_images"] >= 3 * 4 and summary["images"] == 160
    assert not parts.exists()
    labels = np.load(out)
    assert list(labels["files"]) == [f"{i:04d}.png" for i in range(160)] and labels["images"].shape == (160, 1, 16, 16)
