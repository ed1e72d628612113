"""The Typer app, its root options, and `main()`: every HvdatError and usage mistake becomes one line.

Commands live one per module beside this one (train, eval, pseudo_label, report, doctor, bench, names) and register
on `app` when `hvdat.cli` is imported.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer
from rich.console import Console
from typing_extensions import Annotated

from .. import __version__
from ..errors import HvdatError

app = typer.Typer(
    help="Distributed adversarial training on Horovod.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        out.print(f"hvdat {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Distributed adversarial training (DAT) on Horovod: PGD/FGSM/TRADES, LAMB, compressed gradients."""


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: every HvdatError and usage mistake becomes one line on stderr (HVDAT_DEBUG=1: traceback)."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="hvdat", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except HvdatError as exc:
        if os.environ.get("HVDAT_DEBUG"):
            raise
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # click's usage errors: unknown option, bad type, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":
            err.print(exc.format_message(), highlight=False)
            return 0
        if os.environ.get("HVDAT_DEBUG"):
            raise
        err.print(
            f"[bold red]error:[/] {exc.format_message()}; see 'hvdat {_command_of(argv)}--help'",
            highlight=False,
            soft_wrap=True,
        )
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return 130


def _command_of(argv: Optional[List[str]]) -> str:
    args = sys.argv[1:] if argv is None else argv
    return f"{args[0]} " if args and not args[0].startswith("-") else ""
