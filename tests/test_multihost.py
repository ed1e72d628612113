"""Real multi-host jobs on the one-machine test cluster (tests/cluster.py): each host is a network namespace with its
own address and sshd; jobs start from inside the first host, as a user on a cluster's login node starts them, and
reach the second host over ssh (Gloo's task services, or OpenMPI's orted)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import HVDAT, QUICK, REPO, read_metrics, run_hvdat

# --threads 1: a worker's default is cores / workers on its host, i.e. 1 thread for --np 2 on one host but 2 on
# each of two hosts, and the thread count changes float sums (the metrics then differ in the 6th digit).
TRAIN = [*QUICK, "--epochs", "2", "--batch-size", "64", "--lr", "0.4", "--threads", "1", "--seed", "7"]
SAME = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_clean_acc",
    "test_robust_acc",
    "test_clean_examples",
    "test_robust_examples",
    "lr",
    "world_size",
    "global_batch",
    "step",
    "bytes_sent_per_step",
)
ACCEPTED = "Accepted publickey for root"


def cluster_opts(cluster, n: int = 2) -> list:
    return [
        "--np",
        str(n),
        "-H",
        cluster.hosts_arg(1, n=n),
        "--ssh-port",
        str(cluster.port),
        "--ssh-identity-file",
        str(cluster.key),
        "--network-interfaces",
        "eth0",
    ]


def hvdat_on(cluster, *args, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`hvdat ARGS` on the cluster's first host, as a user there would run it. HOME is the test's own: horovodrun
    caches its ssh check in ~/.horovod for an hour, keyed by np, hosts, port and key file."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)}
    return subprocess.run(
        cluster.argv_on(cluster.hosts[0], [*HVDAT, *map(str, args)]),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def one_host_run(tmp_path_factory) -> Path:
    """The reference: the same training with 2 workers on this one machine (no -H)."""
    out = tmp_path_factory.mktemp("one-host") / "run"
    run_hvdat("train", "--np", "2", *TRAIN, "--out", out, check=True)
    return out


@pytest.mark.parametrize("launcher", ["gloo", "mpi"])
def test_two_hosts_train_exactly_as_one_host(cluster, one_host_run, home, tmp_path, launcher):
    second = cluster.hosts[1]
    sessions = cluster.sshd_log(second).count(ACCEPTED)
    out = tmp_path / "run"
    proc = ok(
        hvdat_on(
            cluster, "train", *cluster_opts(cluster), "--launcher", launcher, *TRAIN, "--out", out, "--json", home=home
        )
    )
    assert cluster.sshd_log(second).count(ACCEPTED) > sessions, "no rank ran on the second host"
    assert json.loads(proc.stdout)["final"]["world_size"] == 2
    two_hosts, one_host = read_metrics(out), read_metrics(one_host_run)
    assert len(two_hosts) == 2
    assert [{k: m[k] for k in SAME} for m in two_hosts] == [{k: m[k] for k in SAME} for m in one_host]
    assert two_hosts[1]["train_loss"] < two_hosts[0]["train_loss"]  # it trains


def test_two_host_eval_gives_the_per_example_result_of_one(cluster, one_host_run, home, tmp_path):
    args = ["--attack", "pgd", "--eps", "0.1", "--n-examples", "64", "--batch-size", "16", "--threads", "1", "--json"]
    run_hvdat("eval", one_host_run, *args, "--np", "1", "--out", tmp_path / "np1.json", check=True)
    ok(
        hvdat_on(
            cluster, "eval", one_host_run, *args, *cluster_opts(cluster), "--out", tmp_path / "np2.json", home=home
        )
    )
    one, two = (json.loads((tmp_path / f"np{n}.json").read_text()) for n in (1, 2))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["examples"] == two["examples"]  # per example: the stage that broke it, adversarial label, norm
    assert one["stages"] == two["stages"] and one["robust_accuracy"] == two["robust_accuracy"]
    assert len(set(one["examples"]["by_eps"][0]["broken_by"])) >= 2, "the attack should break some, not all"


def _warm_horovod_cache(cluster, home: Path) -> None:
    """A good horovodrun job to the same hosts, port and key: horovodrun then skips its ssh check for an hour."""
    horovodrun = str(Path(sys.executable).parent / "horovodrun")
    argv = [
        horovodrun,
        "-np",
        "2",
        "-H",
        cluster.hosts_arg(1, n=2),
        "-p",
        str(cluster.port),
        "-i",
        str(cluster.key),
        "--gloo",
        "--network-interfaces",
        "eth0",
        "true",
    ]
    proc = cluster.run_on(cluster.hosts[0], argv, env={**os.environ, "HOME": str(home)}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The failure's first line: the host, the cause and what to do (the lines after it give the way back)."""
    assert proc.returncode != 0 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return next(line for line in proc.stderr.splitlines() if line.startswith("error: "))


