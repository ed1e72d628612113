"""`hvdat doctor` on the real install, and on a real setup without MPI (a PATH that holds no mpirun)."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_hvdat

HOROVODRUN = Path(sys.executable).parent / "horovodrun"


@functools.cache  # 10+ s; tests/test_multihost_doctor.py compares the hosts with it too
def _check_build() -> str:
    return subprocess.run([str(HOROVODRUN), "--check-build"], capture_output=True, text=True, check=True).stdout


def _marked(text: str, section: str, name: str) -> bool:
    block = text.split(section, 1)[1].split("\n\n", 1)[0]
    return bool(re.search(rf"\[X\]\s+{name}\b", block))


def test_doctor_reports_the_installed_build_like_horovodrun_check_build():
    proc = run_hvdat("doctor", "--json", "--launcher", "gloo", "--launcher", "mpi", check=True)
    report = json.loads(proc.stdout)
    build = _check_build()
    hv = report["horovod"]
    assert hv["version"] == "0.28.1" and hv["horovodrun"]
    assert hv["controllers"] == {
        "mpi": _marked(build, "Available Controllers", "MPI"),
        "gloo": _marked(build, "Available Controllers", "Gloo"),
    }
    assert hv["tensor_ops"]["nccl"] == _marked(build, "Available Tensor Operations", "NCCL")
    import torch

    assert report["torch"]["version"] == torch.__version__ and report["torch"]["cuda"] == torch.version.cuda
    assert report["shm_free_bytes"] > 0
    assert report["ok"] and [v["setup"] for v in report["verdicts"]] == ["--launcher gloo", "--launcher mpi"]
    assert report["mpi"]["mpirun"] and "Open MPI" in report["mpi"]["version"]


def test_doctor_human_output_ends_with_verdicts():
    proc = run_hvdat("doctor", check=True)
    assert "Horovod" in proc.stdout and "/dev/shm" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("ok --launcher gloo: ready")


def test_doctor_without_mpirun_fails_the_mpi_setup_and_says_what_to_do(tmp_path):
    no_mpi = {"PATH": str(tmp_path)}  # a real PATH with no mpirun (python and horovodrun are found by path)
    proc = run_hvdat("doctor", "--launcher", "mpi", env=no_mpi)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "FAIL --launcher mpi: not available, mpirun not found on PATH; apt-get install openmpi-bin" in proc.stdout
    assert "Traceback" not in proc.stderr
    report = json.loads(run_hvdat("doctor", "--json", "--launcher", "gloo", "--launcher", "mpi", env=no_mpi).stdout)
    assert [(v["setup"], v["ok"]) for v in report["verdicts"]] == [("--launcher gloo", True), ("--launcher mpi", False)]
    assert run_hvdat("doctor", "--launcher", "gloo", env=no_mpi).returncode == 0


def test_doctor_checks_hosts_and_slots():
    local = run_hvdat("doctor", "--json", "-H", "localhost:1,127.0.0.1:2", "--np", "3", check=True)
    report = json.loads(local.stdout)
    assert [(h["host"], h["slots"], h["reachable"]) for h in report["hosts"]] == [
        ("localhost", 1, True),
        ("127.0.0.1", 2, True),
    ]
    too_many = run_hvdat("doctor", "-H", "localhost:1,127.0.0.1:1", "--np", "3")
    assert too_many.returncode == 1 and "FAIL --np 3: only 2 slots" in too_many.stdout
    remote = run_hvdat("doctor", "--json", "-H", "no-such-host.invalid:4", "--ssh-port", "12345")
    assert remote.returncode == 1
    report = json.loads(remote.stdout)
    verdicts = {v["setup"]: v for v in report["verdicts"]}
    host = verdicts["host no-such-host.invalid"]
    assert not host["ok"] and host["hosts"] == ["no-such-host.invalid"]
    assert host["reason"].startswith("ssh to no-such-host.invalid fails: Could not resolve hostname")
    assert not verdicts["--launcher gloo"]["ok"] and report["hosts"][0]["facts"] is None


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-H", "a;reboot:1"], "invalid host name"),
        (["--launcher", "nccl"], "unknown launcher"),
    ],
)
def test_doctor_rejects_bad_input_in_one_line(args, fragment):
    assert_one_line_error(run_hvdat("doctor", *args), fragment)
