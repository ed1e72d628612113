"""`hvdat report`: PNG plots of a run's training curves and of robust accuracy against eps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from .app import app, out


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `hvdat train` (and `hvdat eval`).")],
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="Where the PNGs go (default: RUN_DIR/plots).")
    ] = None,
) -> None:
    """Plot training curves (metrics.jsonl) and robust accuracy against eps (eval reports) as PNGs."""
    from .plots import write_plots

    for path in write_plots(run_dir, out_dir):
        out.print(str(path), highlight=False)
