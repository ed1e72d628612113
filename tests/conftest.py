"""Shared test helpers. Tests run real processes: `hvdat` as a subprocess, and real `horovodrun` jobs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpg"
HVDAT = [sys.executable, "-m", "hvdat"]
# Tiny, fast settings for end-to-end runs on digits (the embedded dataset).
QUICK = ["--dataset", "digits", "--eps", "0.1", "--eval-samples", "128", "--eval-steps", "5", "--steps", "3"]


def run_hvdat(
    *args: str, timeout: float = 600, env: dict | None = None, check: bool = False
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(
        HVDAT + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"hvdat {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def read_metrics(run_dir: Path) -> List[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user mistake: exit code 2, one line on stderr naming the problem, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(autouse=True)
def no_leftover_jobs(request):
    """After a test with a tmp_path, SIGKILL every process whose command line names that folder (horovodrun, mpirun,
    workers, here or on a namespace host). A test that fails while its job runs kills only the hvdat command it
    started, and horovodrun's workers then ran on, taking the cores for the rest of the session (and making
    later tests with short Gloo timeouts fail)."""
    marker = str(request.getfixturevalue("tmp_path")) if "tmp_path" in request.fixturenames else None
    yield
    if marker is None:
        return
    import psutil

    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.info["pid"] != os.getpid() and any(marker in arg for arg in process.info["cmdline"] or ()):
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    assert SHARED_CIFAR.is_dir(), f"real CIFAR-10 is expected at {SHARED_CIFAR} (beside the checkout)"
    return SHARED_CIFAR


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One real, tiny 1-epoch training run that several tests reuse (small-cnn on digits)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    run_hvdat("train", *QUICK, "--epochs", "1", "--batch-size", "64", "--out", out, check=True)
    return out


@pytest.fixture(scope="session")
def cluster():
    """ONE 3-host test cluster (tests/cluster.py) for the whole session, always taken down at its end: network
    namespaces PREFIX1..3 on 198.18.0.0/24, each with its own key-only sshd. The prefix carries the pid, so two test
    sessions (or a `bin/test-cluster up` cluster) never share a host."""
    if os.geteuid() != 0:
        pytest.skip("multi-host tests need root: the test cluster creates network namespaces and runs sshd")
    from cluster import Cluster

    with Cluster(n=3, prefix=f"t{os.getpid()}-hv") as up:
        yield up
