"""The Typer app, its root options, and `main()`: every HvdatError and usage mistake becomes one line.

Commands live one per module beside this one (train, eval, pseudo_label, report, doctor, bench, names) and register
on `app` when `hvdat.cli` is imported.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typing_extensions import Annotated

from .. import __version__
from ..errors import HvdatError, JobFailed

app = typer.Typer(
    help="Distributed adversarial training on Horovod.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)
out = Console()
_invocation: List[str] = []  # this run's arguments, for the command that continues a failed job


def invocation(drop: tuple = (), add: tuple = ()) -> str:
    """This hvdat command line as a shell line, without the flags in `drop` and with those in `add` (once)."""
    args = [arg for arg in _invocation if arg not in drop]
    return shlex.join(["hvdat", *args, *(flag for flag in add if flag not in args)])


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
    _invocation[:] = sys.argv[1:] if argv is None else list(argv)
    try:
        result = command.main(args=argv, prog_name="hvdat", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except HvdatError as exc:
        if os.environ.get("HVDAT_DEBUG"):
            raise
        way_back = exc.report.get("way_back") if isinstance(exc, JobFailed) else None
        if way_back is not None and "command" not in way_back:  # eval, pseudo-label: the same command continues
            exc.then(f"\n  continue with: {invocation()}", way_back={**way_back, "command": invocation()})
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        if isinstance(exc, JobFailed) and exc.report and "--json" in _invocation:  # scripts get the same fields
            out.print_json(json.dumps({"error": str(exc).split("\n", 1)[0], **exc.report}))
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
