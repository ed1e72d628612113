"""The `hvdat` command line: the Typer app, option declarations turned into Typer options, and rendering
(progress bars, tables, plots). The only package that imports typer or rich."""

# each module registers its command on `app`, in the order `hvdat --help` lists them
from . import train, eval, pseudo_label, report, doctor, bench, slurm, k8s, names  # noqa: F401, I001
from .app import app, main

__all__ = ["app", "main"]
