"""Reusable Typer option aliases, shared by the commands. Help texts list the registries' names."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from typing_extensions import Annotated

from .attacks import ATTACKS
from .compression import COMPRESSORS
from .data import DATASETS
from .launch import LaunchSpec
from .models import MODELS
from .optim import OPTIMIZERS
from .schedule import SCHEDULES

CLUSTER = "Cluster"
DATA = "Data and model"
ATTACK = "Adversarial training"
OPTIM = "Optimisation"
OUTPUT = "Output"
FAST = "GPU fast path"


def _names(registry) -> str:
    return ", ".join(registry.names())


Np = Annotated[int, typer.Option("--np", help="Number of workers (Horovod ranks).", rich_help_panel=CLUSTER)]
Hosts = Annotated[Optional[str], typer.Option("-H", "--hosts", help="Hosts and slots, e.g. host1:4,host2:4.",
                                              rich_help_panel=CLUSTER)]
Hostfile = Annotated[Optional[Path], typer.Option(help="File with one `host slots=N` per line.",
                                                  rich_help_panel=CLUSTER)]
Launcher = Annotated[str, typer.Option(help="Horovod controller: gloo or mpi.", rich_help_panel=CLUSTER)]
SshPort = Annotated[Optional[int], typer.Option(help="SSH port on the remote hosts.", rich_help_panel=CLUSTER)]
SshIdentity = Annotated[Optional[Path], typer.Option(help="SSH private key for the remote hosts.",
                                                     rich_help_panel=CLUSTER)]
NetworkInterfaces = Annotated[Optional[str], typer.Option(help="NICs Horovod may use, e.g. eth0,ib0.",
                                                          rich_help_panel=CLUSTER)]
MpiArgs = Annotated[Optional[str], typer.Option(help="Extra mpirun arguments (with --launcher mpi).",
                                                rich_help_panel=CLUSTER)]
Threads = Annotated[int, typer.Option(help="Torch threads per worker (0: cores / workers per host).",
                                      rich_help_panel=CLUSTER)]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the exact launch command and exit.",
                                      rich_help_panel=CLUSTER)]

Dataset = Annotated[str, typer.Option(help=f"Dataset: {_names(DATASETS)}.", rich_help_panel=DATA)]
DataDir = Annotated[Optional[Path], typer.Option(help="Where the dataset lives (cifar*, imagefolder, imagenet).",
                                                 rich_help_panel=DATA)]
Arch = Annotated[str, typer.Option(help=f"Model: {_names(MODELS)}, or any torchvision classifier (resnet50, ...).",
                                   rich_help_panel=DATA)]
Eps = Annotated[str, typer.Option(help="Perturbation budget in [0,1] pixels: 8/255 or 0.031.",
                                  rich_help_panel=ATTACK)]
Norm = Annotated[str, typer.Option(help="Threat model: linf or l2.", rich_help_panel=ATTACK)]
Seed = Annotated[int, typer.Option(help="Random seed (each rank derives its own).", rich_help_panel=OUTPUT)]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (progress goes to stderr).",
                                    rich_help_panel=OUTPUT)]

ATTACK_HELP = "Training attack: " + "; ".join(f"{name}: {ATTACKS.get(name).doc}" for name in ATTACKS.names())
OPTIMIZER_HELP = f"Optimizer: {_names(OPTIMIZERS)}."
SCHEDULE_HELP = f"LR schedule after warm-up: {_names(SCHEDULES)}."
COMPRESSION_HELP = "Gradient compression: " + "; ".join(
    f"{name}: {COMPRESSORS.get(name).doc}" for name in COMPRESSORS.names())


def _eval_attack_help() -> str:
    from .eval_attacks import EVAL_ATTACKS

    return "Evaluation attack: " + "; ".join(f"{n}: {EVAL_ATTACKS.get(n).doc}" for n in EVAL_ATTACKS.names())


EVAL_ATTACK_HELP = _eval_attack_help()


# The options that say where a job runs, in the order `--help` lists them: (parameter, alias, default).
LAUNCH_OPTIONS = (("np", Np, 1), ("hosts", Hosts, None), ("hostfile", Hostfile, None), ("launcher", Launcher, "gloo"),
                  ("ssh_port", SshPort, None), ("ssh_identity_file", SshIdentity, None),
                  ("network_interfaces", NetworkInterfaces, None), ("mpi_args", MpiArgs, None))


def launch_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the LAUNCH_OPTIONS where it has a `spec: LaunchSpec` parameter, and call it with them
    gathered into that LaunchSpec (paths as strings)."""
    signature = inspect.signature(command, eval_str=True)
    params = list(signature.parameters.values())
    at = [p.name for p in params].index("spec")
    launch = [inspect.Parameter(name, params[at].kind, default=default, annotation=alias)
              for name, alias, default in LAUNCH_OPTIONS]

    @functools.wraps(command)
    def with_spec(**values: Any) -> Any:
        given = {name: values.pop(name) for name, _, _ in LAUNCH_OPTIONS}
        for name in ("hostfile", "ssh_identity_file"):
            given[name] = str(given[name]) if given[name] else None
        return command(spec=LaunchSpec(**given), **values)

    with_spec.__signature__ = signature.replace(parameters=params[:at] + launch + params[at + 1:])
    with_spec.__annotations__ = {p.name: p.annotation for p in with_spec.__signature__.parameters.values()}
    return with_spec
