"""The CLI as users meet it: help, dry runs, and one clear line (exit 2, no traceback) for every mistake."""

import sys

import pytest
from conftest import QUICK, assert_one_line_error, read_metrics, run_hvdat

from hvdat.cli import main


def test_help_explains_the_options():
    proc = run_hvdat("train", "--help")
    assert proc.returncode == 0
    for option in (
        "--np",
        "--hosts",
        "--hostfile",
        "--launcher",
        "--dry-run",
        "--dataset",
        "--data-dir",
        "--arch",
        "--attack",
        "--eps",
        "--alpha",
        "--steps",
        "--norm",
        "--epochs",
        "--batch-size",
        "--lr",
        "--optimizer",
        "--compression",
        "--out",
        "--seed",
        "--resume",
        "fgsm-rs",
        "trades",
    ):
        assert option in proc.stdout, option


@pytest.mark.parametrize("command", ["train", "eval", "pseudo-label"])
def test_help_groups_horovods_knobs_in_their_panel(command):
    proc = run_hvdat(command, "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0
    panel = proc.stdout[proc.stdout.index("Horovod tuning") :]
    panel = panel[: panel.index("╰")]
    for option in (
        "--timeline-filename",
        "--timeline-mark-cycles",
        "--autotune",
        "--autotune-log-file",
        "--fusion-threshold-mb",
        "--cycle-time-ms",
        "--cache-capacity",
        "--hierarchical-allreduce",
        "--no-hierarchical-allgather",
        "--start-timeout",
        "--log-level",
        "--output-filename",
    ):
        assert option in panel, option
    assert "HVDAT_NP" in proc.stdout
    if command == "train":
        for option in ("--config", "--print-config", "--json-events", "--no-tensorboard"):
            assert option in proc.stdout, option


def test_version_and_list():
    assert run_hvdat("--version").stdout.startswith("hvdat ")
    listing = run_hvdat("list", "attacks").stdout
    assert "fgsm-rs" in listing and "pgd" in listing


def test_dry_run_prints_the_exact_horovodrun_command(tmp_path):
    proc = run_hvdat(
        "train",
        "--np",
        "4",
        "-H",
        "node1:2,node2:2",
        "--launcher",
        "mpi",
        "--out",
        tmp_path / "r",
        "--dry-run",
        env={"COLUMNS": "300"},
    )
    assert proc.returncode == 0, proc.stderr
    horovodrun = str(__import__("pathlib").Path(sys.executable).parent / "horovodrun")
    assert proc.stdout.strip() == (
        f"{horovodrun} -np 4 -H node1:2,node2:2 --mpi {sys.executable} -m hvdat.train.worker "
        f"--config {tmp_path / 'r' / 'config.json'}"
    )
    assert not (tmp_path / "r").exists(), "a dry run writes nothing"


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--arch", "resnet-9000"], ["unknown arch 'resnet-9000'", "small-cnn", "preact-resnet18", "wrn-34-10"]),
        (["--dataset", "mnist-x"], ["unknown dataset 'mnist-x'", "digits", "cifar10"]),
        (["--attack", "deepfool"], ["unknown attack 'deepfool'", "fgsm-rs", "pgd", "trades"]),
        (["--eps", "0"], ["outside (0, 1]"]),
        (["--eps", "300/255"], ["outside (0, 1]"]),
        (["--norm", "l2", "--eps", "0"], ["must be positive and finite"]),
        (["--threads", "-1"], ["--threads must be >= 0"]),
        (["--eps", "eight"], ["invalid eps 'eight'", "8/255"]),
        (["--np", "0"], ["--np must be >= 1"]),
        (["--np", "5", "-H", "localhost:2,127.0.0.1:2"], ["--np 5 is more than the 4 slots"]),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], ["data dir /nonexistent/cifar does not exist"]),
        (["--dataset", "imagenet"], ["needs --data-dir"]),
        (["--np", "2", "-H", "bad;host:2"], ["invalid host name"]),
        (["--optimizer", "adam9"], ["unknown optimizer", "lamb"]),
        (["--compression", "ef-sign", "--amp", "fp16"], ["ef-sign cannot run under --amp fp16", "--amp bf16"]),
        (["--epochs", "x"], ["Invalid value for '--epochs'"]),
    ],
)
def test_bad_input_is_one_clear_line(args, fragments, tmp_path):
    assert_one_line_error(run_hvdat("train", "--out", tmp_path / "run", *args), *fragments)


