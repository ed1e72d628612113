"""Seeing inside a run: Horovod's timeline and autotune log, reproducing a run from its config.json, the time to
finish, and TensorBoard event files. Real jobs, kept tiny (digits, one short epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QUICK, read_metrics, run_hvdat

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


TIMING = ("seconds", "train_seconds", "images_per_sec")  # wall-clock: the only fields two identical runs differ in


def test_config_of_a_finished_run_reproduces_its_metrics(trained_run, tmp_path):
    """--config with no overrides repeats the run (same seed, same --np): every metric equal, timing aside. The
    worker runs directly (--np 1), so Horovod's knobs reach it as HOROVOD_* variables and the output copy is ours."""
    proc = run_hvdat(
        "train",
        "--config",
        trained_run / "config.json",
        "--out",
        tmp_path / "again",
        "--output-filename",
        tmp_path / "output",
        "--timeline-filename",
        tmp_path / "timeline.json",
        check=True,
    )
    assert proc.returncode == 0
    strip = [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(trained_run)]
    assert [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(tmp_path / "again")] == strip
    saved = json.loads((trained_run / "config.json").read_text())
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert {**again, "out": saved["out"]} == saved
    assert '"event":"epoch"' in (tmp_path / "output" / "rank.0" / "stdout").read_text()
    assert json.loads((tmp_path / "timeline.json").read_text()) == []  # one worker: no collectives, a closed array


def test_options_typed_with_config_override_it(trained_run, tmp_path):
    def resolved(*args, env=None):
        proc = run_hvdat("train", "--config", trained_run, "--print-config", *args, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    saved = json.loads((trained_run / "config.json").read_text())
    same = resolved("--out", tmp_path / "x")
    assert {**same, "out": saved["out"]} == saved and same["out"] == str(tmp_path / "x")
    changed = resolved("--epochs", "2", "--norm", "l2", "--eps", "0.5")
    assert (changed["epochs"], changed["norm"], changed["eps"]) == (2, "l2", 0.5)
    assert changed["steps"] == saved["steps"] == 3 and changed["lr"] == saved["lr"]
    assert resolved(env={"HVDAT_NP": "2"})["np"] == 1  # the saved run's --np: environment variables are defaults
    assert resolved("--np", "2")["np"] == 2
    # the printed configuration is one --config takes back
    (tmp_path / "c.json").write_text(json.dumps(changed))
    proc = run_hvdat("train", "--config", tmp_path / "c.json", "--print-config", check=True)
    assert json.loads(proc.stdout) == {**changed, "out": "runs/latest"}
