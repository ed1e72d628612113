"""Stopping, resuming and elastic training across the hosts of the one-machine test cluster (tests/cluster.py).

Jobs start from inside the first host, as in tests/test_multihost.py: a 2-host run stopped by SIGTERM and resumed
equals an uninterrupted 2-host run; an elastic job loses the worker (and the sshd) of its third host and finishes on
two; an elastic job grows to a third host that appears in its discovery file."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, List, Optional

import psutil
import pytest
import torch
from conftest import HVDAT, QUICK, REPO, read_metrics
from test_multihost import cluster_opts

from hvdat.runtime import checkpoint

TRAIN = [*QUICK, "--epochs", "2", "--batch-size", "16", "--threads", "1", "--seed", "7"]
DIGITS_TRAIN = 1437  # the digits training split (1797 images, 360 held out for test)
BATCH = 16
COMMIT_EVERY = 5
ACCEPTED = "Accepted publickey for root"


def ssh_opts(cluster) -> list:
    return [
        "--ssh-port",
        str(cluster.port),
        "--ssh-identity-file",
        str(cluster.key),
        "--network-interfaces",
        "eth0",
    ]


def start_on_first_host(cluster, args: list, home: Path, env: Optional[dict] = None) -> subprocess.Popen:
    """`hvdat ARGS` on the first host, in the background. `ip netns exec` execs, so the pid is hvdat's own."""
    home.mkdir(exist_ok=True)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home), **(env or {})}
    return subprocess.Popen(
        cluster.argv_on(cluster.hosts[0], [*HVDAT, *map(str, args)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=REPO,
    )


def finish(proc: subprocess.Popen, timeout: float = 240):
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stdout, stderr


def log_events(log: Path) -> List[dict]:
    """Every `@@hvdat` event in a job's log, in order."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [json.loads(line.split("@@hvdat ", 1)[1]) for line in text.splitlines() if "@@hvdat {" in line]


def wait_for_event(log: Path, proc: subprocess.Popen, match: Callable[[dict], bool], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in log_events(log) if match(e)]
        if found:
            return found[-1]
        assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.communicate()}"
        time.sleep(0.1)
    raise AssertionError(f"no such event in {log}:\n" + log.read_text(errors="replace")[-3000:])


def write_hosts(path: Path, hosts: List[str]) -> None:
    """The discovery file, replaced whole (the driver polls the script every second and must never read half)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{h}:1\n" for h in hosts))
    os.replace(tmp, path)


def workers_on(cluster, host: str, out: Path, module: str) -> List[psutil.Process]:
    """This job's worker processes (python -m MODULE --config OUT/config.json) on `host`, not the shells around
    them."""
    config, found = str(out / "config.json"), []
    for pid in cluster.pids(host):
        try:
            proc = psutil.Process(pid)
            cmdline = proc.cmdline()
        except psutil.NoSuchProcess:
            continue
        if cmdline and os.path.basename(cmdline[0]).startswith("python") and module in cmdline and config in cmdline:
            found.append(proc)
    return found


def assert_no_worker_left(cluster, host: str, out: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while workers_on(cluster, host, out, "hvdat.train.worker"):
        assert time.monotonic() < deadline, f"a worker of {out} is still running on {host}"
        time.sleep(0.2)


# --- 1. SIGTERM on a 2-host job, then --resume ---------------------------------------------------------------------


def test_two_host_job_stopped_by_sigterm_resumes_to_the_uninterrupted_result(cluster, tmp_path):
    args = ["train", *cluster_opts(cluster, 2), *TRAIN]
    stopped, whole, home = tmp_path / "stopped", tmp_path / "whole", tmp_path / "home"
    log = stopped / "logs" / "train.log"

    proc = start_on_first_host(cluster, [*args, "--out", stopped, "--json"], home)
    wait_for_event(log, proc, lambda e: e["event"] == "batch")  # mid-epoch: a progress event came
    proc.send_signal(signal.SIGTERM)
    returncode, stdout, stderr = finish(proc, timeout=120)

    # every rank stopped after the same step and rank 0 wrote the position
    [report] = [e for e in log_events(log) if e["event"] == "stopped"]
    state = torch.load(stopped / "last.pt", weights_only=True)
    assert 0 < state["batch"] < 44 and state["step"] == state["epoch"] * 44 + state["batch"], state["batch"]
    assert (report["epoch"], report["batch"], report["step"]) == (state["epoch"], state["batch"], state["step"])
    # the remote rank took part in the stop: its own BN statistics are in its shard (the filesystem is shared here)
    assert state["rank_shards"] == 2
    assert checkpoint.load_rank_state(stopped, 1, state["step"])["buffers"]
    assert not (stopped / "metrics.jsonl").exists() or len(read_metrics(stopped)) == state["epoch"]
    assert_no_worker_left(cluster, cluster.hosts[1], stopped)

    resumed = start_on_first_host(cluster, [*args, "--out", stopped, "--resume"], home)
    assert finish(resumed)[0] == 0
    reference = start_on_first_host(cluster, [*args, "--out", whole], home)
    assert finish(reference)[0] == 0

    keys = ("epoch", "step", "train_loss", "train_acc", "test_clean_acc", "test_robust_acc", "lr", "world_size")
    a, b = read_metrics(stopped), read_metrics(whole)
    assert [m["epoch"] for m in a] == [1, 2]
    assert [{k: m[k] for k in keys} for m in a] == [{k: m[k] for k in keys} for m in b]
    ours, theirs = (torch.load(run / "last.pt", weights_only=True)["model"] for run in (stopped, whole))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)

    # the launcher signals its own host's worker, not horovodrun: horovodrun would end the remote rank's `ssh`
    # (exit 255) while that rank was still finishing the agreed stop, and the job would report a failure
    assert returncode == 130, (returncode, stdout, stderr)
    assert "Traceback" not in stdout + stderr
    assert "stopped by signal" in stderr and "--resume" in stderr, stderr
    assert json.loads(stdout)["stopped"]["checkpoint"] == str(stopped / "last.pt")


# --- 2. elastic: a host lost, a host added -------------------------------------------------------------------------


@pytest.fixture
def discovery(tmp_path):
    """A discovery script that prints the hosts listed in a file the test edits; returns (script, file)."""
    hosts, script = tmp_path / "hosts", tmp_path / "discover.sh"
    script.write_text(f"#!/bin/sh\ncat {hosts}\n")
    script.chmod(0o755)
    return script, hosts


def elastic_args(cluster, script: Path, out: Path, np: int) -> list:
    return [
        "train",
        "--min-np",
        "2",
        "--max-np",
        "3",
        "--np",
        str(np),
        "--host-discovery-script",
        script,
        *ssh_opts(cluster),
        *TRAIN,
        "--commit-every",
        COMMIT_EVERY,
        "--out",
        out,
    ]


def expected_steps(events: List[dict], epochs: int) -> List[tuple]:
    """(step, world size) at the end of each epoch, from the start and reset events: each world trains its share
    of the epoch's samples not yet committed as done (ElasticSampler: ceil(rest / world) per rank, in full batches);
    a rollback redoes only what came after the last commit, and nothing committed is trained twice."""
    world = next(e for e in events if e["event"] == "start")["world_size"]
    resets = [e for e in events if e["event"] == "reset"]
    step, out = 0, []
    for epoch in range(epochs):
        done_batches, done_samples = 0, 0
        for reset in (r for r in resets if r["epoch"] == epoch):
            assert reset["batch"] % COMMIT_EVERY == 0 and reset["step"] == step + reset["batch"], reset
            done_samples += (reset["batch"] - done_batches) * BATCH * world
            done_batches, world = reset["batch"], reset["world_size"]
        step += done_batches + math.ceil((DIGITS_TRAIN - done_samples) / world) // BATCH
        out.append((step, world))
    return out


def elastic_worker(cluster, host: str, out: Path) -> psutil.Process:
    [worker] = workers_on(cluster, host, out, "hvdat.train.elastic")
    return worker


def test_elastic_job_loses_its_third_host_and_finishes_on_two(cluster, discovery, tmp_path):
    script, hosts = discovery
    third = cluster.hosts[2]
    write_hosts(hosts, cluster.hosts)
    out = tmp_path / "run"
    log = out / "logs" / "train.log"
    # a worker that does not see its peer close the connection waits this long before the ring re-forms; it also
    # bounds the skew of the three workers' start-up (ssh, imports) at the first rendezvous
    env = {"HOROVOD_GLOO_TIMEOUT_SECONDS": "15"}
    proc = start_on_first_host(cluster, [*elastic_args(cluster, script, out, 3), "--json"], tmp_path / "home", env)
    try:
        seen = wait_for_event(
            log, proc, lambda e: e["event"] == "batch" and e["epoch"] == 0 and e["batch"] >= 2 * COMMIT_EVERY
        )
        elastic_worker(cluster, third, out).kill()  # SIGKILL: the host's worker dies without a word
        cluster.stop_sshd(third)  # and the host is gone: nothing can be started there again
        write_hosts(hosts, cluster.hosts[:2])
        returncode, stdout, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.start_sshd(third)
    assert returncode == 0, (stdout, stderr[-3000:])

    assert_reformed_on_two_hosts(log, out, stdout, seen, epochs=2)


def assert_reformed_on_two_hosts(log: Path, out: Path, stdout: str, seen: dict, epochs: int) -> None:
    """A 3-host job that lost one host in epoch 0, after the fault was seen at batch `seen`: it rolled back to a commit
    no earlier than the last one made before the fault (nothing committed lost), re-formed on 2 ranks, and trained
    `epochs` epochs with the step arithmetic of that history (nothing trained twice)."""
    events = log_events(log)
    assert next(e for e in events if e["event"] == "start")["world_size"] == 3
    resets = [e for e in events if e["event"] == "reset"]
    assert resets and all(r["world_size"] == 2 for r in resets), resets
    assert resets[0]["epoch"] == 0 and resets[0]["batch"] >= seen["batch"] // COMMIT_EVERY * COMMIT_EVERY, resets

    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    assert [(m["step"], m["world_size"]) for m in metrics] == expected_steps(events, epochs)
    assert [m["global_batch"] for m in metrics] == [2 * BATCH] * epochs
    assert json.loads(stdout)["final"]["epoch"] == epochs
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == epochs and state["step"] == metrics[-1]["step"]


def test_elastic_job_grows_to_a_host_added_to_discovery(cluster, discovery, tmp_path):
    script, hosts = discovery
    third = cluster.hosts[2]
    write_hosts(hosts, cluster.hosts[:2])
    out = tmp_path / "run"
    log = out / "logs" / "train.log"
    sessions = cluster.sshd_log(third).count(ACCEPTED)
    # the ring re-forms as soon as the newcomer reaches the rendezvous, so this is only an upper bound; it must exceed
    # the newcomer's start-up (ssh, then importing torch and horovod: 4-5 s on the busy 2-core machine), or the old
    # workers abort in the rendezvous ("Wait timeout after N seconds for key(s): 2", exit 134) and the job fails
    env = {"HOROVOD_GLOO_TIMEOUT_SECONDS": "60"}
    proc = start_on_first_host(cluster, [*elastic_args(cluster, script, out, 2), "--json"], tmp_path / "home", env)
    try:
        wait_for_event(log, proc, lambda e: e["event"] == "batch" and e["epoch"] == 0 and e["batch"] >= COMMIT_EVERY)
        write_hosts(hosts, cluster.hosts)
        returncode, stdout, stderr = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert returncode == 0, (stdout, stderr[-3000:])
    assert cluster.sshd_log(third).count(ACCEPTED) > sessions, "no worker was started on the added host"

    events = log_events(log)
    assert next(e for e in events if e["event"] == "start")["world_size"] == 2
    [reset] = [e for e in events if e["event"] == "reset"]
    assert reset["world_size"] == 3  # the newcomer joined at a commit: nothing was rolled back

    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert [(m["step"], m["world_size"]) for m in metrics] == expected_steps(events, 2)
    assert metrics[-1]["world_size"] == 3 and metrics[-1]["global_batch"] == 3 * BATCH
    assert any(m["epoch"] > reset["epoch"] and m["world_size"] == 3 for m in metrics)
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == metrics[-1]["step"]
