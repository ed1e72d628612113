"""`hvdat k8s`: writes a Kubeflow MPIJob (kubeflow.org/v2beta1) for a train or eval command, for `kubectl apply`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
import yaml
from typing_extensions import Annotated

from ..launch.mpijob import MPIJobSpec, mpijob
from .app import app, err, out
from .options import with_options


@app.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@with_options()
def k8s(
    spec: MPIJobSpec,
    command: Annotated[
        Optional[List[str]],
        typer.Argument(help="The hvdat command the launcher runs, after --: train ... or eval ...", show_default=False),
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write the MPIJob to this file (default: stdout).")
    ] = None,
) -> None:
    """Write a Kubeflow MPIJob for a train or eval command: the operator's hostfile (or, elastic, its
    discover_hosts.sh) gives the launcher its workers, which run the image's sshd."""
    text = yaml.safe_dump(mpijob(spec, list(command or [])), sort_keys=False)
    if output is None:
        out.file.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    err.print(f"wrote {output}; start it with: kubectl apply -f {output}", highlight=False, soft_wrap=True)
