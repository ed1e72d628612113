"""`hvdat train` on the launcher side, as plain functions: validate, check a resume, write the run folder, launch,
collect the epochs. Rendering is the caller's: events go to the `on_event` callback it hands in."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..attacks import ATTACKS
from ..errors import UsageError
from ..launch import Launch, LaunchSpec, build_launch, raise_for_failure, run_launch, validate
from ..out_dirs import make_dir
from ..runtime import checkpoint
from ..tb_events import TB_DIR
from .config import TrainConfig
from .position import Position
from .run_folder import CONFIG_FILE, METRICS, TRAIN_LOG
from .tracking import Anchor, TrainTracker

WORKER, ELASTIC_WORKER = "hvdat.train.worker", "hvdat.train.elastic"
RUN_FILES = (checkpoint.LAST, checkpoint.BEST, METRICS, TRAIN_LOG)

# What a resumed run may change: its length, where and how fast it runs, and its per-epoch check. Anything else
# would make the checkpoint's run and config.json (rewritten on resume) describe a run that never happened.
RESUME_MAY_CHANGE = frozenset(
    {
        "epochs",
        "np",
        "threads",
        "out",
        "resume",
        "commit_every",
        "data_dir",
        "eval_samples",
        "eval_steps",
        "amp",
        "channels_last",
        "compile",
        "tensorboard",
    }
)


@dataclass
class TrainOutcome:
    """What a finished (or gracefully stopped) job reported."""

    out: str
    epochs: List[Dict[str, Any]] = field(default_factory=list)
    stopped: Optional[Dict[str, Any]] = None  # where a signal stopped it (epoch, batch, step, checkpoint)

    def summary(self) -> Dict[str, Any]:
        robust = [e["test_robust_acc"] for e in self.epochs if e["test_robust_acc"] is not None]
        return {
            "out": self.out,
            "epochs": self.epochs,
            "final": self.epochs[-1],
            "best_robust_acc": max(robust, default=None),
        }


def check_resume_settings(config: TrainConfig, saved: TrainConfig) -> None:
    def show(value) -> str:
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    changed = [
        f"--{name.replace('_', '-')} {show(getattr(saved, name))} -> {show(getattr(config, name))}"
        for name in sorted(config.to_dict())
        if name not in RESUME_MAY_CHANGE and getattr(saved, name) != getattr(config, name)
    ]
    if changed:
        raise UsageError(
            f"--resume with settings that differ from the run in {config.out}: {', '.join(changed)}",
            f"pass the run's settings (its {CONFIG_FILE}), or train into a new --out",
        )


def check_resume(config: TrainConfig) -> Dict[str, Any]:
    """--resume needs this arch's checkpoint in --out, and the run's own training settings; returns the checkpoint."""
    out = Path(config.out)
    state = load_last(out, config.arch)
    if (out / CONFIG_FILE).is_file():
        check_resume_settings(config, TrainConfig.load(out / CONFIG_FILE))
    if state.get("epoch", 0) >= config.epochs:
        raise UsageError(
            f"the run in {out} already has {state['epoch']} of --epochs {config.epochs}",
            "raise --epochs to train it further",
        )
    return state


def load_last(out: Path, arch: str) -> Dict[str, Any]:
    """last.pt, or one line saying it is damaged (a kill mid-write on a filesystem without atomic rename, a full
    disk, a bad copy) and offering best.pt, when that loads, or a fresh start."""
    last, best = out / checkpoint.LAST, out / checkpoint.BEST
    try:
        return checkpoint.load(last, arch=arch)  # clear error for a missing or foreign file
    except UsageError as exc:
        if not last.is_file() or "not a loadable" not in str(exc):
            raise
    try:
        good = checkpoint.load(best, arch=arch)
        offer = (
            f"{best} loads (epoch {good.get('epoch')}, step {good.get('step')}): `cp {best} {last}` and --resume "
            "again continues from it, or pass --overwrite instead of --resume to start afresh"
        )
    except UsageError:
        offer = "no loadable best.pt either: pass --overwrite instead of --resume to start afresh"
    raise UsageError(f"{last} is truncated or corrupt (it does not load)", offer) from None


def resume_anchor(config: TrainConfig, state: Optional[Dict[str, Any]]) -> Anchor:
    """Where a resumed run starts (epoch, batch converted to this world size and batch as the workers do, step)."""
    if state is None:
        return Anchor()
    from ..data.extra import extra_per_batch

    labeled = config.batch_size - (
        extra_per_batch(config.extra_fraction, config.batch_size) if config.extra_data else 0
    )
    position = Position()
    position.load_state_dict(state, labeled, config.np)
    return Anchor(position.epoch, position.batch, position.step)


def prepare_out(config: TrainConfig, overwrite: bool) -> Optional[Dict[str, Any]]:
    """Check that --out fits --resume/--overwrite, and clear it when starting over; the checkpoint resumed."""
    out = Path(config.out)
    has_run = (out / checkpoint.LAST).exists()
    state = None
    if config.resume:
        state = check_resume(config)
    elif has_run and not overwrite:
        raise UsageError(
            f"{out} already holds a run",
            "pass --resume to continue it, --overwrite to start over, or choose another --out",
        )
    elif overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for folder in (TB_DIR, checkpoint.RANK_STATE_DIR):
            shutil.rmtree(out / folder, ignore_errors=True)
    make_dir(out)
    return state


def prepare_training(config: TrainConfig, spec: LaunchSpec, dry_run: bool = False) -> Launch:
    """Every check that can fail before launch; the job's command. A dry run also checks a --resume, touching
    nothing."""
    config.validate()
    validate(spec)
    if spec.elastic and (config.schedule == "accelat" or ATTACKS.get(config.attack).replayed):
        raise UsageError(  # their state (the carried perturbation, K, the cuts) does not travel in hvd.elastic's
            f"--attack {config.attack} --schedule {config.schedule} does not run elastic yet",
            "drop --min-np/--max-np, or use another --attack/--schedule",
        )
    # the static worker stops after an agreed step on SIGTERM (elastic ones are ended by horovodrun)
    worker = ELASTIC_WORKER if spec.elastic else WORKER
    launch = build_launch(spec, worker, Path(config.out) / CONFIG_FILE, graceful=not spec.elastic)
    if dry_run and config.resume:
        check_resume(config)
    return launch


def run_training(
    config: TrainConfig, launch: Launch, *, overwrite: bool, on_event: Callable[[dict], None]
) -> TrainOutcome:
    """Write the run folder, run the job to its end, and return what it reported (raises JobFailed on failure).
    `on_event` gets each event with what the launcher adds (hvdat.train.tracking: `step`, `steps_done`,
    `steps_total`, `eta_seconds`); the TensorBoard files (hvdat.train.board) are written from the same events."""
    state = prepare_out(config, overwrite)
    run_dir = Path(config.out)
    config.save(run_dir / CONFIG_FILE)
    log_path = run_dir / TRAIN_LOG
    tracker = TrainTracker(resume_anchor(config, state))
    board = None
    if config.tensorboard:
        from .board import TrainBoard

        board = TrainBoard(run_dir, config)

    def handle(event: dict) -> None:
        event = tracker.annotate(event)
        if board is not None:
            board.handle(event)
        on_event(event)

    try:
        result, found = run_launch(launch, log_path, handle, ("epoch", "stopped"))
    finally:
        if board is not None:
            board.close()
    outcome = TrainOutcome(out=str(run_dir), epochs=found["epoch"])
    # "stopped" comes after every rank's shard and last.pt are on disk: the run is resumable even when horovodrun
    # then fails because a scheduler signalled its shells around the workers too (Slurm's scancel signals them all)
    if found["stopped"]:
        outcome.stopped = found["stopped"][-1]
        return outcome
    raise_for_failure(result, "training", log_path, kept=lambda: way_back(run_dir))
    if not outcome.epochs:
        raise UsageError("training produced no epochs", f"is --epochs larger than the epochs already in {run_dir}?")
    return outcome


def way_back(run_dir: Path) -> Tuple[str, Dict[str, Any]]:
    """After a failure: the last checkpoint that loads (its epoch, batch and step), to continue from with
    --resume; the report's lines and its `way_back` field."""
    path = run_dir / checkpoint.LAST
    try:
        state = checkpoint.load(path)
    except UsageError as exc:
        why = "none was written yet" if not path.exists() else str(exc).split(";")[0]
        return f"\n  no checkpoint to resume from ({why}): rerun the command to start afresh", {
            "way_back": {"resume": False, "checkpoint": None}
        }
    epoch, batch, step = int(state.get("epoch", 0)), int(state.get("batch", 0)), int(state.get("step", 0))
    where = f"epoch {epoch} done" + (f", epoch {epoch + 1} at batch {batch}" if batch else "") + f", step {step}"
    found = {"resume": True, "checkpoint": str(path), "epoch": epoch, "batch": batch, "step": step}
    return f"\n  last good checkpoint: {path} ({where})", {"way_back": found}
