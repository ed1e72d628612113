"""Option declarations: each CLI option is declared once, as a field of the frozen config it fills.

`option(default, HELP_OR_OPTION, ...)` returns a dataclass field whose metadata holds an `Option` (help text, help
panel, flags, and how a command-line value becomes the field's value). `hvdat.cli.options` turns these fields into
Typer options and the parsed values back into the config, so adding an option touches one place: its field.
This module imports nothing heavy (no torch, typer or rich): the launcher and the workers can read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

CLUSTER = "Cluster"
DATA = "Data and model"
ATTACK = "Adversarial training"
OPTIM = "Optimisation"
OUTPUT = "Output"
FAST = "GPU fast path"
HOROVOD = "Horovod tuning"

Parse = Callable[[Any, Dict[str, Any]], Any]  # (command-line value, every command-line value) -> field value


@dataclass(frozen=True)
class Option:
    """How one config field appears on the command line."""

    help: Union[str, Callable[[], str]]  # a callable is asked at CLI build time (help that lists a registry)
    panel: str = ""
    flags: Tuple[str, ...] = ()  # default: --field-name (and --no-field-name for a bool)
    cli_type: Optional[type] = None  # what the command line parses, when it differs from the field (eps: str)
    parse: Optional[Parse] = None  # command-line value -> field value (default: paths become strings)
    cli_default: Any = None  # the field's default as the command line writes it (eps: "8/255"), when it differs
    envvar: Optional[str] = None  # an environment variable that sets it (a cluster convention: HVDAT_NP, ...)

    def help_text(self) -> str:
        return self.help() if callable(self.help) else self.help

    def to_field_value(self, value: Any, values: Dict[str, Any]) -> Any:
        if self.parse is not None:
            return self.parse(value, values)
        return str(value) if isinstance(value, Path) else value


def option(
    default: Any = dataclasses.MISSING,
    spec: Union[Option, str, Callable[[], str]] = "",
    panel: str = "",
    **changes: Any,
) -> Any:
    """A config field declared as a command-line option. `spec` is an Option shared by several configs (with
    `changes` applied) or this option's help text."""
    declared = spec if isinstance(spec, Option) else Option(help=spec, panel=panel)
    if panel and isinstance(spec, Option):
        changes["panel"] = panel
    if changes:
        declared = dataclasses.replace(declared, **changes)
    return dataclasses.field(default=default, metadata={"option": declared})


def declared_options(cls) -> Dict[str, Option]:
    """The fields of a config dataclass that are command-line options, in declaration order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(cls) if "option" in f.metadata}


# Options that several commands share, declared here once.
THREADS = Option("Torch threads per worker (0: cores / workers per host).", CLUSTER)
BUCKET_MB = Option(
    "Packed compressors: MB of fp32 gradient exchanged per grouped allgather (0: one per tensor).", CLUSTER
)
SEED = Option("Random seed (each rank derives its own).", OUTPUT)
DATA_DIR = Option("Where the dataset lives (cifar*, imagefolder, imagenet).", DATA)
NORM = Option("Threat model: linf or l2.", ATTACK)
TENSORBOARD = Option("Write TensorBoard event files into RUN/tb/.", OUTPUT)
