"""Seeing inside a run: Horovod's timeline and autotune log, reproducing a run from its config.json, the time to
finish, and TensorBoard event files. Real jobs, kept tiny (digits, one short epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QUICK, run_hvdat

TINY = [*QUICK, "--epochs", "1", "--train-samples", "512", "--batch-size", "64", "--eval-samples", "64"]


@pytest.fixture(scope="module")
def sign_run(tmp_path_factory) -> Path:
    """One real 2-worker run with sign compression, a Horovod timeline and autotune, and its --json-events stream."""
    base = tmp_path_factory.mktemp("observe")
    proc = run_hvdat(
        "train",
        *TINY,
        "--np",
        "2",
        "--compression",
        "sign",
        "--out",
        base / "run",
        "--timeline-filename",
        base / "timeline.json",
        "--autotune",
        "--autotune-log-file",
        base / "autotune.csv",
        check=True,
    )
    (base / "stdout").write_text(proc.stdout)
    return base


def test_a_two_worker_run_writes_a_horovod_timeline_and_autotune_log(sign_run):
    trace = json.loads((sign_run / "timeline.json").read_text())  # a complete JSON array, Chrome's trace format
    tensors = {e["args"]["name"] for e in trace if e.get("name") == "process_name" and "name" in e.get("args", {})}
    packed = {name for name in tensors if name.startswith("allgather.hvdat.packed.")}
    assert packed and "allgather.hvdat.packed.net.0.weight" in packed, sorted(tensors)
    assert any(e.get("name") == "GLOO_ALLGATHER" for e in trace)
    header = (sign_run / "autotune.csv").read_text().splitlines()[0]
    assert header.split(",")[-1] == "score" and "cycle_time_ms" in header
