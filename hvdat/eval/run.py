"""`hvdat eval` on the launcher side, as plain functions: resolve and check everything before launch (the plan
included), write the work folder, launch, and build the report. Rendering is the caller's (`on_event`)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict

from ..errors import UsageError
from ..launch import Launch, LaunchSpec, build_launch, raise_for_failure, run_launch, validate
from ..out_dirs import file_target, make_dir
from ..runtime import checkpoint
from ..tb_events import TB_DIR
from .config import EvalConfig
from .plan import EVAL_ATTACKS, make_plan
from .summary import headline
from .tracking import EvalTracker

DEFAULT_N_EXAMPLES = 1000  # AutoAttack's README evaluates the first 1000 test points
EVAL_DIR = "eval"
CONFIG_FILE = "config.json"
WORKER = "hvdat.eval.worker"


def resolve_checkpoint(target: Path) -> Path:
    """A run directory (best.pt, else last.pt) or a checkpoint file."""
    if target.is_dir():
        for name in (checkpoint.BEST, checkpoint.LAST):
            if (target / name).is_file():
                return target / name
        raise UsageError(
            f"{target} holds no {checkpoint.BEST} or {checkpoint.LAST}",
            "point at a run directory made by `hvdat train`, or at a checkpoint file",
        )
    if not target.exists():
        raise UsageError(f"no run directory or checkpoint at {target}", "check the path")
    return target


def default_out(ckpt: Path, attack: str, version: str, norm: str) -> Path:
    name = attack + (f"-{version}" if attack == "autoattack" and version != "standard" else "")
    return ckpt.parent / EVAL_DIR / f"{name}-{norm}.json"


def prepare(target: Path, request: EvalConfig) -> EvalConfig:
    """Every check that can fail before anything is launched, in the order a user would fix them; returns the
    resolved config (checkpoint, dataset, example count, report path, plan, fingerprint)."""
    from ..data import load_splits

    EVAL_ATTACKS.get(request.attack)
    ckpt = resolve_checkpoint(target)
    state = checkpoint.load(ckpt)
    plan = make_plan(
        request.attack, request.version, request.norm, state["num_classes"], request.steps, request.restarts
    )
    if request.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {request.batch_size}")
    if request.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {request.threads}")
    trained = state.get("config") or {}
    dataset = request.dataset or state.get("dataset") or trained.get("dataset")
    data_dir = request.data_dir
    if data_dir is None and dataset == trained.get("dataset"):
        data_dir = trained.get("data_dir")
    splits = load_splits(dataset, str(data_dir) if data_dir else None, train_samples=1)
    if splits.num_classes != state["num_classes"] or list(splits.shape) != list(state["shape"]):
        raise UsageError(
            f"dataset {dataset!r} has {splits.num_classes} classes of shape {tuple(splits.shape)}, "
            f"but the checkpoint expects {state['num_classes']} of {tuple(state['shape'])}",
            "pass the --dataset/--data-dir it was trained on",
        )
    available = len(splits.test)
    n_examples = request.n_examples
    if n_examples is None:
        n_examples = min(DEFAULT_N_EXAMPLES, available)
    if n_examples < 1:
        raise UsageError(f"--n-examples must be >= 1, got {n_examples}")
    if n_examples > available:
        raise UsageError(
            f"--n-examples {n_examples} is more than the {available} test images of {dataset!r}",
            f"use --n-examples {available} or fewer",
        )
    default = default_out(ckpt, request.attack, request.version, request.norm)
    out_file = Path(request.out) if request.out else default
    if out_file.suffix != ".json":
        out_file = out_file / default.name if out_file.is_dir() else out_file.with_suffix(".json")
    cfg = request.replace(
        checkpoint=str(ckpt),
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        n_examples=n_examples,
        out=str(out_file),
        work_dir=str(out_file.with_suffix(".work")),
        plan=plan.to_dict(),
        checkpoint_step=int(state.get("step", 0)),
    )
    return cfg.replace(fingerprint=cfg.compute_fingerprint())


def eval_launch(cfg: EvalConfig, spec: LaunchSpec) -> Launch:
    validate(spec)
    return build_launch(spec, WORKER, Path(cfg.work_dir) / CONFIG_FILE)


def build_report(cfg: EvalConfig, summary: Dict[str, Any], wall_seconds: float) -> Dict[str, Any]:
    """The JSON report: documented top-level keys (see README), the sweep, and per-example results."""
    plan = summary["plan"]
    top = headline(summary)
    per_example = {
        "index": summary["indices"],
        "label": summary["labels"],
        "clean_pred": summary["clean_pred"],
        "by_eps": [
            {
                "eps": e["eps"],
                "broken_by": e.pop("broken_by"),
                "adv_pred": e.pop("adv_pred"),
                "perturbation": e.pop("perturbation"),
            }
            for e in summary["sweep"]
        ],
    }
    return {
        "checkpoint": cfg.checkpoint,
        "arch": summary["arch"],
        "dataset": cfg.dataset,
        "attack": cfg.attack,
        "version": cfg.version if cfg.attack == "autoattack" else None,
        "norm": cfg.norm,
        "eps": top["eps"],
        "n_examples": summary["n_examples"],
        "clean_accuracy": summary["clean_accuracy"],
        "robust_accuracy": top["robust_accuracy"],
        "stages": top["stages"],
        "max_perturbation": top["max_perturbation"],
        "perturbation_ok": top["perturbation_ok"],
        "pixel_range": top["pixel_range"],
        "sanity": top["sanity"],
        "departures": plan["departures"],
        "settings": plan["settings"],
        "seconds": summary["seconds"],
        "wall_seconds": wall_seconds,
        # this run's examples only: resumed chunks cost nothing now
        "examples_per_second": (summary["n_examples"] - summary["resumed_examples"]) / max(summary["seconds"], 1e-9),
        "world_size": summary["world_size"],
        "threads": summary["threads"],
        "rank_seconds": summary["rank_seconds"],
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "resumed_chunks": summary["resumed_chunks"],
        "resumed_examples": summary["resumed_examples"],
        "sweep": summary["sweep"],
        "examples": per_example,
    }


def run_eval(cfg: EvalConfig, launch: Launch, on_event: Callable[[dict], None]) -> Dict[str, Any]:
    """Run the evaluation job and write the report (raises JobFailed on failure); returns the report."""
    work = Path(cfg.work_dir)
    file_target(Path(cfg.out))  # before the (long) evaluation, not after it
    make_dir(work)
    cfg.save(work / CONFIG_FILE)
    log_path = work / "logs" / "eval.log"
    log_path.unlink(missing_ok=True)
    start = time.perf_counter()
    tracker = EvalTracker()
    result, found = run_launch(launch, log_path, lambda event: on_event(tracker.annotate(event)), ("result",))
    raise_for_failure(result, "evaluation", log_path)
    results = found["result"]
    if not results:
        raise UsageError("the evaluation finished without a result", f"see {log_path}")
    report = build_report(cfg, results[-1], time.perf_counter() - start)
    out_file = Path(cfg.out)
    tmp = out_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out_file)
    shutil.rmtree(work / "state", ignore_errors=True)  # done: a rerun starts afresh
    if cfg.tensorboard:
        write_board(cfg, report)
    return report


def write_board(cfg: EvalConfig, report: Dict[str, Any]) -> None:
    """Into the evaluated run's TensorBoard events (RUN/tb/, when the checkpoint lies in a run folder), at the
    checkpoint's optimiser step: `eval/NAME/clean_accuracy` and `eval/NAME/robust_accuracy/eps=E` for each eps of
    the sweep (NAME as the default report's: attack[-version]-norm)."""
    run_dir = Path(cfg.checkpoint).parent
    if not (run_dir / CONFIG_FILE).is_file():
        return
    from ..tb_events import EventWriter

    name = default_out(Path(cfg.checkpoint), cfg.attack, cfg.version, cfg.norm).stem
    writer = EventWriter(run_dir / TB_DIR)
    try:
        writer.scalar(f"eval/{name}/clean_accuracy", report["clean_accuracy"], cfg.checkpoint_step)
        for entry in report["sweep"]:
            tag = f"eval/{name}/robust_accuracy/eps={entry['eps']:.4g}"
            writer.scalar(tag, entry["robust_accuracy"], cfg.checkpoint_step)
    finally:
        writer.close()
