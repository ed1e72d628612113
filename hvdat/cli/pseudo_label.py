"""`hvdat pseudo-label`: label unlabeled images with a trained model, sharded over Horovod ranks."""

from __future__ import annotations

import json

from ..launch import LaunchSpec
from ..launch.spec import ELASTIC_OPTIONS
from ..pseudo_label.config import PseudoLabelConfig
from .app import app, err, out
from .options import DryRun, Json, with_options


@app.command("pseudo-label")
@with_options(spec=ELASTIC_OPTIONS)
def pseudo_label(job: PseudoLabelConfig, spec: LaunchSpec, dry_run: DryRun = False, as_json: Json = False) -> None:
    """Label unlabeled images with a trained model, sharded over Horovod ranks (Carmon et al. 2019)."""
    from ..pseudo_label.run import job_launch, prepare, run_pseudo_label

    job = prepare(job, spec)
    launch = job_launch(job, spec)
    if dry_run:
        out.print(launch.display(), highlight=False, soft_wrap=True)
        return
    err.print(f"[dim]labelling images under {job.data_dir} with {job.checkpoint} on {spec.np} worker(s)[/]")
    summary = run_pseudo_label(job, launch)
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        out.print(
            f"wrote {summary['images']} pseudo-labelled images to {job.out} (mean confidence "
            f"{summary['mean_confidence']:.1%}, {summary['seconds']:.1f}s); class counts "
            f"{summary['class_counts']}",
            highlight=False,
        )
