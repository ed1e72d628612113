"""`hvdat doctor -H` on the one-machine test cluster (tests/cluster.py). Run from inside the first host, as a user on
a login node runs it, it reaches the other hosts over ssh and reports each one's ssh, Horovod, MPI and torch, read
there by the same interpreter; a host that cannot run a worker is one FAIL line naming it, what ssh said and the fix."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import HVDAT, REPO
from test_doctor import _check_build, _marked

ACCEPTED = "Accepted publickey for root"


def doctor_on(cluster, *args, key=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`hvdat doctor --ssh-port P --ssh-identity-file KEY ARGS` on the cluster's first host."""
    argv = [*HVDAT, "doctor", "--ssh-port", cluster.port, "--ssh-identity-file", key or cluster.key, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return cluster.run_on(cluster.hosts[0], argv, timeout=timeout, env=env, cwd=REPO)


def fail_lines(proc: subprocess.CompletedProcess) -> list:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith("FAIL ")]


def test_doctor_reports_every_host_like_its_horovodrun_check_build(cluster):
    first, others = cluster.hosts[0], cluster.hosts[1:]
    sessions = {h: cluster.sshd_log(h).count(ACCEPTED) for h in others}
    proc = doctor_on(
        cluster, "-H", cluster.hosts_arg(1), "--np", "3", "--launcher", "gloo", "--launcher", "mpi", "--json"
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    report = json.loads(proc.stdout)
    hosts = report["hosts"]
    assert [(h["host"], h["local"], h["reachable"], h["detail"]) for h in hosts] == [
        (first, True, True, "this machine"),
        *[(h, False, True, "ssh ok") for h in others],
    ]
    build = _check_build()
    for h in hosts[1:]:
        assert cluster.sshd_log(h["host"]).count(ACCEPTED) == sessions[h["host"]] + 1, "one ssh session per host"
        facts = h["facts"]
        assert h["known_host"] is True and h["problem"] == "" and h["python"] == sys.executable
        assert facts["python"] == sys.executable and facts["hvdat"]["importable"]
        hv = facts["horovod"]
        assert hv["version"] == "0.28.1" and hv["horovodrun"] == str(Path(sys.executable).parent / "horovodrun")
        assert hv["controllers"] == {
            "mpi": _marked(build, "Available Controllers", "MPI"),
            "gloo": _marked(build, "Available Controllers", "Gloo"),
        }
        assert hv["tensor_ops"]["nccl"] == _marked(build, "Available Tensor Operations", "NCCL")
        assert facts["mpi"]["mpirun"] and "Open MPI" in facts["mpi"]["version"]
        assert facts["torch"]["version"] == report["torch"]["version"] and facts["gpus"] == report["gpus"]
    verdicts = [(v["setup"], v["ok"]) for v in report["verdicts"]]
    assert verdicts == [*[(f"host {h}", True) for h in others], ("--launcher gloo", True), ("--launcher mpi", True),
                        ("--np 3", True)]  # fmt: skip
    assert report["ok"] and not report["warnings"]


def test_a_host_whose_sshd_is_down_is_a_fail_line_naming_it(cluster):
    second = cluster.hosts[1]
    cluster.stop_sshd(second)
    try:
        proc = doctor_on(cluster, "-H", cluster.hosts_arg(1, n=2))
    finally:
        cluster.start_sshd(second)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert fail_lines(proc) == [
        f"FAIL host {second}: ssh to {second} fails: Connection refused (port {cluster.port}); start sshd on {second}, "
        "or pass the --ssh-port its sshd listens on",
        f"FAIL --launcher gloo: cannot run on {second} (see host {second})",
    ]


def test_a_refused_key_is_a_fail_line_naming_the_host(cluster, tmp_path):
    stranger = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", stranger], check=True)
    third = cluster.hosts[2]
    proc = doctor_on(cluster, "-H", f"{cluster.hosts[0]}:1,{third}:1", key=stranger)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    fails = fail_lines(proc)
    assert fails[0] == (
        f"FAIL host {third}: ssh to {third} fails: Permission denied (publickey); authorise your public key there "
        f"(ssh-copy-id -p {cluster.port} -i {stranger} {third}), or pass --ssh-identity-file with a key it accepts"
    )
    assert fails[1:] == [f"FAIL --launcher gloo: cannot run on {third} (see host {third})"]


def test_an_unknown_host_key_fails_mpi_only(cluster):
    """The drop-in known_hosts of the cluster lists the hosts by name; by address their keys are unknown. horovodrun's
    Gloo ssh does not care (StrictHostKeyChecking=no), OpenMPI's does: Host key verification failed."""
    address = cluster.address(cluster.hosts[1])
    proc = doctor_on(
        cluster, "-H", f"{cluster.hosts[0]}:1,{address}:1", "--launcher", "gloo", "--launcher", "mpi", "--json"
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    report = json.loads(proc.stdout)
    remote = report["hosts"][1]
    assert (remote["host"], remote["reachable"], remote["known_host"]) == (address, True, False)
    assert remote["facts"]["horovod"]["version"] == "0.28.1"
    verdicts = {v["setup"]: v for v in report["verdicts"]}
    assert [v["setup"] for v in report["verdicts"]] == [f"host {address}", "--launcher gloo", "--launcher mpi"]
    assert verdicts[f"host {address}"]["ok"] and verdicts["--launcher gloo"]["ok"]
    mpi = verdicts["--launcher mpi"]
    assert not mpi["ok"] and mpi["hosts"] == [address]
    assert mpi["reason"].startswith(f"not available on {address}, mpirun's ssh")
    assert "Host key verification failed" in mpi["reason"]
    assert f"ssh-keyscan -p {cluster.port} {address} >> ~/.ssh/known_hosts" in mpi["reason"]


def test_a_host_that_does_not_answer_is_a_fail_line_within_the_ssh_timeout(cluster):
    third = cluster.hosts[2]
    cluster.link_down(third)
    try:
        proc = doctor_on(cluster, "-H", f"{cluster.hosts[0]}:1,{third}:1", timeout=60)
    finally:
        cluster.link_up(third)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    fails = fail_lines(proc)
    assert fails[0].startswith(f"FAIL host {third}: ssh to {third} fails: "), fails
    assert f"check that {third} is up and that port {cluster.port} is open to this machine" in fails[0]


def test_a_host_without_this_python_says_so(cluster, tmp_path):
    """doctor runs from a venv mounted at a path that exists only in its own mount namespace (as a venv that was
    never installed on the other hosts): the remote host has no such interpreter."""
    venv = tmp_path / "venv"
    venv.mkdir()
    python = venv / "bin" / Path(sys.executable).name
    second = cluster.hosts[1]
    argv = [python, "-m", "hvdat", "doctor", "--ssh-port", cluster.port, "--ssh-identity-file", cluster.key,
            "-H", cluster.hosts_arg(1, n=2), "--json"]  # fmt: skip
    mount = shlex.join(["mount", "--bind", str(Path(sys.executable).parents[1]), str(venv)])
    script = f"{mount} && exec {shlex.join(cluster.argv_on(cluster.hosts[0], argv))}"
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    report = json.loads(proc.stdout)
    remote = report["hosts"][1]
    assert (remote["reachable"], remote["python"], remote["facts"]) == (True, str(python), None)
    problem = f"no {python} on {second}: install hvdat there at the same path, or use the image"
    assert remote["problem"] == problem
    assert [(v["setup"], v["ok"], v["reason"]) for v in report["verdicts"]] == [
        (f"host {second}", False, problem),
        ("--launcher gloo", False, f"cannot run on {second} (see host {second})"),
    ]


def test_elastic_doctor_warns_of_hosts_that_ssh_keeps_no_keepalive_for(cluster):
    """An elastic job re-forms only once every old worker's ssh session has ended: without a keepalive a lost host
    holds it for TCP's timeout (tests/test_faults_elastic.py). `doctor --elastic` names such hosts, and is quiet once
    ssh has one for them."""
    from test_faults_elastic import keepalive

    def keepalive_report():
        proc = doctor_on(cluster, "-H", cluster.hosts_arg(1), "--elastic", "--json")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        report = json.loads(proc.stdout)
        return [h["keepalive_seconds"] for h in report["hosts"][1:]], [
            w for w in report["warnings"] if "keepalive" in w
        ]

    others = cluster.hosts[1:]
    seconds, (warning,) = keepalive_report()
    assert seconds == [0] * len(others) and all(h in warning for h in others), warning
    assert "ServerAliveInterval" in warning
    config = keepalive(cluster)
    try:
        seconds, warnings = keepalive_report()
    finally:
        config.unlink()
    assert seconds == [6] * len(others) and not warnings, warnings
