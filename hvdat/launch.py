"""Builds the argv that starts a Horovod job. Pure: imports no torch, runs nothing, never builds a shell string.

`--np 1` on the local machine runs the worker directly (no horovodrun needed); everything else goes through
`horovodrun` with Gloo or MPI.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .errors import UsageError

LAUNCHERS = ("gloo", "mpi")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9])?)*$")
_INTERFACE = re.compile(r"^[A-Za-z0-9_.:\-]{1,32}$")


@dataclass(frozen=True)
class LaunchSpec:
    np: int = 1
    hosts: Optional[str] = None  # "host1:4,host2:4"
    hostfile: Optional[str] = None
    launcher: str = "gloo"
    ssh_port: Optional[int] = None
    ssh_identity_file: Optional[str] = None
    network_interfaces: Optional[str] = None  # "eth0,ib0"
    mpi_args: Optional[str] = None  # passed to mpirun verbatim, as one argument (horovodrun splits it)
    min_np: Optional[int] = None  # elastic (Gloo): keep training while at least this many workers are alive
    max_np: Optional[int] = None
    host_discovery_script: Optional[str] = None  # elastic: prints the usable `host:slots`, one per line

    @property
    def elastic(self) -> bool:
        return self.min_np is not None or self.max_np is not None or self.host_discovery_script is not None


def parse_hosts(text: str) -> List[Tuple[str, int]]:
    """`host1:4,host2:4` -> [(host1, 4), (host2, 4)]; a host without `:slots` has one slot, as in horovodrun."""
    hosts = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, slots = item.partition(":")
        hosts.append((_check_host(name, text), _slots(slots or "1", item)))
    if not hosts:
        raise UsageError(f"no hosts in {text!r}", "write -H host1:4,host2:4")
    return hosts


def parse_hostfile(path: str) -> List[Tuple[str, int]]:
    """Lines of `host slots=N` (horovodrun/mpirun style) or `host:N`; `#` starts a comment."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"hostfile {path} does not exist", "write one `host slots=N` per line")
    hosts = []
    for number, raw in enumerate(file.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"(\S+?)(?::(\d+)|\s+slots\s*=\s*(\d+))?", line)
        if not match:
            raise UsageError(f"{path}:{number}: cannot read {raw.strip()!r}", "write `host slots=N`")
        hosts.append((_check_host(match.group(1), f"{path}:{number}"), _slots(match.group(2) or match.group(3)
                                                                                 or "1", line)))
    if not hosts:
        raise UsageError(f"hostfile {path} lists no hosts", "write one `host slots=N` per line")
    return hosts


def _check_host(name: str, where: str) -> str:
    if not _HOSTNAME.match(name):
        raise UsageError(f"invalid host name {name!r} in {where!r}", "use a DNS name or IPv4 address")
    return name


def _slots(text: str, where: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"invalid slot count in {where!r}", "slots must be a positive integer, as in host:4")
    return int(text)


def slots_of(spec: LaunchSpec) -> List[Tuple[str, int]]:
    if spec.hosts and spec.hostfile:
        raise UsageError("give either -H/--hosts or --hostfile, not both")
    if spec.hosts:
        return parse_hosts(spec.hosts)
    if spec.hostfile:
        return parse_hostfile(spec.hostfile)
    return [("localhost", spec.np)]


def validate(spec: LaunchSpec) -> None:
    if spec.np < 1:
        raise UsageError(f"--np must be >= 1, got {spec.np}")
    if spec.launcher not in LAUNCHERS:
        raise UsageError(f"unknown launcher {spec.launcher!r}", f"choose from: {', '.join(LAUNCHERS)}")
    total = sum(slots for _, slots in slots_of(spec))
    if spec.np > total and not spec.host_discovery_script:
        raise UsageError(f"--np {spec.np} is more than the {total} slots in the host list",
                         "add hosts or slots (-H host:SLOTS), or lower --np")
    if spec.ssh_port is not None and not 0 < spec.ssh_port < 65536:
        raise UsageError(f"--ssh-port {spec.ssh_port} is not a port number")
    if spec.ssh_identity_file and not Path(spec.ssh_identity_file).is_file():
        raise UsageError(f"--ssh-identity-file {spec.ssh_identity_file} does not exist")
    if spec.elastic:
        from .elastic import validate_elastic

        validate_elastic(spec)
    if spec.network_interfaces and not all(_INTERFACE.match(i) for i in spec.network_interfaces.split(",")):
        raise UsageError(f"invalid --network-interfaces {spec.network_interfaces!r}", "write e.g. eth0,ib0")


def is_local_single(spec: LaunchSpec) -> bool:
    return spec.np == 1 and not spec.hosts and not spec.hostfile and not spec.elastic


def find_horovodrun() -> str:
    beside = Path(sys.executable).parent / "horovodrun"  # the venv's, even when the venv is not activated
    found = str(beside) if beside.exists() else shutil.which("horovodrun")
    if not found:
        raise UsageError("horovodrun not found", "run bin/install (it builds Horovod 0.28.1 into .venv)")
    return found


def worker_argv(module: str, config: Path) -> List[str]:
    return [sys.executable, "-m", module, "--config", str(config)]


def build_argv(spec: LaunchSpec, module: str, config: Path, horovodrun: Optional[str] = None) -> List[str]:
    """The full command, as a list. `module` is the worker module (`hvdat.worker`, `hvdat.eval_worker`, ...)."""
    validate(spec)
    if is_local_single(spec):
        return worker_argv(module, config)
    argv = [horovodrun or find_horovodrun(), "-np", str(spec.np)]
    if spec.elastic:
        from .elastic import elastic_args

        argv = [argv[0], *elastic_args(spec)]
    elif spec.hostfile:
        argv += ["--hostfile", spec.hostfile]
    else:
        argv += ["-H", ",".join(f"{h}:{s}" for h, s in slots_of(spec))]
    argv.append(f"--{spec.launcher}")
    if spec.ssh_port is not None:
        argv += ["--ssh-port", str(spec.ssh_port)]
    if spec.ssh_identity_file:
        argv += ["--ssh-identity-file", spec.ssh_identity_file]
    if spec.network_interfaces:
        argv += ["--network-interfaces", spec.network_interfaces]
    if spec.mpi_args:
        if spec.launcher != "mpi":
            raise UsageError("--mpi-args needs --launcher mpi")
        argv += ["--mpi-args", spec.mpi_args]
    return argv + worker_argv(module, config)


def shell_quote(argv: Sequence[str]) -> str:
    """For display only (--dry-run): the argv as a copy-pasteable line."""
    import shlex

    return " ".join(shlex.quote(a) for a in argv)
