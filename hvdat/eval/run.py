"""`hvdat eval` on the launcher side, as plain functions: resolve and check everything before launch (the plan
included), write the work folder, launch, and build the report. Rendering is the caller's (`on_event`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import UsageError, require_at_least
from ..launch import Launch, LaunchSpec, build_launch, raise_for_failure, run_launch
from ..out_dirs import file_target, make_dir
from ..tb_events import TB_DIR
from .config import EvalConfig
from .examples import EXAMPLES_FILE
from .plan import EVAL_ATTACKS, make_plan
from .queue import QUEUE_DIR
from .summary import headline
from .tracking import EvalTracker

DEFAULT_N_EXAMPLES = 1000  # AutoAttack's README evaluates the first 1000 test points
EVAL_DIR = "eval"
CONFIG_FILE = "config.json"
WORKER = "hvdat.eval.worker"
# Horovod's background thread wakes every cycle (1 ms by default) and, with more than one rank, negotiates over the
# network each time: about 9% of a core per rank on CPUs, taken from the attack's compute threads (on 2 cores, np 1
# at 2 threads ran an AutoAttack batch about 10% faster at 20 ms, and np 2's ranks took 10% less time at 100 ms). An
# evaluation's ranks exchange a handful of objects in all, so each waits at most one cycle more; --cycle-time-ms (or
# --autotune) overrides it.
EVAL_CYCLE_TIME_MS = 50.0


def default_out(ckpt: Path, attack: str, version: str, norm: str) -> Path:
    name = attack + (f"-{version}" if attack == "autoattack" and version != "standard" else "")
    return ckpt.parent / EVAL_DIR / f"{name}-{norm}.json"


def prepare(target: Path, request: EvalConfig) -> EvalConfig:
    """Every check that can fail before anything is launched, in the order a user would fix them; returns the
    resolved config (target kind, dataset, example count, batch size, report path, plan, fingerprint)."""
    import os

    import torch

    from ..data import load_splits
    from .batches import default_batch_size
    from .examples import examples
    from .targets import (
        TARGET_KINDS,
        build_eval_model,
        detect_kind,
        forward_flops,
        hvdat_checkpoint_path,
        read_files,
        spec_of,
    )

    EVAL_ATTACKS.get(request.attack)
    kind = detect_kind(str(target)) if request.target_kind == "auto" else TARGET_KINDS.get(request.target_kind).name
    if kind in ("hvdat", "torchscript", "export", "robustbench") and not Path(target).exists():
        raise UsageError(f"no run directory or model file at {target}", "check the path")
    name = str(hvdat_checkpoint_path(str(target))) if kind == "hvdat" else str(target)
    if request.weights is not None and kind not in ("factory", "torchvision"):
        raise UsageError(f"--weights applies to a factory or torchvision target, not to a {kind} one")
    if (request.mean is None) != (request.std is None):
        raise UsageError("--mean and --std go together", "give both, one number per channel")
    require_at_least("--batch-size", request.batch_size)
    require_at_least("--threads", request.threads, least=0)
    cfg = request.replace(checkpoint=name, target_kind=kind, cwd=os.getcwd(), model_args=dict(request.model_args or {}))
    model, loaded = build_eval_model(cfg, read_files(spec_of(cfg)), torch.device("cpu"))
    trained = loaded.own_config
    dataset = request.dataset or loaded.dataset
    if dataset is None:
        raise UsageError(f"which dataset does {target} classify?", "pass --dataset (and --data-dir)")
    data_dir = request.data_dir
    if data_dir is None and dataset == trained.get("dataset"):
        data_dir = trained.get("data_dir")
    splits = load_splits(dataset, str(data_dir) if data_dir else None, train_samples=1)
    shape = tuple(splits.shape)
    expected = request.input_size or loaded.shape
    grey_for_colour = expected is not None and len(expected) == 3 and expected[0] == 3 and shape[0] == 1
    if (
        expected is not None
        and tuple(expected[int(grey_for_colour) :]) != shape[int(grey_for_colour) - len(expected) :]
    ):
        raise UsageError(
            f"dataset {dataset!r} has images of shape {'x'.join(map(str, shape))}, "
            f"but the model expects {'x'.join(map(str, expected))}",
            "pass the --dataset/--data-dir it was trained on",
        )
    if (
        cfg.mean is not None
        and len(cfg.mean) not in (1, shape[0])
        or cfg.std is not None
        and len(cfg.std) != len(cfg.mean or ())
    ):
        raise UsageError(f"--mean/--std need 1 or {shape[0]} numbers each (the images' channels)")
    test = splits.test
    probe, _ = examples(test, 0, min(2, len(test)), torch.device("cpu"))
    try:
        with torch.no_grad():
            logits = model(probe)
    except Exception as exc:
        raise UsageError(
            f"the model failed on a batch of {len(probe)} {dataset} images of shape {'x'.join(map(str, shape))} "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})",
            "check --dataset/--input-size; a torch.export model needs a dynamic batch dimension",
        ) from None
    outputs = logits.shape[-1] if logits.dim() == 2 else None
    if outputs is None:
        raise UsageError(f"the model returned shape {tuple(logits.shape)}, not (batch, classes) logits")
    num_classes = request.num_classes or loaded.num_classes or outputs
    if outputs != num_classes or num_classes != splits.num_classes:
        raise UsageError(
            f"the model outputs {outputs} classes (expected {num_classes}), the dataset {dataset!r} has "
            f"{splits.num_classes}",
            "pass the --dataset it classifies, or the right --num-classes",
        )
    plan = make_plan(request.attack, request.version, request.norm, num_classes, request.steps, request.restarts)
    available = len(test)
    n_examples = request.n_examples
    if n_examples is None:
        n_examples = min(DEFAULT_N_EXAMPLES, available)
    require_at_least("--n-examples", n_examples)
    if n_examples > available:
        raise UsageError(
            f"--n-examples {n_examples} is more than the {available} test images of {dataset!r}",
            f"use --n-examples {available} or fewer",
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the workers', where they run on this host's kind
    batch_size = request.batch_size or default_batch_size(forward_flops(model, probe), device)
    default = default_out(Path(name), request.attack, request.version, request.norm)
    out_file = Path(request.out) if request.out else default
    if out_file.suffix != ".json":
        out_file = out_file / default.name if out_file.is_dir() else out_file.with_suffix(".json")
    cfg = cfg.replace(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        n_examples=n_examples,
        num_classes=num_classes,
        batch_size=batch_size,
        even_batches=request.batch_size is None,
        out=str(out_file),
        work_dir=str(out_file.with_suffix(".work")),
        plan=plan.to_dict(),
        checkpoint_step=loaded.step,
    )
    return cfg.replace(fingerprint=cfg.compute_fingerprint())


def eval_launch(cfg: EvalConfig, spec: LaunchSpec) -> Launch:
    if spec.cycle_time_ms is None and not spec.autotune:
        spec = dataclasses.replace(spec, cycle_time_ms=EVAL_CYCLE_TIME_MS)
    return build_launch(spec, WORKER, Path(cfg.work_dir) / CONFIG_FILE)


def robust_after(broken_by: List[Optional[str]], stages: List[str]) -> Dict[str, List[bool]]:
    """Per stage (and `clean`), per example: still robust after it. `broken_by` names the stage that broke each
    example (`clean`: misclassified unattacked; None: robust to the end)."""
    order = {name: k for k, name in enumerate(["clean", *stages])}
    broken_at = [len(order) if b is None else order[b] for b in broken_by]
    return {name: [at > k for at in broken_at] for name, k in order.items()}


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
                "broken_by": e["broken_by"],
                "robust_after": robust_after(e.pop("broken_by"), plan["stages"]),
                "adv_pred": e.pop("adv_pred"),
                "perturbation": e.pop("perturbation"),
            }
            for e in summary["sweep"]
        ],
    }
    return {
        "checkpoint": cfg.checkpoint,
        "target_kind": cfg.target_kind,
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
        # this run's share of the work only: resumed batches cost nothing now
        "examples_per_second": summary["n_examples"] * (1 - summary["resumed_share"]) / max(summary["seconds"], 1e-9),
        "world_size": summary["world_size"],
        "threads": summary["threads"],
        "heap": summary["heap"],  # what the workers' C heap does with freed memory (runtime/allocator.py)
        "rank_seconds": summary["rank_seconds"],
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "even_batches": cfg.even_batches,
        "batches": summary["batches"],
        "handout": summary["handout"],
        "mean": cfg.mean,
        "std": cfg.std,
        "resumed_batches": summary["resumed_batches"],
        "resumed_share": summary["resumed_share"],
        "sweep": summary["sweep"],
        "examples": per_example,
    }


def run_eval(cfg: EvalConfig, launch: Launch, on_event: Callable[[dict], None]) -> Dict[str, Any]:
    """Run the evaluation job and write the report (raises JobFailed on failure); returns the report."""
    work = Path(cfg.work_dir)
    file_target(Path(cfg.out))  # before the (long) evaluation, not after it
    make_dir(work)
    cfg.save(work / CONFIG_FILE)
    write_examples(cfg, work / EXAMPLES_FILE)
    log_path = work / "logs" / "eval.log"
    log_path.unlink(missing_ok=True)
    start = time.perf_counter()
    tracker = EvalTracker()
    result, found = run_launch(launch, log_path, lambda event: on_event(tracker.annotate(event)), ("result",))
    raise_for_failure(result, "evaluation", log_path, kept=lambda: batches_kept(cfg))
    results = found["result"]
    if not results:
        raise UsageError("the evaluation finished without a result", f"see {log_path}")
    report = build_report(cfg, results[-1], time.perf_counter() - start)
    out_file = Path(cfg.out)
    tmp = out_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out_file)
    shutil.rmtree(work / "state", ignore_errors=True)  # done: a rerun starts afresh
    shutil.rmtree(work / QUEUE_DIR, ignore_errors=True)
    (work / EXAMPLES_FILE).unlink(missing_ok=True)
    if cfg.tensorboard:
        write_board(cfg, report)
    return report


def write_examples(cfg: EvalConfig, path: Path) -> None:
    """The evaluated examples for the workers (hvdat.eval.examples.save_examples)."""
    from ..data import load_splits
    from .examples import save_examples

    save_examples(load_splits(cfg.dataset, cfg.data_dir, train_samples=1).test, cfg.n_examples, path)


def write_board(cfg: EvalConfig, report: Dict[str, Any]) -> None:
    """Into the evaluated run's TensorBoard events (RUN/tb/, when the checkpoint lies in a run folder), at the
    checkpoint's optimiser step: `eval/NAME/clean_accuracy` and `eval/NAME/robust_accuracy/eps=E` for each eps of
    the sweep (NAME as the default report's: attack[-version]-norm)."""
    run_dir = Path(cfg.checkpoint).parent
    if cfg.target_kind != "hvdat" or not (run_dir / CONFIG_FILE).is_file():
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


def batches_kept(cfg: EvalConfig) -> Tuple[str, Dict[str, Any]]:
    """After a failure: how many batches are done and kept (a rerun of the same command skips them)."""
    from .store import BatchStore

    done = len(BatchStore(Path(cfg.work_dir), cfg.fingerprint, 0).load())
    line = f"\n  kept: {done} finished batches in {Path(cfg.work_dir) / 'state'}; the same command continues"
    return line, {"way_back": {"batches_done": done, "resume": True}}
