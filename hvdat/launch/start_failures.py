"""Why no worker started on a host: ssh could not reach it, or the host lacks this job's Python or hvdat.

Read from the job's output as it streams: ssh's own complaints (horovodrun's check, Gloo's task launch, mpirun's
orted), a remote shell that finds no interpreter at this Python's path (Gloo: `env: 'PY': No such file or
directory`; mpirun: its "unable to launch the specified application" block naming the executable and node), and a
remote interpreter that cannot import the worker module (hvdat not installed there). Each becomes one line naming
the host, with what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

SSH_FAILURES = (
    re.compile(r"ssh: connect to host (?P<host>[^\s:]+) port \d+: (?P<why>.+)"),
    re.compile(r"ssh: Could not resolve hostname (?P<host>[^\s:]+): (?P<why>.+)"),
    re.compile(r"(?:[^\s@]+@)?(?P<host>[^\s@:]+): (?P<why>Permission denied \([^)]*\))"),
)
NO_INTERPRETER = re.compile(r"^(?:env|bash|sh)(?:: line \d+)?: '?(?P<path>/[^':]+)'?: No such file or directory")
NO_MODULE = re.compile(
    r"^(?P<python>/\S+): Error while finding module specification for '(?P<module>[^']+)' "
    r"\((?:ModuleNotFoundError: )?(?P<why>[^)]*)\)"
)
MPI_EXECUTABLE = re.compile(r"^\s*Executable:\s+(?P<path>\S+)")
MPI_NODE = re.compile(r"^\s*Node:\s+(?P<host>\S+)")
FIX_SSH = "check that sshd runs there and accepts your key and port"
FIX_INSTALL = "install hvdat there at the same path, or use the image"


def ssh_failure(text: str) -> Optional[Tuple[str, str]]:
    """(host, reason) when a line of the job's output says that ssh could not reach a host."""
    for pattern in SSH_FAILURES:
        match = pattern.search(text)
        if match:
            return match.group("host"), match.group("why").strip().rstrip(".")
    return None


@dataclass(frozen=True)
class StartFailure:
    why: str
    fix: str


class StartFailures:
    """Feed it the job's output line by line; `by_host` then holds each host where no worker could start.
    `rank_hosts[r]` is rank r's host (a static placement; empty when unknown, e.g. elastic)."""

    def __init__(self, rank_hosts: Sequence[str] = ()):
        self.rank_hosts = tuple(rank_hosts)
        self.by_host: Dict[str, StartFailure] = {}
        self._mpi_executable: Optional[str] = None

    def feed(self, rank: Optional[int], text: str) -> None:
        unreachable = ssh_failure(text)
        if unreachable is not None:
            self._add(unreachable[0], StartFailure(unreachable[1], FIX_SSH))
            return
        executable = MPI_EXECUTABLE.match(text)
        if executable:
            self._mpi_executable = executable.group("path")
            return
        node = MPI_NODE.match(text)
        if node and self._mpi_executable:
            self._add(node.group("host"), _no_python(self._mpi_executable))
            self._mpi_executable = None
            return
        host = self._host(rank)
        if host is None:
            return
        missing = NO_INTERPRETER.match(text)
        if missing:
            self._add(host, _no_python(missing.group("path")))
            return
        module = NO_MODULE.match(text)
        if module and module.group("module").split(".")[0] == "hvdat":
            why = f"{module.group('python')} cannot import {module.group('module')} ({module.group('why')})"
            self._add(host, StartFailure(why, FIX_INSTALL))

    def _host(self, rank: Optional[int]) -> Optional[str]:
        if rank is None:
            return None
        return self.rank_hosts[rank] if rank < len(self.rank_hosts) else f"the host of rank {rank}"

    def _add(self, host: str, failure: StartFailure) -> None:
        self.by_host.setdefault(host, failure)


def _no_python(path: str) -> StartFailure:
    return StartFailure(f"no {path} there", FIX_INSTALL)
