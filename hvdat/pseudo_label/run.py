"""`hvdat pseudo-label` on the launcher side, as plain functions: check the inputs, launch the sharded worker,
return its summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Tuple

from ..errors import UsageError
from ..launch import Launch, LaunchSpec, build_launch, raise_for_failure, run_launch, validate
from ..out_dirs import file_target
from ..runtime import checkpoint
from .config import PseudoLabelConfig

WORKER = "hvdat.pseudo_label.worker"


def prepare(request: PseudoLabelConfig, spec: LaunchSpec) -> PseudoLabelConfig:
    """Every check that can fail before launch; the resolved job (its checkpoint file)."""
    if request.which not in (checkpoint.LAST, checkpoint.BEST):
        raise UsageError(
            f"unknown --checkpoint {request.which!r}", f"choose from: {checkpoint.LAST}, {checkpoint.BEST}"
        )
    model = Path(request.model)
    ckpt = model / request.which if model.is_dir() else model
    checkpoint.load(ckpt)  # a clear error for a missing or foreign file
    if not Path(request.data_dir).is_dir():
        raise UsageError(f"--data-dir {request.data_dir} does not exist", "point at a folder of unlabeled images")
    if request.batch_size < 1 or request.limit < 0:
        raise UsageError("--batch-size must be >= 1 and --limit >= 0")
    validate(spec)
    out_path = file_target(Path(request.out))
    return request.replace(checkpoint=str(ckpt), out=str(out_path))


def job_launch(job: PseudoLabelConfig, spec: LaunchSpec) -> Launch:
    return build_launch(spec, WORKER, job_file(job))


def job_file(job: PseudoLabelConfig) -> Path:
    out = Path(job.out)
    return out.with_name(out.name + ".job.json")


def run_pseudo_label(
    job: PseudoLabelConfig, launch: Launch, on_event: Callable[[dict], None] = lambda event: None
) -> Dict[str, Any]:
    """Write the job file, run the job (raises JobFailed on failure), return its summary."""
    job.save(job_file(job))
    out = Path(job.out)
    log_path = out.with_name(out.name + ".log")
    result, found = run_launch(launch, log_path, on_event, ("done",))
    raise_for_failure(result, "pseudo-labelling", log_path, kept=lambda: batches_kept(job))
    done = found["done"][-1] if found["done"] else {}
    return {k: v for k, v in done.items() if k != "event"}


def batches_kept(job: PseudoLabelConfig) -> Tuple[str, Dict[str, Any]]:
    """After a failure: the labelled batches kept (a rerun of the same command continues from them)."""
    parts = Path(job.out + ".parts")
    kept = len(list(parts.glob("*/rank-*.npz"))) if parts.is_dir() else 0
    line = f"\n  kept: {kept} labelled batches in {parts}; the same command continues from them"
    return line, {"way_back": {"batches_done": kept, "parts": str(parts), "resume": True}}
