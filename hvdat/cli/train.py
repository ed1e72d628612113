"""`hvdat train`: options from TrainConfig and LaunchSpec, a live progress bar, the epochs table or JSON."""

from __future__ import annotations

import json

import typer
from typing_extensions import Annotated

from ..launch import LaunchSpec
from ..options import OUTPUT
from ..train.config import TrainConfig
from .app import app, err, out
from .options import DryRun, Json, with_options
from .progress import TrainProgress, epochs_table

STOPPED_EXIT_CODE = 130  # as for Ctrl-C: the run is not finished, but nothing went wrong


@app.command()
@with_options()
def train(
    spec: LaunchSpec,
    config: TrainConfig,
    dry_run: DryRun = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start over in an --out that holds a run.", rich_help_panel=OUTPUT)
    ] = False,
    as_json: Json = False,
) -> None:
    """Train a model with adversarial examples on one machine or a Horovod cluster."""
    from ..train.run import prepare_training, run_training

    config = config.replace(np=spec.np)
    launch = prepare_training(config, spec, dry_run=dry_run)
    if dry_run:
        out.print(launch.display(), highlight=False, soft_wrap=True)
        return
    with TrainProgress(err) as progress:
        outcome = run_training(config, launch, overwrite=overwrite, on_event=progress.handle)
    if outcome.stopped:
        stopped = outcome.stopped
        err.print(
            f"stopped by signal at epoch {stopped['epoch'] + 1}, batch {stopped['batch']}/{stopped['batches']}; "
            f"checkpoint {stopped['checkpoint']}; continue with the same command plus --resume",
            highlight=False,
            soft_wrap=True,
        )
        if as_json:  # scripts learn where it stopped and what to resume from
            out.print_json(
                json.dumps(
                    {
                        "out": outcome.out,
                        "epochs": outcome.epochs,
                        "stopped": {key: stopped[key] for key in ("epoch", "batch", "batches", "step", "checkpoint")},
                    }
                )
            )
        raise typer.Exit(STOPPED_EXIT_CODE)
    if as_json:
        out.print_json(json.dumps(outcome.summary()))
    else:
        out.print(epochs_table(outcome.epochs, title=f"hvdat train: {outcome.out}"))
