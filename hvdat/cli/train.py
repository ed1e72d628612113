"""`hvdat train`: options from TrainConfig and LaunchSpec, a live progress bar, the epochs table or JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Tuple

import typer
from typing_extensions import Annotated

from ..errors import JobFailed
from ..launch import LaunchSpec, validate
from ..options import OUTPUT
from ..train.config import TrainConfig
from ..train.run_folder import CONFIG_FILE
from .allocation import slurm_hosts
from .app import app, err, invocation, out
from .options import DryRun, Json, JsonEventsFlag, given, json_modes, rebase, with_options
from .progress import TrainProgress, epochs_table

STOPPED_EXIT_CODE = 130  # as for Ctrl-C: the run is not finished, but nothing went wrong


@app.command()
@with_options()
def train(
    spec: LaunchSpec,
    config: TrainConfig,
    saved: Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            help="Start a new run from a run's config.json (or its folder): its settings and --np, with the options "
            "typed here overriding them; --out and --resume are this command's.",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config", help="Print the resolved configuration (as config.json) and exit.", rich_help_panel=OUTPUT
        ),
    ] = False,
    dry_run: DryRun = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start over in an --out that holds a run.", rich_help_panel=OUTPUT)
    ] = False,
    as_json: Json = False,
    json_events: JsonEventsFlag = False,
) -> None:
    """Train a model with adversarial examples on one machine or a Horovod cluster."""
    from ..train.run import prepare_training, run_training

    spec = slurm_hosts(spec)
    config = config.replace(np=spec.np)
    if saved is not None:
        config, spec = from_saved(saved, config, spec)
    if print_config:
        config.validate()
        validate(spec)
        out.file.write(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        return
    launch = prepare_training(config, spec, dry_run=dry_run)
    if dry_run:
        out.print(launch.display(), highlight=False, soft_wrap=True)
        return
    stream = json_modes(as_json, json_events, out.file)
    with TrainProgress(err) as progress:

        def handle(event: dict) -> None:
            progress.handle(event)
            if stream is not None:
                stream.handle(event)

        try:
            outcome = run_training(config, launch, overwrite=overwrite, on_event=handle)
        except JobFailed as failed:  # the way back ends the report: the exact command that continues the run
            way_back = failed.report.get("way_back", {})
            command = invocation(drop=("--overwrite",), add=("--resume",) if way_back.get("resume") else ())
            failed.then(f"\n  continue with: {command}", way_back={**way_back, "command": command})
            raise
    if outcome.stopped:
        stopped = outcome.stopped
        err.print(
            f"stopped by signal at epoch {stopped['epoch'] + 1}, batch {stopped['batch']}/{stopped['batches']}; "
            f"checkpoint {stopped['checkpoint']}; continue with the same command plus --resume",
            highlight=False,
            soft_wrap=True,
        )
        summary = {
            "out": outcome.out,
            "epochs": outcome.epochs,
            "stopped": {key: stopped[key] for key in ("epoch", "batch", "batches", "step", "checkpoint")},
        }
        if as_json:  # scripts learn where it stopped and what to resume from
            out.print_json(json.dumps(summary))
        elif stream is not None:
            stream.write("summary", summary)
        raise typer.Exit(STOPPED_EXIT_CODE)
    if as_json:
        out.print_json(json.dumps(outcome.summary()))
    elif stream is not None:
        stream.write("summary", outcome.summary())
    else:
        out.print(epochs_table(outcome.epochs, title=f"hvdat train: {outcome.out}"))


def from_saved(path: Path, config: TrainConfig, spec: LaunchSpec) -> Tuple[TrainConfig, LaunchSpec]:
    """A saved run's configuration with the options typed on this command line over it. --np comes from it too
    (the same global batch reproduces the same run) unless typed; HVDAT_* variables and defaults do not override
    it. --out and --resume stay this command's: a new run, not the saved one's folder."""
    saved = TrainConfig.load(path / CONFIG_FILE if path.is_dir() else path)
    if "np" not in given(LaunchSpec):
        spec = dataclasses.replace(spec, np=saved.np)
    return rebase(saved).replace(out=config.out, resume=config.resume, np=spec.np), spec
