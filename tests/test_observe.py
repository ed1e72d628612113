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
        "--json-events",
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
        "--no-tensorboard",
        check=True,
    )
    assert proc.returncode == 0
    strip = [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(trained_run)]
    assert [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(tmp_path / "again")] == strip
    saved = json.loads((trained_run / "config.json").read_text())
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert {**again, "out": saved["out"], "tensorboard": True} == saved
    assert not again["tensorboard"] and not (tmp_path / "again" / "tb").exists()
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


def scalars(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run_dir / "tb"))
    board.Reload()
    return board, {tag: [(e.step, e.value) for e in board.Scalars(tag)] for tag in board.Tags()["scalars"]}


def test_tensorboard_events_hold_the_metrics_at_their_steps(sign_run):
    metrics = read_metrics(sign_run / "run")
    board, found = scalars(sign_run / "run")
    for key in ("train_loss", "train_acc", "test_clean_acc", "test_robust_acc", "lr", "images_per_sec"):
        assert found[f"epoch/{key}"] == [(m["step"], pytest.approx(m[key], rel=1e-6)) for m in metrics], key
    for key in ("bytes_sent_per_step", "compression_ratio"):
        assert found[f"epoch/{key}"] == [(m["step"], pytest.approx(m[key], rel=1e-6)) for m in metrics], key
    assert metrics[-1]["compression_ratio"] > 20  # sign: 1 bit per element
    # per step, from the batch events: steps of this run, the last one the epoch's last optimiser step
    steps = [step for step, _ in found["step/loss"]]
    assert steps == sorted(steps) and steps[0] > 0 and steps[-1] == metrics[-1]["step"]
    assert {"step/acc", "step/images_per_sec", "step/bytes_sent_per_step"} <= set(found)
    config = json.loads((sign_run / "run" / "config.json").read_text())
    text = board.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.replace("\n    ", "\n")) == config


def test_json_events_stream_the_time_to_finish(sign_run):
    lines = [json.loads(line) for line in (sign_run / "stdout").read_text().splitlines()]
    kinds = [line["event"] for line in lines]
    assert kinds[0] == "start" and kinds[-1] == "summary" and "progress" in kinds and "epoch" in kinds
    start = lines[0]
    assert start["steps_total"] == start["steps_per_epoch"] * start["epochs"] and start["world_size"] == 2
    progress = [line for line in lines if line["event"] == "progress"]
    assert all(p["eta_seconds"] is not None and p["eta_seconds"] >= 0 for p in progress)
    assert progress[-1]["steps_done"] == progress[-1]["step"] == start["steps_total"]
    epoch = [line for line in lines if line["event"] == "epoch"][-1]
    assert epoch["eta_seconds"] == 0.0 and epoch["step"] == read_metrics(sign_run / "run")[-1]["step"]
    assert lines[-1]["final"]["step"] == epoch["step"]


def test_eval_adds_its_accuracies_to_the_runs_tensorboard_events(trained_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "config.json", "metrics.jsonl"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    proc = run_hvdat(
        "eval", run, "--attack", "fgsm", "--eps", "0.05,0.1", "--n-examples", "50", "--json-events", check=True
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "summary"
    progress = [line for line in lines if line["event"] == "progress"]  # one per batch, however many
    done = [p["done"] for p in progress]
    assert done and done == sorted(done) and {p["stage"] for p in progress} == {"clean", "fgsm"}, progress
    assert done[-1] == pytest.approx(progress[-1]["total"]) and progress[-1]["eta_seconds"] == 0
    report = lines[-1]
    _, found = scalars(run)
    step = read_metrics(run)[-1]["step"]
    assert found["eval/fgsm-linf/clean_accuracy"] == [(step, pytest.approx(report["clean_accuracy"], rel=1e-6))]
    for entry in report["sweep"]:
        tag = f"eval/fgsm-linf/robust_accuracy/eps={entry['eps']:.4g}"
        assert found[tag] == [(step, pytest.approx(entry["robust_accuracy"], rel=1e-6))]
    assert run_hvdat("report", run, check=True).returncode == 0  # the plots still read the run folder


def test_the_time_to_finish_counts_only_this_runs_work():
    """Pure: a run resumed at batch 6 of epoch 2 (of 3, 10 steps each), 0.5 s per step, 4 s after each epoch."""
    from hvdat.train.tracking import Anchor, TrainTracker

    now = [100.0]
    tracker = TrainTracker(Anchor(epoch=1, batch=6, step=16), clock=lambda: now[0])
    start = tracker.annotate(
        {"event": "start", "epochs": 3, "start_epoch": 1, "steps_per_epoch": 10, "global_batch": 64, "world_size": 2}
    )
    assert (start["step"], start["steps_total"]) == (16, 14)
    ips = 64 / 0.5
    batch = tracker.annotate({"event": "batch", "epoch": 1, "batch": 8, "batches": 10, "images_per_sec": ips})
    assert (batch["step"], batch["steps_done"]) == (18, 2)
    assert batch["eta_seconds"] == 12 * 0.5  # nothing known yet of the time between epochs
    tracker.annotate({"event": "batch", "epoch": 1, "batch": 10, "batches": 10, "images_per_sec": ips})
    now[0] += 4.0
    epoch = tracker.annotate({"event": "epoch", "epoch": 2, "step": 20, "images_per_sec": ips})
    assert (epoch["steps_done"], epoch["eta_seconds"]) == (4, 10 * 0.5 + 4.0)
    last = tracker.annotate({"event": "batch", "epoch": 2, "batch": 4, "batches": 10, "images_per_sec": ips})
    assert (last["step"], last["eta_seconds"]) == (24, 6 * 0.5 + 4.0)
    assert tracker.annotate({"event": "epoch", "epoch": 3, "step": 30, "images_per_sec": ips})["eta_seconds"] == 0


def test_the_time_to_finish_of_an_evaluation_counts_only_this_runs_work():
    """Pure: resumed batches count as done but not towards the rate; broken examples' later stages drop out."""
    from hvdat.eval.tracking import EvalTracker

    now = [0.0]
    tracker = EvalTracker(clock=lambda: now[0])
    tracker.annotate({"event": "start", "work_total": 1000.0})
    resumed = tracker.annotate({"event": "attacked", "work": 200.0, "dropped": 100.0, "resumed": True})
    assert (resumed["done"], resumed["total"], resumed["eta_seconds"]) == (200, 900, None)
    now[0] = 10.0
    batch = tracker.annotate({"event": "attacked", "work": 100.0, "dropped": 200.0, "resumed": False})
    assert (batch["done"], batch["total"], batch["eta_seconds"]) == (300, 700, 40.0)
