"""`hvdat pseudo-label` as a plain function: check the inputs, launch the sharded worker, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

from rich.console import Console

from . import checkpoint
from .errors import UsageError
from .job import raise_for_failure, run_job
from .launch import LaunchSpec, build_argv, validate
from .out_dirs import file_target


def run_pseudo_label(*, model: Path, data_dir: Path, out_path: Path, which: str, batch_size: int, limit: int,
                     threads: int, spec: LaunchSpec, as_json: bool, out: Console, err: Console) -> Dict:
    if which not in (checkpoint.LAST, checkpoint.BEST):
        raise UsageError(f"unknown --checkpoint {which!r}", f"choose from: {checkpoint.LAST}, {checkpoint.BEST}")
    ckpt = Path(model) / which if Path(model).is_dir() else Path(model)
    checkpoint.load(ckpt)  # a clear error for a missing or foreign file
    if not Path(data_dir).is_dir():
        raise UsageError(f"--data-dir {data_dir} does not exist", "point at a folder of unlabeled images")
    if batch_size < 1 or limit < 0:
        raise UsageError("--batch-size must be >= 1 and --limit >= 0")
    validate(spec)
    out_path = file_target(Path(out_path))
    job_file = out_path.with_name(out_path.name + ".job.json")
    job_file.write_text(json.dumps({"checkpoint": str(ckpt), "data_dir": str(data_dir), "out": str(out_path),
                                    "batch_size": batch_size, "limit": limit, "threads": threads}, indent=2))
    log_path = out_path.with_name(out_path.name + ".log")
    done: Dict = {}
    err.print(f"[dim]labelling images under {data_dir} with {ckpt} on {spec.np} worker(s)[/]")
    result = run_job(build_argv(spec, "hvdat.pseudo_label_worker", job_file), log_path,
                     lambda event: done.update(event) if event.get("event") == "done" else None)
    raise_for_failure(result, "pseudo-labelling", log_path)
    summary = {k: v for k, v in done.items() if k != "event"}
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        out.print(f"wrote {summary['images']} pseudo-labelled images to {out_path} (mean confidence "
                  f"{summary['mean_confidence']:.1%}, {summary['seconds']:.1f}s); class counts "
                  f"{summary['class_counts']}", highlight=False)
    return summary
