"""Why a job failed: the first rank to fail and its cause, told apart from the other ranks' echoes of it.

Three sources, none needing torch: the workers' `error` events (each rank's exception, host and time; also written
as `hvdat-failures/rank-R.json` beside the job's config, where a rank's output could be lost), horovodrun's and
mpirun's own lines (`Process 1 exit with status code 137`, `... exited on signal 9`), and Horovod's stall check
(`Missing ranks:`). A rank killed by SIGKILL leaves no exception: its exit status tells.

A fourth, the launcher's watchdog (`--hang-timeout`): a rank whose heartbeats stopped (hvdat.runtime.heartbeat).

The rules, in order: a rank the watchdog found silent (it then ended the job: the others' errors are its doing); a
rank's own exception (not Horovod's shutdown that every other rank then sees); a rank that
Horovod's stall check found missing (stopped, hung, or cut off); a rank that died (signal or non-zero exit) before
horovodrun began terminating the others; the rank horovodrun names first; the earliest error.
"""

from __future__ import annotations

import json
import re
import signal
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

# What a rank says when another rank's failure ended the collective it was in.
ECHOES = re.compile(
    r"HorovodInternalError|Horovod has been shut down|HorovodShutdown|Connection closed by peer|Connection reset by "
    r"peer|Broken pipe|Gloo|gloo|Terminated|ProcessSetTable|Read error|\bstall",
)
# horovodrun (Gloo): "Process 1 exit with status code 137." and "Terminating remaining workers after failure of ..."
GLOO_EXIT = re.compile(r"^Process (\d+) exit with status code (-?\d+)")
GLOO_TERMINATING = re.compile(r"^Terminating remaining workers after failure of Process (\d+)")
# mpirun: "mpirun noticed that process rank 1 with PID 123 on node hv2 exited on signal 9 (Killed)."
MPI_SIGNAL = re.compile(r"process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)")
MPI_EXIT = re.compile(r"[Pp]rocess rank (\d+) .*on node (\S+) exited .*non-zero status (\d+)")
# Horovod's stall check (stall_inspector.cc): "Missing ranks:" then "1: [tensor, ...]" lines.
STALL_MISSING = re.compile(r"^\s*(\d+): \[")
# Gloo's timeout (HOROVOD_GLOO_TIMEOUT_SECONDS): a rank waited that long for a peer that sent nothing.
DISK_FULL_HINT = "the disk is full: free space where the job writes"
TIMED_OUT = re.compile(r"Timed out waiting (\d+)ms")


def signal_of(code: int) -> Optional[signal.Signals]:
    """The signal an exit status stands for: a negative Popen code, or 128+N from a shell."""
    number = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else 0
    try:
        return signal.Signals(number) if number else None
    except ValueError:
        return None


def describe_exit(code: int) -> str:
    sig = signal_of(code)
    if sig is None:
        return f"exited with code {code}"
    if sig == signal.SIGKILL:
        return "was killed by SIGKILL: possibly the out-of-memory killer (or a `kill -9`)"
    return f"was killed by {sig.name}"


@dataclass
class RankError:
    message: str
    host: str = ""
    time: float = 0.0