@pytest.mark.parametrize("launcher", ["gloo", "mpi"])
@pytest.mark.parametrize("history", ["first-contact", "after-a-good-run"])
def test_a_host_whose_sshd_is_down_is_an_error_naming_it(cluster, tmp_path, launcher, history):
    """A worker that cannot start on a remote host: one line that names the host and what ssh said, whatever failed
    first (first-contact: horovodrun's own ssh check; after-a-good-run: horovodrun trusts its cached check for an
    hour, and the worker's ssh (Gloo) or orted's (MPI) fails at launch)."""
    home, out, second = tmp_path / "home", tmp_path / "run", cluster.hosts[1]
    home.mkdir()
    if history == "after-a-good-run":
        _warm_horovod_cache(cluster, home)
    cluster.stop_sshd(second)
    try:
        proc = hvdat_on(
            cluster, "train", *cluster_opts(cluster), "--launcher", launcher, *TRAIN, "--epochs", "1", "--out", out,
            home=home, timeout=120,
        )  # fmt: skip
    finally:
        cluster.start_sshd(second)
    line = _error_line(proc)
    assert line.startswith(f"error: training could not start a worker on host {second} (Connection refused)")
    assert "hvdat doctor" in line and str(out / "logs" / "train.log") in line


def test_a_host_without_hvdat_is_an_error_naming_it(cluster, home, tmp_path):
    """The second host has this venv but no hvdat (its sessions see an empty hvdat/ folder): Gloo's worker there
    cannot import the worker module."""
    out, second = tmp_path / "run", cluster.hosts[1]
    cluster.stop_sshd(second)
    cluster.start_sshd(second, hide=[str(REPO / "hvdat")])
    try:
        proc = hvdat_on(
            cluster, "train", *cluster_opts(cluster), *TRAIN, "--epochs", "1", "--out", out, home=home, timeout=120
        )
    finally:
        cluster.stop_sshd(second)
        cluster.start_sshd(second)
    line = _error_line(proc)
    python = sys.executable
    assert line.startswith(
        f"error: training could not start a worker on host {second} ({python} cannot import hvdat.train.worker "
    ), line
    assert "install hvdat there at the same path, or use the image" in line and "hvdat doctor" in line


def test_a_host_without_this_venv_is_an_error_naming_it(cluster, home, tmp_path):
    """hvdat runs from a venv mounted at a path that exists only in its own mount namespace (a venv never installed
    on the other hosts): mpirun cannot start the worker's interpreter on the second host."""
    venv, out, second = tmp_path / "venv", tmp_path / "run", cluster.hosts[1]
    venv.mkdir()
    python = venv / "bin" / Path(sys.executable).name
    argv = [python, "-m", "hvdat", "train", *cluster_opts(cluster), "--launcher", "mpi", *TRAIN, "--epochs", "1",
            "--out", out]  # fmt: skip
    mount = shlex.join(["mount", "--bind", str(Path(sys.executable).parents[1]), str(venv)])
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"{mount} && exec {shlex.join(cluster.argv_on(cluster.hosts[0], argv))}"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)},
    )  # fmt: skip
    line = _error_line(proc)
    assert line.startswith(f"error: training could not start a worker on host {second} (no {python} there)"), line
    assert "install hvdat there at the same path, or use the image" in line


def test_a_host_whose_link_goes_down_is_named_and_resume_matches(cluster, one_host_run, home, tmp_path):
    """The second host's link goes down in epoch 2 (`ip link set eth0 down` in its namespace): with --gloo-timeout 8
    the first host's rank gives up waiting; the report names the silent rank and its host and keeps epoch 1's
    last.pt; with the link back, the report's --resume command finishes with the uninterrupted run's metrics."""
    out, first, second = tmp_path / "run", cluster.hosts[0], cluster.hosts[1]
    log = out / "logs" / "train.log"
    args = [*cluster_opts(cluster), *TRAIN, "--gloo-timeout", "8", "--out", out]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)}
    proc = subprocess.Popen(
        cluster.argv_on(first, [*HVDAT, "train", *map(str, args)]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (log.is_file() and '"event":"batch","epoch":1' in log.read_text(errors="replace").replace(" ", "")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "epoch 2 never started"
            time.sleep(0.1)
        cluster.link_down(second)
        began = time.monotonic()
        stdout, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        cluster.link_up(second)
    assert proc.returncode != 0 and took < 90, (proc.returncode, took, stderr)
    line = _error_line(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert line.startswith(f"error: training failed: rank 1 on host {second} "), stderr
    assert "Traceback" not in stderr
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    resume = next(x for x in stderr.splitlines() if x.strip().startswith("continue with: hvdat "))
    command = shlex.split(resume.split("continue with: hvdat ", 1)[1])
    assert command[-1] == "--resume"
    ok(hvdat_on(cluster, *command, home=home))
    two_hosts, one_host = read_metrics(out), read_metrics(one_host_run)
    assert [{k: m[k] for k in SAME} for m in two_hosts] == [{k: m[k] for k in SAME} for m in one_host]
