"""Builds the argv that starts a Horovod job. Pure: imports no torch, runs nothing, never builds a shell string.

`--np 1` on the local machine runs the worker directly (no horovodrun needed); everything else goes through
`horovodrun` with Gloo or MPI, elastic jobs with `--min-np/--max-np` and a host discovery script.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import UsageError
from .spec import LaunchSpec, initial_np, is_local_single, slots_of, validate


def find_horovodrun() -> str:
    beside = Path(sys.executable).parent / "horovodrun"  # the venv's, even when the venv is not activated
    found = str(beside) if beside.exists() else shutil.which("horovodrun")
    if not found:
        raise UsageError("horovodrun not found", "run bin/install (it builds Horovod 0.28.1 into .venv)")
    return found


def worker_argv(module: str, config: Path) -> List[str]:
    return [sys.executable, "-m", module, "--config", str(config)]


def hosts_args(spec: LaunchSpec) -> List[str]:
    """Where the workers go: a discovery script (elastic), a hostfile, or `-H host:slots,...`."""
    if spec.host_discovery_script:
        return ["--host-discovery-script", str(Path(spec.host_discovery_script).resolve())]
    if spec.hostfile:
        return ["--hostfile", spec.hostfile]
    return ["-H", ",".join(f"{h}:{s}" for h, s in slots_of(spec))]


def build_argv(spec: LaunchSpec, module: str, config: Path, horovodrun: Optional[str] = None) -> List[str]:
    """The full command, as a list. `module` is the worker module (`hvdat.train.worker`, ...)."""
    validate(spec)
    if is_local_single(spec):
        return worker_argv(module, config)
    argv = [horovodrun or find_horovodrun()]
    if spec.elastic:
        argv += ["-np", str(initial_np(spec)), "--min-np", str(spec.min_np), "--max-np", str(spec.max_np)]
    else:
        argv += ["-np", str(spec.np)]
    argv += hosts_args(spec)
    argv.append(f"--{spec.launcher}")
    if spec.ssh_port is not None:
        argv += ["--ssh-port", str(spec.ssh_port)]
    if spec.ssh_identity_file:
        argv += ["--ssh-identity-file", spec.ssh_identity_file]
    if spec.network_interfaces:
        argv += ["--network-interfaces", spec.network_interfaces]
    if spec.mpi_args:
        argv += ["--mpi-args", spec.mpi_args]
    return argv + worker_argv(module, config)


def shell_quote(argv: Sequence[str]) -> str:
    """For display only (--dry-run): the argv as a copy-pasteable line."""
    return " ".join(shlex.quote(a) for a in argv)