def test_a_mistake_only_a_worker_can_see_is_one_line_too(tmp_path):
    """The folder's layout is checked where the data is read (on the workers): still one line and exit 2."""
    (tmp_path / "photos" / "misc").mkdir(parents=True)
    proc = run_hvdat(
        "train", "--np", "2", "--dataset", "imagefolder", "--data-dir", tmp_path / "photos", "--out", tmp_path / "run"
    )
    assert_one_line_error(proc, "is not an ImageFolder dataset", "train/<class>")


def test_an_out_that_cannot_be_a_folder_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    assert_one_line_error(run_hvdat("train", "--out", tmp_path / "afile"), "is a file, not a folder")
    assert_one_line_error(
        run_hvdat("train", "--out", tmp_path / "afile" / "run"), "cannot create the folder", "Not a directory"
    )


def test_np_larger_than_hostfile_slots(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=2\n")
    assert_one_line_error(
        run_hvdat("train", "--np", "3", "--hostfile", hostfile, "--out", tmp_path / "r"),
        "--np 3 is more than the 2 slots",
    )


def test_missing_horovodrun_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "executable", "/nonexistent/bin/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["train", "--np", "2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "horovodrun not found" in err and "bin/install" in err and "Traceback" not in err


def test_checkpoint_from_another_arch(trained_run):
    assert_one_line_error(
        run_hvdat("train", *QUICK, "--out", trained_run, "--resume", "--arch", "preact-resnet18"),
        "holds arch 'small-cnn', not 'preact-resnet18'",
    )


def test_resume_with_changed_training_settings_is_refused_before_anything_is_touched(trained_run):
    config = (trained_run / "config.json").read_text()
    proc = run_hvdat(
        "train",
        *QUICK,
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--out",
        trained_run,
        "--resume",
        "--optimizer",
        "lamb",
        "--eps",
        "2/255",
    )
    assert_one_line_error(
        proc, "--resume with settings that differ", "--eps 0.1 -> 0.00784314", "--optimizer sgd -> lamb"
    )
    assert (trained_run / "config.json").read_text() == config
    # what may change: the length, the world size, the threads (a dry run checks the same)
    args = [*QUICK, "--epochs", "2", "--batch-size", "64", "--out", trained_run, "--resume", "--dry-run"]
    assert run_hvdat("train", *args, "--np", "2", "--threads", "1").returncode == 0
    assert_one_line_error(run_hvdat("train", *args, "--steps", "7"), "--steps 3 -> 7")
    args[args.index("--epochs") + 1] = "1"
    assert_one_line_error(run_hvdat("train", *args), "already has 1 of --epochs 1", "raise --epochs")


def test_resume_without_a_checkpoint(tmp_path):
    assert_one_line_error(run_hvdat("train", "--out", tmp_path / "empty", "--resume"), "no checkpoint at")


def test_existing_run_is_not_silently_overwritten(trained_run):
    assert_one_line_error(run_hvdat("train", *QUICK, "--out", trained_run), "already holds a run", "--resume")


def test_overwrite_starts_the_run_folder_afresh(tmp_path):
    """--overwrite leaves nothing of the old run that the new one could be mistaken for: its log, metrics,
    checkpoints, TensorBoard events and per-rank shards."""
    out = tmp_path / "run"
    args = ["train", *QUICK, "--epochs", "1", "--train-samples", "128", "--compression", "ef-sign", "--out", out]
    run_hvdat(*args, check=True)
    (out / "rank-state" / "rank-7.pt").write_bytes(b"stale")  # a shard of an older, larger run
    marker = "a line of the old run's log"
    with open(out / "logs" / "train.log", "a") as log:
        log.write(marker + "\n")
    run_hvdat(*args, "--overwrite", check=True)
    assert marker not in (out / "logs" / "train.log").read_text()
    assert sorted(p.name for p in (out / "rank-state").iterdir()) == ["rank-0.pt"]
    assert len(read_metrics(out)) == 1