@dataclass
class Observed:
    """What the launcher saw of the ranks while the job ran (filled line by line)."""

    errors: Dict[int, RankError] = field(default_factory=dict)
    exits: Dict[int, int] = field(default_factory=dict)  # rank -> exit status, as horovodrun/mpirun reported it
    exits_before_termination: List[int] = field(default_factory=list)  # in the order they were reported
    terminating: Optional[int] = None  # the rank horovodrun names when it starts terminating the others
    hosts: Dict[int, str] = field(default_factory=dict)
    stalled: Set[int] = field(default_factory=set)
    timed_out: Dict[int, int] = field(default_factory=dict)  # rank -> ms it waited for a silent peer (Gloo)
    beats: Dict[int, float] = field(default_factory=dict)  # rank -> time.monotonic() of its last heartbeat
    ended: Set[int] = field(default_factory=set)  # ranks whose last heartbeat said they were done
    hung: Dict[int, float] = field(default_factory=dict)  # rank -> seconds without a heartbeat (the watchdog's)
    _in_stall: bool = False

    def launcher_line(self, text: str) -> None:
        """A line horovodrun or mpirun printed itself (no rank prefix)."""
        match = GLOO_EXIT.match(text)
        if match:
            self._exit(int(match.group(1)), int(match.group(2)))
            return
        match = GLOO_TERMINATING.match(text)
        if match and self.terminating is None:
            self.terminating = int(match.group(1))
            return
        match = MPI_SIGNAL.search(text)
        if match:
            self.hosts.setdefault(int(match.group(1)), match.group(2))
            self._exit(int(match.group(1)), 128 + int(match.group(3)))
            return
        match = MPI_EXIT.search(text)
        if match:
            self.hosts.setdefault(int(match.group(1)), match.group(2))
            self._exit(int(match.group(1)), int(match.group(3)))

    def rank_line(self, rank: int, text: str) -> None:
        """A worker's line: Gloo's timeout (Horovod's background loop logs it before the rank's exception says only
        that Horovod shut down); Horovod's stall warning lists the missing ranks below `Missing ranks:`."""
        timeout = TIMED_OUT.search(text)
        if timeout:
            self.timed_out.setdefault(rank, int(timeout.group(1)))
        if "Missing ranks:" in text:
            self._in_stall = True
            return
        if self._in_stall:
            match = STALL_MISSING.match(text)
            if match:
                self.stalled.add(int(match.group(1)))
            else:
                self._in_stall = False

    def beat(self, rank: int, event: dict, now: float) -> None:
        self.beats[rank] = now
        if event.get("end"):
            self.ended.add(rank)

    def silent(self, now: float, timeout: float) -> List[int]:
        """The ranks that beat before but not for `timeout` s, and neither said they were done nor exited."""
        return sorted(
            rank
            for rank, last in self.beats.items()
            if now - last > timeout and rank not in self.ended and rank not in self.exits
        )

    def error(self, rank: int, event: dict) -> None:
        self.rank_line(rank, event.get("message", ""))
        self.errors.setdefault(
            rank, RankError(event.get("message", ""), event.get("host", ""), float(event.get("time", 0.0)))
        )
        if event.get("host"):
            self.hosts.setdefault(rank, event["host"])

    def _exit(self, rank: int, code: int) -> None:
        self.exits.setdefault(rank, code)
        if self.terminating is None and code != 0:
            self.exits_before_termination.append(rank)


@dataclass
class Failure:
    """The report's fields (also `--json`'s `failure`): the first rank to fail, where, and why."""

    rank: Optional[int]
    host: str
    cause: str  # one line: "was killed by SIGKILL: ...", "raised ValueError: ...", "stopped responding ..."
    kind: str  # exception | signal | exit | stall | hang | unknown
    exit_code: Optional[int] = None
    signal: Optional[str] = None
    exception: Optional[str] = None
    consequences: Dict[int, str] = field(default_factory=dict)  # what the other ranks did: echoes of the cause

    def headline(self, what: str) -> str:
        if self.rank is None:
            return f"{what} failed: {self.cause}"
        where = f" on host {self.host}" if self.host else ""
        return f"{what} failed: rank {self.rank}{where} {self.cause}"

    def to_dict(self) -> dict:
        found = asdict(self)
        found["consequences"] = {str(rank): text for rank, text in sorted(self.consequences.items())}
        return found


