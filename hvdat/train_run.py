"""`hvdat train` as a plain function: validate, write the run folder, launch, render, summarise."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from . import checkpoint, launch
from .config import CONFIG_FILE, TrainConfig
from .elastic import ELASTIC_WORKER
from .errors import UsageError
from .job import raise_for_failure, run_job
from .out_dirs import make_dir
from .progress import TrainProgress, epochs_table
from .worker import METRICS

RUN_FILES = (checkpoint.LAST, checkpoint.BEST, METRICS)
STOPPED_EXIT_CODE = 130  # as for Ctrl-C: the run is not finished, but nothing went wrong


# What a resumed run may change: its length, where and how fast it runs, and its per-epoch check. Anything else
# would make the checkpoint's run and config.json (rewritten on resume) describe a run that never happened.
RESUME_MAY_CHANGE = frozenset({"epochs", "np", "threads", "out", "resume", "commit_every", "data_dir", "eval_samples",
                               "eval_steps", "amp", "channels_last", "compile"})


def check_resume_settings(config: TrainConfig, saved: TrainConfig) -> None:
    def show(value) -> str:
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    changed = [f"--{name.replace('_', '-')} {show(getattr(saved, name))} -> {show(getattr(config, name))}"
               for name in sorted(config.to_dict()) if name not in RESUME_MAY_CHANGE
               and getattr(saved, name) != getattr(config, name)]
    if changed:
        raise UsageError(f"--resume with settings that differ from the run in {config.out}: {', '.join(changed)}",
                         f"pass the run's settings (its {CONFIG_FILE}), or train into a new --out")


def check_resume(config: TrainConfig) -> None:
    """--resume needs this arch's checkpoint in --out, and the run's own training settings."""
    out = Path(config.out)
    state = checkpoint.load(out / checkpoint.LAST, arch=config.arch)  # clear error for a missing or foreign file
    if (out / CONFIG_FILE).is_file():
        check_resume_settings(config, TrainConfig.load(out / CONFIG_FILE))
    if state.get("epoch", 0) >= config.epochs:
        raise UsageError(f"the run in {out} already has {state['epoch']} of --epochs {config.epochs}",
                         "raise --epochs to train it further")


def prepare_out(config: TrainConfig, overwrite: bool) -> Path:
    """Check that --out fits --resume/--overwrite, and clear it when starting over."""
    out = Path(config.out)
    has_run = (out / checkpoint.LAST).exists()
    if config.resume:
        check_resume(config)
    elif has_run and not overwrite:
        raise UsageError(f"{out} already holds a run", "pass --resume to continue it, --overwrite to start over, "
                                                       "or choose another --out")
    elif overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    return make_dir(out)


def run_training(config: TrainConfig, spec: launch.LaunchSpec, *, dry_run: bool, overwrite: bool, as_json: bool,
                 out: Console, err: Console) -> None:
    config.validate()
    launch.validate(spec)
    run_dir = Path(config.out)
    config_path = run_dir / CONFIG_FILE
    argv = launch.build_argv(spec, ELASTIC_WORKER if spec.elastic else "hvdat.worker", config_path)
    if dry_run:
        if config.resume:  # a dry run checks what it can without touching --out
            check_resume(config)
        out.print(launch.shell_quote(argv), highlight=False, soft_wrap=True)
        return
    prepare_out(config, overwrite)
    config.save(config_path)
    log_path = run_dir / "logs" / "train.log"
    stopped: dict = {}

    def on_event(event: dict) -> None:
        if event.get("event") == "stopped":
            stopped.update(event)
        progress.handle(event)

    with TrainProgress(err) as progress:
        result = run_job(argv, log_path, on_event)
    if stopped and result.returncode == 0:
        err.print(f"stopped by signal at epoch {stopped['epoch'] + 1}, batch {stopped['batch']}/{stopped['batches']}; "
                  f"checkpoint {stopped['checkpoint']}; continue with the same command plus --resume",
                  highlight=False, soft_wrap=True)
        if as_json:  # scripts learn where it stopped and what to resume from
            out.print_json(json.dumps({"out": str(run_dir), "epochs": progress.epochs, "stopped": {
                key: stopped[key] for key in ("epoch", "batch", "batches", "step", "checkpoint")}}))
        raise typer.Exit(STOPPED_EXIT_CODE)
    raise_for_failure(result, "training", log_path)
    if not progress.epochs:
        raise UsageError("training produced no epochs", f"is --epochs larger than the epochs already in {run_dir}?")
    summary = {"out": str(run_dir), "epochs": progress.epochs, "final": progress.epochs[-1],
               "best_robust_acc": max((e["test_robust_acc"] for e in progress.epochs
                                   if e["test_robust_acc"] is not None), default=None)}
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        out.print(epochs_table(progress.epochs, title=f"hvdat train: {run_dir}"))
