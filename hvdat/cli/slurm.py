"""`hvdat slurm`: writes (and with --submit, submits) an sbatch script for a train or eval command."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..errors import UsageError
from ..launch.sbatch import SLURM, SbatchSpec, hvdat_command, script
from ..train.config import TrainConfig
from .app import app, err, out
from .options import with_options


@app.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@with_options()
def slurm(
    spec: SbatchSpec,
    command: Annotated[
        Optional[List[str]],
        typer.Argument(help="The hvdat command the job runs, after --: train ... or eval ...", show_default=False),
    ] = None,
    script_path: Annotated[
        Optional[Path], typer.Option("--script", help="Write the script to this file (default: stdout).")
    ] = None,
    submit: Annotated[
        bool, typer.Option("--submit", help="Submit it with sbatch and print the job id.", rich_help_panel=SLURM)
    ] = False,
) -> None:
    """Write an sbatch script for a train or eval command: hosts and slots come from the allocation, scancel and
    preemption stop it gracefully, and a requeued train job resumes from last.pt."""
    command = list(command or [])
    text = script(spec, command, _run_folder(command), hvdat_command(spec, sys.executable))
    for folder in (spec.log and Path(spec.log).parent, spec.chdir):
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)  # sbatch does not create them: the job would fail
    if script_path is not None:
        script_path.parent.mkdir(parents=True, exist_ok=True)
        script_path.write_text(text)
        script_path.chmod(0o755)
    if not submit:
        if script_path is None:
            out.file.write(text)
        else:
            err.print(f"wrote {script_path}; submit it with: sbatch {script_path}", highlight=False, soft_wrap=True)
        return
    try:
        submitted = subprocess.run(
            ["sbatch", "--parsable"] + ([str(script_path)] if script_path else []),
            input=None if script_path else text,
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise UsageError(
            "sbatch not found", "submit from a Slurm login node, or write the script with --script"
        ) from None
    if submitted.returncode != 0:
        raise UsageError(f"sbatch failed: {submitted.stderr.strip() or submitted.stdout.strip()}")
    out.print(submitted.stdout.strip().split(";")[0], highlight=False)


def _run_folder(command: List[str]) -> Optional[str]:
    """A train command's --out (TrainConfig's default when not given): where a last.pt means resume."""
    if not command or command[0] != "train":
        return None
    for index, arg in enumerate(command):
        if arg == "--out" and index + 1 < len(command):
            return command[index + 1]
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "out")