def one_line(message: str, limit: int = 300) -> str:
    line = next((part.strip() for part in message.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def host_of(rank: Optional[int], observed: Observed, rank_hosts: Sequence[str]) -> str:
    if rank is None:
        return ""
    # a static placement's name for the host is the user's own (-H, --hostfile); else what the rank reported
    host = (rank_hosts[rank] if rank < len(rank_hosts) else "") or observed.hosts.get(rank, "")
    return socket.gethostname() if host in ("localhost", "127.0.0.1") else host


def diagnose(observed: Observed, returncode: int, rank_hosts: Sequence[str] = ()) -> Failure:
    """The first rank to fail and its cause (the module's docstring gives the rules)."""
    if len(rank_hosts) == 1 and not observed.exits and returncode != 0:
        observed.exits[0] = returncode  # a worker run directly: its own exit status
        observed.exits_before_termination.append(0)
    if observed.hung:  # the watchdog ended the job: the others' errors and exits are its doing
        rank = min(observed.hung)
        failure = Failure(
            rank,
            "",
            f"stopped responding (no heartbeat for {observed.hung[rank]:g} s): hung or stopped",
            "hang",
        )
        failure.host = host_of(rank, observed, rank_hosts)
        for other in sorted(set(observed.hung) - {rank}):
            failure.consequences[other] = f"also stopped responding (no heartbeat for {observed.hung[other]:g} s)"
        return failure
    own = sorted((error.time, rank) for rank, error in observed.errors.items() if not ECHOES.search(error.message))
    failure: Failure
    if own:
        rank = own[0][1]
        message = one_line(observed.errors[rank].message)
        cause = f"raised {message}" + (f" ({DISK_FULL_HINT})" if "No space left on device" in message else "")
        failure = Failure(rank, "", cause, "exception", observed.exits.get(rank), exception=message)
    elif observed.stalled or timed_out(observed):
        rank = min(observed.stalled or silent_ranks(observed, rank_hosts) or [None])
        failure = Failure(
            rank,
            "",
            "stopped responding: the other ranks timed out waiting for it in a collective (a stopped (SIGSTOP) or "
            "hung process, or a lost host)",
            "stall",
        )
    else:
        dead = [
            r for r in observed.exits_before_termination if r not in observed.errors or signal_of(observed.exits[r])
        ]
        if dead:
            rank = dead[0]
        elif observed.terminating is not None:
            rank = observed.terminating
        elif observed.errors:
            rank = min(observed.errors, key=lambda r: (observed.errors[r].time, r))
        else:
            rank = None
        failure = _from_exit(rank, observed, returncode)
    failure.host = host_of(failure.rank, observed, rank_hosts)
    for other in sorted(set(observed.errors) | set(observed.exits)):
        if other == failure.rank:
            continue
        if other in observed.timed_out:
            failure.consequences[other] = f"timed out waiting {observed.timed_out[other]} ms for another rank"
        elif other in observed.errors:
            failure.consequences[other] = f"raised {one_line(observed.errors[other].message, 160)}"
        elif observed.exits[other] != 0:
            failure.consequences[other] = describe_exit(observed.exits[other]).split(":")[0]
    return failure


def timed_out(observed: Observed) -> bool:
    return bool(observed.timed_out)


def silent_ranks(observed: Observed, rank_hosts: Sequence[str]) -> List[int]:
    """The ranks waited for: those that did not time out themselves, raised nothing of their own (a rank cut off from
    the others, e.g. by a lost link, may still report Horovod's shut-down, an echo) and did not exit before horovodrun
    began terminating the job."""
    size = max([len(rank_hosts) - 1, *observed.errors, *observed.exits]) + 1
    return [
        r
        for r in range(size)
        if r not in observed.timed_out
        and r not in observed.exits_before_termination
        and (r not in observed.errors or ECHOES.search(observed.errors[r].message))
    ]


def _from_exit(rank: Optional[int], observed: Observed, returncode: int) -> Failure:
    if rank is None:
        return Failure(None, "", describe_exit(returncode), "unknown", returncode)
    code = observed.exits.get(rank)
    error = observed.errors.get(rank)
    if code is not None and signal_of(code) is not None:
        sig = signal_of(code)
        return Failure(rank, "", describe_exit(code), "signal", code, signal=sig.name if sig else None)
    if error is not None:
        message = one_line(error.message)
        return Failure(rank, "", f"raised {message}", "exception", code, exception=message)
    return Failure(rank, "", describe_exit(code if code is not None else returncode), "exit", code)


def read_records(folder: Optional[Path], observed: Observed) -> None:
    """Add the failure records the workers wrote (`hvdat-failures/rank-R.json`) that the output stream lacked."""
    if folder is None or not folder.is_dir():
        return
    for path in sorted(folder.glob("rank-*.json")):
        try:
            record = json.loads(path.read_text())
            rank = int(record["rank"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        observed.error(rank, record)
