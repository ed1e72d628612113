"""Where a job runs: the launch options (`--np`, `-H`, `--hostfile`, `--launcher`, ssh, NICs, elastic) and Horovod's
own knobs (timeline, autotune, fusion, cycle time, cache, hierarchical collectives, logging), parsed and checked.
Pure: imports no torch and runs nothing.

Horovod elastic runs on Gloo only; it blacklists a failed worker's whole host, so on one machine the discovery
script lists distinct names for it (`localhost:1`, `127.0.0.1:1`, `$(hostname):1`).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import UsageError, require_at_least
from ..events import HANG_TIMEOUT_LEAST, HEARTBEAT_SECONDS
from ..options import CLUSTER, HOROVOD, option

LAUNCHERS = ("gloo", "mpi")
ELASTIC_OPTIONS = ("min_np", "max_np", "host_discovery_script", "slots_per_host")  # `hvdat train` only
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9])?)*$"
)
_INTERFACE = re.compile(r"^[A-Za-z0-9_.:\-]{1,32}$")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "FATAL")  # Horovod's (horovodrun --log-level)


def _log_level(value: Any, values: Dict[str, Any]) -> Optional[str]:
    return None if value is None else str(value).upper()


@dataclass(frozen=True)
class LaunchSpec:
    np: int = option(1, "Number of workers (Horovod ranks).", CLUSTER, flags=("--np",), envvar="HVDAT_NP")
    hosts: Optional[str] = option(
        None, "Hosts and slots, e.g. host1:4,host2:4.", CLUSTER, flags=("-H", "--hosts"), envvar="HVDAT_HOSTS"
    )
    hostfile: Optional[str] = option(
        None, "File with one `host slots=N` per line.", CLUSTER, cli_type=Path, envvar="HVDAT_HOSTFILE"
    )
    launcher: str = option("gloo", "Horovod controller: gloo or mpi.", CLUSTER, envvar="HVDAT_LAUNCHER")
    ssh_port: Optional[int] = option(None, "SSH port on the remote hosts.", CLUSTER, envvar="HVDAT_SSH_PORT")
    ssh_identity_file: Optional[str] = option(
        None, "SSH private key for the remote hosts.", CLUSTER, cli_type=Path, envvar="HVDAT_SSH_IDENTITY_FILE"
    )
    network_interfaces: Optional[str] = option(
        None, "NICs Horovod may use, e.g. eth0,ib0.", CLUSTER, envvar="HVDAT_NETWORK_INTERFACES"
    )
    # passed to mpirun verbatim, as one argument (horovodrun splits it)
    mpi_args: Optional[str] = option(None, "Extra mpirun arguments (with --launcher mpi).", CLUSTER)
    min_np: Optional[int] = option(
        None, "Elastic (Gloo): keep training while at least this many workers are alive.", CLUSTER, flags=("--min-np",)
    )
    max_np: Optional[int] = option(None, "Elastic: grow up to this many workers.", CLUSTER, flags=("--max-np",))
    host_discovery_script: Optional[str] = option(
        None, "Elastic: executable printing the usable host:slots, one per line.", CLUSTER, cli_type=Path
    )
    slots_per_host: Optional[int] = option(
        None, "Elastic: slots of a discovered host printed without :slots (Kubeflow's discover_hosts.sh).", CLUSTER
    )
    # Horovod's own knobs: horovodrun flags, or the HOROVOD_* variables it would set when the worker runs directly
    timeline_filename: Optional[str] = option(
        None,
        "Record a Horovod timeline (Chrome trace JSON; rank 0 writes it, on its host) into this file.",
        HOROVOD,
        cli_type=Path,
    )
    timeline_mark_cycles: bool = option(
        False, "Mark Horovod's background cycles on the timeline.", HOROVOD, flags=("--timeline-mark-cycles",)
    )
    autotune: bool = option(
        False, "Let Horovod autotune fusion threshold, cycle time and hierarchy.", HOROVOD, flags=("--autotune",)
    )
    autotune_log_file: Optional[str] = option(
        None, "CSV log of the autotune trials (needs --autotune).", HOROVOD, cli_type=Path
    )
    fusion_threshold_mb: Optional[int] = option(
        None, "Tensor fusion buffer in MB (0: no fusion; Horovod's default 128).", HOROVOD
    )
    cycle_time_ms: Optional[float] = option(
        None, "Delay between Horovod's fusion cycles in ms (Horovod's default 1; hvdat eval's 50).", HOROVOD
    )
    cache_capacity: Optional[int] = option(
        None, "Tensor names Horovod caches to skip negotiation (0: off; default 1024).", HOROVOD
    )
    hierarchical_allreduce: Optional[bool] = option(
        None, "Hierarchical allreduce (local, then across hosts); --no-... pins it off under --autotune.", HOROVOD
    )
    hierarchical_allgather: Optional[bool] = option(
        None, "Hierarchical allgather; --no-... pins it off under --autotune.", HOROVOD
    )
    start_timeout: Optional[int] = option(
        None, "Seconds horovodrun may take to check the hosts and start the workers (default 30).", HOROVOD
    )
    gloo_timeout: Optional[int] = option(
        None,
        "Seconds a Gloo collective waits for a silent rank (stopped, hung, or on a lost host) before the job fails "
        "and names it (Horovod's default 30; an elastic job's joining workers need more than their start-up).",
        HOROVOD,
    )
    hang_timeout: float = option(
        120.0,
        "Seconds without a heartbeat from a rank (each worker beats every 2 s from a thread of its own, also while its "
        "main thread computes, evaluates or writes) before the launcher ends the job and names that rank as hung or "
        "stopped; Gloo and MPI alike (MPI has no timeout of its own). 0: off. Not for elastic jobs.",
        HOROVOD,
    )
    log_level: Optional[str] = option(
        None, f"Horovod's log level on stderr: {', '.join(LOG_LEVELS)} (default WARNING).", HOROVOD, parse=_log_level
    )
    output_filename: Optional[str] = option(
        None,
        "Also write each rank's output to DIR/rank.R/stdout and stderr (horovodrun's --output-filename).",
        HOROVOD,
        cli_type=Path,
    )

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
        slots = _slots(match.group(2) or match.group(3) or "1", line)
        hosts.append((_check_host(match.group(1), f"{path}:{number}"), slots))
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


def initial_np(spec: LaunchSpec) -> int:
    """Elastic workers to start with: --np, raised to --min-np (the default --np 1 means 'as few as allowed')."""
    return max(spec.np, spec.min_np or 1)


def validate(spec: LaunchSpec) -> None:
    require_at_least("--np", spec.np)
    if spec.launcher not in LAUNCHERS:
        raise UsageError(f"unknown launcher {spec.launcher!r}", f"choose from: {', '.join(LAUNCHERS)}")
    total = sum(slots for _, slots in slots_of(spec))
    if spec.np > total and not spec.host_discovery_script:
        raise UsageError(
            f"--np {spec.np} is more than the {total} slots in the host list",
            "add hosts or slots (-H host:SLOTS), or lower --np",
        )
    if spec.ssh_port is not None and not 0 < spec.ssh_port < 65536:
        raise UsageError(f"--ssh-port {spec.ssh_port} is not a port number")
    if spec.ssh_identity_file and not Path(spec.ssh_identity_file).is_file():
        raise UsageError(f"--ssh-identity-file {spec.ssh_identity_file} does not exist")
    if spec.elastic:
        _validate_elastic(spec)
    if spec.network_interfaces and not all(_INTERFACE.match(i) for i in spec.network_interfaces.split(",")):
        raise UsageError(f"invalid --network-interfaces {spec.network_interfaces!r}", "write e.g. eth0,ib0")
    if spec.slots_per_host is not None and (spec.slots_per_host < 1 or not spec.host_discovery_script):
        raise UsageError("--slots-per-host needs --host-discovery-script and a count >= 1")
    if spec.mpi_args and spec.launcher != "mpi":
        raise UsageError("--mpi-args needs --launcher mpi")
    validate_tuning(spec)


def validate_tuning(spec: LaunchSpec) -> None:
    """Horovod's knobs: the checks horovodrun would make (after the job had started), and the files' folders."""
    for value, name, least in (
        (spec.fusion_threshold_mb, "--fusion-threshold-mb", 0),
        (spec.cycle_time_ms, "--cycle-time-ms", 0),
        (spec.cache_capacity, "--cache-capacity", 0),
        (spec.start_timeout, "--start-timeout", 1),
        (spec.gloo_timeout, "--gloo-timeout", 1),
    ):
        require_at_least(name, value, least)
    if not (spec.hang_timeout == 0 or spec.hang_timeout >= HANG_TIMEOUT_LEAST):  # also refuses NaN
        raise UsageError(
            f"--hang-timeout must be 0 (off) or >= {HANG_TIMEOUT_LEAST:g} s, got {spec.hang_timeout}",
            f"the workers beat every {HEARTBEAT_SECONDS:g} s",
        )
    if spec.log_level is not None and spec.log_level.upper() not in LOG_LEVELS:
        raise UsageError(f"unknown --log-level {spec.log_level!r}", f"choose from: {', '.join(LOG_LEVELS)}")
    if spec.timeline_mark_cycles and not spec.timeline_filename:
        raise UsageError("--timeline-mark-cycles needs --timeline-filename")
    if spec.autotune_log_file and not spec.autotune:
        raise UsageError("--autotune-log-file needs --autotune")
    for path, name in (
        (spec.timeline_filename, "--timeline-filename"),
        (spec.autotune_log_file, "--autotune-log-file"),
    ):
        if path:
            _check_file_target(path, name, rank0_is_here(spec))
    if spec.output_filename and Path(spec.output_filename).is_file():
        raise UsageError(f"--output-filename {spec.output_filename} is a file", "it names a folder (DIR/rank.R/stdout)")


def _check_file_target(path: str, name: str, here: bool) -> None:
    if Path(path).is_dir():
        raise UsageError(f"{name} {path} is a folder", f"name the file to write, e.g. {name} {Path(path) / 'x'}")
    if here and not Path(path).resolve().parent.is_dir():
        raise UsageError(f"{name} {path}: the folder {Path(path).parent} does not exist", "create it first")


LOCAL_NAMES = ("localhost", "127.0.0.1")


def rank0_is_here(spec: LaunchSpec) -> bool:
    """Whether rank 0 (which writes the timeline and the autotune log) runs on this machine: the folder of such a
    file is only checked here then."""
    if spec.host_discovery_script:
        return False
    if not (spec.hosts or spec.hostfile):
        return True
    try:
        first = slots_of(spec)[0][0]
    except UsageError:
        return False
    return first in LOCAL_NAMES or first in (socket.gethostname(), socket.getfqdn())


def _validate_elastic(spec: LaunchSpec) -> None:
    if spec.launcher != "gloo":
        raise UsageError("elastic training (--min-np/--max-np) runs on Gloo only", "drop --launcher mpi")
    if spec.min_np is None or spec.max_np is None:
        raise UsageError("elastic training needs both --min-np and --max-np")
    if not 1 <= spec.min_np <= spec.max_np:
        raise UsageError(f"need 1 <= --min-np <= --max-np, got {spec.min_np} and {spec.max_np}")
    if not spec.min_np <= initial_np(spec) <= spec.max_np:
        raise UsageError(f"--np {spec.np} is outside --min-np {spec.min_np} .. --max-np {spec.max_np}")
    script = spec.host_discovery_script
    if script is None:
        if not (spec.hosts or spec.hostfile):
            raise UsageError(
                "elastic training needs --host-discovery-script (or a fixed -H/--hostfile)",
                "write a script that prints the usable `host:slots`, one per line",
            )
        return
    if spec.hosts or spec.hostfile:
        raise UsageError("give either --host-discovery-script or -H/--hostfile, not both")
    if not Path(script).is_file() or not os.access(script, os.X_OK):
        raise UsageError(f"--host-discovery-script {script} is not an executable file", f"chmod +x {script}")


def is_local_single(spec: LaunchSpec) -> bool:
    return spec.np == 1 and not spec.hosts and not spec.hostfile and not spec.elastic
