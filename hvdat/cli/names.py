"""`hvdat list`: the names each registry accepts (the registries are the single source of the CLI's choices)."""

from __future__ import annotations

from typing import Dict, Optional

import typer
from typing_extensions import Annotated

from ..errors import UsageError
from ..registry import Registry
from .app import app, out


def all_registries() -> Dict[str, Registry]:
    """Every registry by the plural name `hvdat list` shows."""
    from ..attacks import ATTACKS
    from ..compression import COMPRESSORS
    from ..data import DATASETS
    from ..models import MODELS
    from ..optim import OPTIMIZERS
    from ..schedule import SCHEDULES

    return {
        "models": MODELS,
        "datasets": DATASETS,
        "attacks": ATTACKS,
        "optimizers": OPTIMIZERS,
        "schedules": SCHEDULES,
        "compressors": COMPRESSORS,
    }


@app.command("list")
def list_registries(
    kind: Annotated[
        Optional[str],
        typer.Argument(help="models, datasets, attacks, optimizers, schedules or compressors (default: all)."),
    ] = None,
) -> None:
    """List the names each option accepts."""
    from rich.table import Table

    table = Table(show_header=True)
    table.add_column("kind")
    table.add_column("names")
    registries = all_registries()
    if kind is not None and kind not in registries:
        raise UsageError(f"unknown kind {kind!r}", f"choose from: {', '.join(registries)}")
    for name, registry in registries.items():
        if kind in (None, name):
            table.add_row(name, ", ".join(registry.names()))
    out.print(table)
