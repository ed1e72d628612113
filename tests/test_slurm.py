"""Slurm: node lists expanded as `scontrol show hostnames` does, hosts and slots taken from an allocation, and real
jobs on a real one-node Slurm (munged, slurmctld, slurmd started once for this module): a 2-task `hvdat train` that
`scancel` stops gracefully, leaving a last.pt, and that the same sbatch script, submitted again, resumes to its end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import HVDAT, QUICK, REPO, read_metrics
from slurm_cluster import SlurmCluster
from test_signals import hold_after

from hvdat.cli import main
from hvdat.launch.slurm import expand_counts, expand_nodelist, gpu_count

HOROVODRUN = str(Path(sys.executable).parent / "horovodrun")
NODELISTS = {
    "gpu[01-03,07],cpu5": ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"],
    "node[001-002]": ["node001", "node002"],
    "a[1-2]b[3-4]": ["a1b3", "a1b4", "a2b3", "a2b4"],
    "x[8-11],x9": ["x8", "x9", "x10", "x11", "x9"],
    "rack[1-2]-n[01-02]": ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"],
    "n[1-2],,m": ["n1", "n2", "m"],
    "vm": ["vm"],
}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_nodelists_expand_as_scontrol_does(slurm):
    for text, names in NODELISTS.items():
        assert expand_nodelist(text) == names, text
        assert slurm.run("scontrol", "show", "hostnames", text).stdout.split() == names, text


def test_per_node_counts_and_gpus():
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]
    assert expand_counts("4") == [4]
    assert [gpu_count(text) for text in ("4", "a100:4", "gpu:a100:2,gpu:v100:1")] == [4, 4, 3]


def _dry_run(monkeypatch, capsys, env, *args):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main(["train", "--out", "/nonexistent/r", "--dry-run", *args])
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err


@pytest.mark.parametrize(
    "env,args,launch,note",
    [
        (  # two nodes, their tasks: every slot is a worker
            {"SLURM_JOB_NODELIST": "node[001-002]", "SLURM_TASKS_PER_NODE": "2(x2)"},
            [],
            f"{HOROVODRUN} -np 4 -H node001:2,node002:2 --gloo",
            "hosts from Slurm (SLURM_JOB_NODELIST=node[001-002], tasks per node): node001:2,node002:2; --np 4",
        ),
        (  # GPUs per node win over tasks per node; a typed --np is kept
            {"SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_PER_NODE": "a100:4"},
            ["--np", "6"],
            f"{HOROVODRUN} -np 6 -H gpu01:4,gpu02:4 --gloo",
            "GPUs per node): gpu01:4,gpu02:4; --np 6",
        ),
        (  # one node: a local run, no ssh
            {"SLURM_JOB_NODELIST": "cpu5", "SLURM_TASKS_PER_NODE": "2"},
            [],
            f"{HOROVODRUN} -np 2 -H localhost:2 --gloo",
            "tasks per node): cpu5:2; --np 2",
        ),
        (  # -H given: Slurm is not asked
            {"SLURM_JOB_NODELIST": "node[001-002]", "SLURM_TASKS_PER_NODE": "2(x2)"},
            ["--np", "2", "-H", "h1:1,h2:1"],
            f"{HOROVODRUN} -np 2 -H h1:1,h2:1 --gloo",
            None,
        ),
    ],
)
def test_hosts_come_from_the_allocation(monkeypatch, capsys, env, args, launch, note):
    monkeypatch.delenv("HVDAT_NP", raising=False)
    code, out, err = _dry_run(monkeypatch, capsys, env, *args)
    assert code == 0, err
    assert out.startswith(launch + " "), out
    if note is None:
        assert "Slurm" not in err
    else:
        assert note in err, err


def test_more_workers_than_the_allocation_is_one_line(monkeypatch, capsys):
    code, _, err = _dry_run(monkeypatch, capsys, {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "1(x2)"})
    assert code == 0, err
    code, _, err = _dry_run(
        monkeypatch, capsys, {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "1(x2)"}, "--np", "3"
    )
    assert code == 2 and "--np 3 is more than the 2 slots of this Slurm allocation" in err, err


def test_a_real_allocation_reaches_the_dry_run(slurm, monkeypatch, capsys):
    """The variables a real `salloc -n 2` sets (hvdat itself then runs in-process: its imports take seconds)."""
    listed = slurm.run("salloc", "-n", "2", "env").stdout.splitlines()
    env = dict(line.split("=", 1) for line in listed if line.startswith("SLURM_"))
    assert env["SLURM_JOB_NODELIST"] == slurm.node
    monkeypatch.delenv("HVDAT_NP", raising=False)
    code, out, err = _dry_run(monkeypatch, capsys, env)
    assert code == 0, err
    assert out.startswith(f"{HOROVODRUN} -np 2 -H localhost:2 --gloo "), out
    assert f"hosts from Slurm (SLURM_JOB_NODELIST={slurm.node}, tasks per node): {slurm.node}:2" in err


def test_the_script_asks_for_what_was_given(capsys):
    args = ["--nodes", "2", "--gpus-per-node", "4", "--time", "2:00:00", "-p", "gpu", "--venv", "/opt/venv"]
    assert main(["slurm", *args, "--", "train", "--dataset", "cifar10", "--out", "runs/c 10"]) == 0
    script = capsys.readouterr().out
    for directive in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--time=2:00:00", "--partition=gpu"):
        assert f"#SBATCH {directive}\n" in script
    assert "#SBATCH --requeue\n" in script and "#SBATCH --signal=B:USR1@120\n" in script
    assert "args=(train --dataset cifar10 --out 'runs/c 10')" in script
    assert "if [ -e 'runs/c 10/last.pt' ]; then" in script
    assert '/opt/venv/bin/python -m hvdat "${args[@]}" &' in script
    assert main(["slurm", "--image", "hvdat.sif", "--", "eval", "runs/x"]) == 0
    script = capsys.readouterr().out
    assert 'apptainer exec hvdat.sif hvdat "${args[@]}" &' in script and "--resume" not in script


@pytest.mark.parametrize(
    "args,fragment",
    [
        ([], "give the hvdat command to run"),
        (["--", "report", "runs/x"], "give the hvdat command to run"),
        (["--", "train", "-H", "a:1"], "the hosts come from the Slurm allocation"),
        (["--nodes", "2", "--image", "x.sif", "--", "train"], "--image runs on one node"),
        (["--time", "2h", "--", "train"], "cannot read --time '2h'"),
    ],
)
def test_script_mistakes_are_one_line(capsys, args, fragment):
    assert main(["slurm", *args]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], captured.err
    assert "Traceback" not in captured.out + captured.err


def _wait_for(path: Path, text: str, slurm: SlurmCluster, job: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        state = slurm.job_state(job)
        assert state in ("PENDING", "CONFIGURING", "RUNNING"), f"job {job} is {state}:\n{_text(log)}{slurm.logs()}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}:\n{_text(log)}{slurm.logs()}")


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"(no {path})"


def test_scancel_stops_gracefully_and_the_script_resumes(slurm, tmp_path):
    """A real sbatch of a 2-task train job; scancel mid-epoch leaves last.pt (hvdat stops after an agreed step);
    the same script submitted again adds --resume and finishes: the run folder holds the metrics."""
    run, script, log = tmp_path / "run", tmp_path / "train.sbatch", tmp_path / "slurm.out"
    train = ["train", *QUICK, "--epochs", "1", "--batch-size", "16", "--out", str(run)]
    submit = [*HVDAT, "slurm", "--ntasks-per-node", "2", "--time", "10", "--script", str(script), "--log", str(log)]
    submitted = subprocess.run(
        [*submit, "--submit", "--", *train],
        capture_output=True,
        text=True,
        env={**slurm.env, **hold_after(5, tmp_path)},  # the workers hold after minibatch 5 until cancelled
        cwd=REPO,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    assert re.fullmatch(r"\d+", job), submitted.stdout
    _wait_for(tmp_path / "hold.0", "", slurm, job, log)  # the (empty) file appears once rank 0 holds
    slurm.run("scancel", job)
    assert slurm.wait_done(job) == "CANCELLED"
    first = log.read_text()
    assert "stopped by signal at epoch 1" in first and "--resume" in first, first + slurm.logs()
    assert "error" not in first.split("CANCELLED", 1)[1], first
    stopped = torch.load(run / "last.pt", weights_only=True)
    assert (stopped["epoch"], stopped["batch"], stopped["step"]) == (0, 5, 5)
    assert not (run / "metrics.jsonl").exists()

    again = slurm.run("sbatch", "--parsable", str(script)).stdout.strip()
    assert slurm.wait_done(again) == "COMPLETED", log.read_text() + slurm.logs()
    (metrics,) = read_metrics(run)
    assert metrics["epoch"] == 1 and metrics["step"] == 44 and metrics["world_size"] == 2
    events = [json.loads(line.split("@@hvdat ", 1)[1]) for line in (run / "logs" / "train.log").read_text().splitlines()
              if "@@hvdat " in line]  # fmt: skip
    starts = [i for i, e in enumerate(events) if e["event"] == "start"]
    assert len(starts) == 2
    resumed = next(e for e in events[starts[1] :] if e["event"] == "batch")
    assert resumed["batch"] > stopped["batch"], "the second job continued from last.pt, not from the start"
