"""`hvdat eval` as a plain function: validate, write the work folder, launch, then write and show the report."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional

from rich.console import Console
from rich.table import Table

from . import checkpoint, launch
from .config import parse_eps
from .errors import UsageError
from .eval_attacks import EVAL_ATTACKS, make_plan
from .eval_config import EvalConfig
from .evaluate import headline
from .job import raise_for_failure, run_job
from .out_dirs import file_target, make_dir
from .progress import EvalProgress

DEFAULT_N_EXAMPLES = 1000  # AutoAttack's README evaluates the first 1000 test points
EVAL_DIR = "eval"


def parse_eps_list(text: str, norm: str) -> tuple:
    """`8/255`, or a sweep `1/255,2/255,4/255,8/255`. L-inf budgets lie in (0, 1]; L2/L1 ones may exceed 1."""
    values = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        values.append(parse_eps(part, norm=norm))
    if not values:
        raise UsageError(f"invalid eps {text!r}", "write it like 8/255, or a sweep like 1/255,2/255,4/255,8/255")
    return tuple(dict.fromkeys(values))


def resolve_checkpoint(target: Path) -> Path:
    """A run directory (best.pt, else last.pt) or a checkpoint file."""
    if target.is_dir():
        for name in (checkpoint.BEST, checkpoint.LAST):
            if (target / name).is_file():
                return target / name
        raise UsageError(f"{target} holds no {checkpoint.BEST} or {checkpoint.LAST}",
                         "point at a run directory made by `hvdat train`, or at a checkpoint file")
    if not target.exists():
        raise UsageError(f"no run directory or checkpoint at {target}", "check the path")
    return target


def default_out(ckpt: Path, attack: str, version: str, norm: str) -> Path:
    name = attack + (f"-{version}" if attack == "autoattack" and version != "standard" else "")
    return ckpt.parent / EVAL_DIR / f"{name}-{norm}.json"


def format_eps(eps: float, norm: str) -> str:
    scaled = eps * 255
    if norm == "linf" and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{eps:.4g}"


def prepare(target: Path, *, attack: str, version: str, eps: str, norm: str, steps: Optional[int],
            restarts: Optional[int], n_examples: Optional[int], batch_size: int, dataset: Optional[str],
            data_dir: Optional[Path], seed: int, threads: int, out_path: Optional[Path], np: int) -> EvalConfig:
    """Every check that can fail before anything is launched, in the order a user would fix them."""
    from .data import load_splits

    EVAL_ATTACKS.get(attack)
    ckpt = resolve_checkpoint(target)
    state = checkpoint.load(ckpt)
    eps_values = parse_eps_list(eps, norm)
    plan = make_plan(attack, version, norm, state["num_classes"], steps, restarts)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if threads < 0:
        raise UsageError(f"--threads must be >= 0, got {threads}")
    trained = state.get("config") or {}
    dataset = dataset or state.get("dataset") or trained.get("dataset")
    if data_dir is None and dataset == trained.get("dataset"):
        data_dir = trained.get("data_dir")
    splits = load_splits(dataset, str(data_dir) if data_dir else None, train_samples=1)
    if splits.num_classes != state["num_classes"] or list(splits.shape) != list(state["shape"]):
        raise UsageError(f"dataset {dataset!r} has {splits.num_classes} classes of shape {tuple(splits.shape)}, "
                         f"but the checkpoint expects {state['num_classes']} of {tuple(state['shape'])}",
                         "pass the --dataset/--data-dir it was trained on")
    available = len(splits.test)
    if n_examples is None:
        n_examples = min(DEFAULT_N_EXAMPLES, available)
    if n_examples < 1:
        raise UsageError(f"--n-examples must be >= 1, got {n_examples}")
    if n_examples > available:
        raise UsageError(f"--n-examples {n_examples} is more than the {available} test images of {dataset!r}",
                         f"use --n-examples {available} or fewer")
    out_file = Path(out_path) if out_path else default_out(ckpt, attack, version, norm)
    if out_file.suffix != ".json":
        out_file = out_file / f"{default_out(ckpt, attack, version, norm).name}" if out_file.is_dir() \
            else out_file.with_suffix(".json")
    cfg = EvalConfig(checkpoint=str(ckpt), dataset=dataset, data_dir=str(data_dir) if data_dir else None,
                     attack=attack, version=version, eps=eps_values, norm=norm, steps=steps, restarts=restarts,
                     n_examples=n_examples, batch_size=batch_size, seed=seed, threads=threads, out=str(out_file),
                     work_dir=str(out_file.with_suffix(".work")), np=np)
    del plan  # validated; the workers rebuild the same plan
    return cfg.replace(fingerprint=cfg.compute_fingerprint())


def build_report(cfg: EvalConfig, summary: Dict[str, Any], wall_seconds: float) -> Dict[str, Any]:
    """The JSON report: documented top-level keys (see README), the sweep, and per-example results."""
    plan = summary["plan"]
    top = headline(summary)
    per_example = {"index": summary["indices"], "label": summary["labels"], "clean_pred": summary["clean_pred"],
                   "by_eps": [{"eps": e["eps"], "broken_by": e.pop("broken_by"), "adv_pred": e.pop("adv_pred"),
                               "perturbation": e.pop("perturbation")} for e in summary["sweep"]]}
    return {
        "checkpoint": cfg.checkpoint, "arch": summary["arch"], "dataset": cfg.dataset,
        "attack": cfg.attack, "version": cfg.version if cfg.attack == "autoattack" else None, "norm": cfg.norm,
        "eps": top["eps"], "n_examples": summary["n_examples"],
        "clean_accuracy": summary["clean_accuracy"], "robust_accuracy": top["robust_accuracy"],
        "stages": top["stages"], "max_perturbation": top["max_perturbation"],
        "perturbation_ok": top["perturbation_ok"], "pixel_range": top["pixel_range"], "sanity": top["sanity"],
        "departures": plan["departures"], "settings": plan["settings"],
        "seconds": summary["seconds"], "wall_seconds": wall_seconds,
        # this run's examples only: resumed chunks cost nothing now
        "examples_per_second": (summary["n_examples"] - summary["resumed_examples"]) / max(summary["seconds"], 1e-9),
        "world_size": summary["world_size"], "threads": summary["threads"], "rank_seconds": summary["rank_seconds"],
        "seed": cfg.seed, "batch_size": cfg.batch_size, "resumed_chunks": summary["resumed_chunks"],
        "resumed_examples": summary["resumed_examples"],
        "sweep": summary["sweep"], "examples": per_example,
    }


def report_table(report: Dict[str, Any]) -> Table:
    norm = report["norm"]
    name = report["attack"] + (f" ({report['version']})" if report.get("version") else "")
    table = Table(title=f"hvdat eval: {name}, {norm}, {report['n_examples']} examples, "
                        f"{report['world_size']} worker(s), {report['seconds']:.1f} s")
    table.add_column("")
    for entry in report["sweep"]:
        table.add_column(f"eps {format_eps(entry['eps'], norm)}", justify="right")
    table.add_row("clean accuracy", *[f"{report['clean_accuracy']:.2%}"] * len(report["sweep"]))
    stages = list(report["stages"])
    for stage in stages:
        table.add_row(f"  after {stage}", *[f"{e['stages'][stage]:.2%}" for e in report["sweep"]])
    table.add_row("[bold]robust accuracy[/]", *[f"[bold]{e['robust_accuracy']:.2%}[/]" for e in report["sweep"]])
    table.add_row("max perturbation", *[f"{e['max_perturbation']:.4g}" + ("" if e["perturbation_ok"] else " !")
                                        for e in report["sweep"]])
    return table


def run_eval(cfg: EvalConfig, spec: launch.LaunchSpec, *, dry_run: bool, as_json: bool, out: Console,
             err: Console) -> Dict[str, Any]:
    launch.validate(spec)
    work = Path(cfg.work_dir)
    config_path = work / "config.json"
    argv = launch.build_argv(spec, "hvdat.eval_worker", config_path)
    if dry_run:
        out.print(launch.shell_quote(argv), highlight=False, soft_wrap=True)
        return {}
    file_target(Path(cfg.out))  # before the (long) evaluation, not after it
    make_dir(work)
    cfg.save(config_path)
    log_path = work / "logs" / "eval.log"
    log_path.unlink(missing_ok=True)
    start = time.perf_counter()
    with EvalProgress(err) as progress:
        result = run_job(argv, log_path, progress.handle)
    raise_for_failure(result, "evaluation", log_path)
    if progress.result is None:
        raise UsageError("the evaluation finished without a result", f"see {log_path}")
    report = build_report(cfg, progress.result, time.perf_counter() - start)
    out_file = Path(cfg.out)
    tmp = out_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out_file)
    shutil.rmtree(work / "state", ignore_errors=True)  # done: a rerun starts afresh
    if as_json:
        out.print_json(json.dumps({k: v for k, v in report.items() if k != "examples"}))
        return report
    out.print(report_table(report))
    for departure in report["departures"]:
        err.print(f"[yellow]departure from the reference:[/] {departure}", highlight=False)
    for entry in report["sweep"]:
        for flag, value in entry["sanity"].items():
            if value["raised"]:
                err.print(f"[bold yellow]warning[/] ({flag}, eps {format_eps(entry['eps'], report['norm'])}): "
                          f"{value['detail']}", highlight=False)
    err.print(f"[dim]report: {out_file}[/]", highlight=False)
    return report
