"""Runs a launched job: streams its output into a log, routes the workers' events, and explains failures."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

from .. import events
from ..errors import JobFailed, UsageError
from .argv import Launch
from .failure import Failure, Observed, diagnose, read_records
from .start_failures import StartFailure, StartFailures

TAIL_LINES = 12
EventHandler = Callable[[dict], None]


@dataclass
class JobResult:
    returncode: int
    failed_ranks: Dict[int, str] = field(default_factory=dict)  # rank -> error message
    usage_ranks: Set[int] = field(default_factory=set)  # ranks whose error was the user's (a UsageError)
    tails: Dict[Optional[int], List[str]] = field(default_factory=dict)  # rank (None: horovodrun) -> last lines
    not_started: Dict[str, StartFailure] = field(default_factory=dict)  # host -> why no worker started there
    observed: Observed = field(default_factory=Observed)  # each rank's errors and exit status (hvdat.launch.failure)
    rank_hosts: Tuple[str, ...] = ()
    launcher_errors: List[str] = field(default_factory=list)  # what this side could not write (a full disk)
    leftover_workers: List[int] = field(default_factory=list)  # workers that outlived horovodrun, ended by us

    def failure(self) -> Failure:
        """The first rank to fail and why, the other ranks' errors as its consequences."""
        return diagnose(self.observed, self.returncode, self.rank_hosts)


def run_job(
    argv: Sequence[str],
    log_path: Path,
    on_event: EventHandler,
    env: Optional[Dict[str, str]] = None,
    echo: Optional[Callable[[str], None]] = None,
    output_dir: Optional[str] = None,
    workers: Sequence[str] = (),
    graceful: bool = False,
    rank_hosts: Sequence[str] = (),
    hang_timeout: float = 0.0,
) -> JobResult:
    """Run argv to completion. `workers`: what names the job's workers in their command line (each an argument of
    its own). Ctrl-C (or SIGTERM to us) becomes a SIGTERM to this machine's workers when they are `graceful` (they
    agree on a step and write a final checkpoint), else (or when there are none here) to the whole job; a second
    Ctrl-C kills the job. `output_dir` (a worker run without horovodrun) also
    gets its output, as horovodrun's --output-filename lays it out: DIR/rank.0/stdout (stderr merged into it).
    `hang_timeout` > 0: a watchdog ends the job when a rank that was beating stops for that long (`_watch`).
    Workers left on this machine when argv has exited are ended (`end_leftover_workers`), so a job never outlives
    its launcher."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    tails: Dict[Optional[int], Deque[str]] = collections.defaultdict(lambda: collections.deque(maxlen=TAIL_LINES))
    result = JobResult(0, rank_hosts=tuple(rank_hosts))
    start_failures = StartFailures(rank_hosts)
    with open(log_path, "a") as log, _rank_output(output_dir) as copy:
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=full_env,
            start_new_session=True,
            errors="replace",
        )
        reader = threading.Thread(
            target=_pump, args=(proc, log, tails, start_failures, result, on_event, echo, copy), daemon=True
        )
        reader.start()
        watching = threading.Event()
        if hang_timeout > 0:
            threading.Thread(
                target=_watch, args=(proc, result.observed, hang_timeout, watching), name="hvdat-watchdog", daemon=True
            ).start()
        interrupts = 0
        previous = _sigterm_as_interrupt()
        while True:
            try:
                proc.wait()
                break
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts > 1:
                    _signal_group(proc, signal.SIGKILL)
                elif not (graceful and _signal_workers(proc, workers, signal.SIGTERM)):
                    _signal_group(proc, signal.SIGTERM)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        leftovers = end_leftover_workers(workers)  # before the join: they may hold the output pipe open
        if leftovers:
            log.write(
                f"hvdat: {len(leftovers)} worker process(es) still ran after the job's launcher exited; ended them "
                f"(pids {', '.join(map(str, leftovers))})\n"
            )
        result.leftover_workers = leftovers
        reader.join(timeout=10)
        watching.set()
    result.returncode = proc.returncode
    if result.observed.hung and result.returncode < 0:  # the watchdog's signal, not the job's own status
        result.returncode = 1
    result.tails = {rank: list(lines) for rank, lines in tails.items()}
    result.not_started = start_failures.by_host
    return result


@contextlib.contextmanager
def _rank_output(output_dir: Optional[str]):
    if not output_dir:
        yield None
        return
    folder = Path(output_dir) / "rank.0"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stderr").touch()
    with open(folder / "stdout", "w") as handle:
        yield handle


def run_collecting(
    argv: Sequence[str],
    log_path: Path,
    on_event: EventHandler,
    kinds: Sequence[str],
    env: Optional[Dict[str, str]] = None,
    output_dir: Optional[str] = None,
    workers: Sequence[str] = (),
    graceful: bool = False,
    rank_hosts: Sequence[str] = (),
    hang_timeout: float = 0.0,
) -> Tuple[JobResult, Dict[str, List[dict]]]:
    """`run_job`, also keeping the events of the given kinds (e.g. `epoch`, `result`), in order."""
    found: Dict[str, List[dict]] = {kind: [] for kind in kinds}

    def collect(event: dict) -> None:
        if event.get("event") in found:
            found[event["event"]].append(event)
        on_event(event)

    result = run_job(
        argv,
        log_path,
        collect,
        env,
        output_dir=output_dir,
        workers=workers,
        graceful=graceful,
        rank_hosts=rank_hosts,
        hang_timeout=hang_timeout,
    )
    return result, found


def run_launch(
    launch: Launch, log_path: Path, on_event: EventHandler, kinds: Sequence[str]
) -> Tuple[JobResult, Dict[str, List[dict]]]:
    """`run_collecting` of a built launch: its argv, environment and output folder; then its timeline is closed and
    the ranks' failure records (beside the job's config) are read."""
    failures = Path(launch.failure_dir) if launch.failure_dir else None
    if failures is not None:
        shutil.rmtree(failures, ignore_errors=True)  # a previous attempt's records are not this job's
    try:
        result, found = run_collecting(
            launch.argv,
            log_path,
            on_event,
            kinds,
            launch.env,
            launch.output_dir,
            launch.workers,
            launch.graceful,
            launch.rank_hosts,
            launch.hang_timeout,
        )
        read_records(failures, result.observed)
        return result, found
    finally:
        if launch.timeline:
            close_timeline(Path(launch.timeline))


def close_timeline(path: Path) -> None:
    """Make a Horovod timeline a complete JSON array. Horovod 0.28.1 rewrites the closing `]` after each event, so a
    finished job's file parses; but a job with no collectives (one worker) leaves it empty, and a killed one can
    stop between an event's `,` and its `}]`."""
    if not path.is_file():
        return
    text = path.read_text(errors="replace")
    try:
        json.loads(text or "!")
        return
    except ValueError:
        pass
    body = text.rstrip().rstrip(",")
    if body.endswith("]"):
        return  # not a truncation: leave it to the reader
    cut = body.rfind("}")
    fixed = "[]\n" if not body.strip("[ \n") else body[: cut + 1] + "]\n"
    with contextlib.suppress(ValueError):
        json.loads(fixed)
        path.write_text(fixed)


def _pump(
    proc, log, tails, start_failures: StartFailures, result: JobResult, on_event, echo, copy: Optional[IO[str]] = None
) -> None:
    writable = True  # until the disk is full: the job's output must still be read, or its ranks block on it
    lines = events.Lines()
    for line in proc.stdout:
        ended = [(rank, text, events.parse(text)) for rank, text in lines.feed(line)]
        beats = [(rank, event) for rank, _, event in ended if event is not None and event.get("event") == "beat"]
        for rank, event in beats:  # the watchdog's alone: not logged, not routed
            result.observed.beat(0 if rank is None else rank, event, time.monotonic())
        if beats and len(beats) == len(ended) and not lines.held:
            continue  # a line that is only heartbeats
        if writable:
            try:
                log.write(line)
                log.flush()
            except OSError as exc:
                writable = False
                result.launcher_errors.append(f"the log stopped: {exc}")
                with contextlib.suppress(OSError):
                    log.close()
        if copy is not None:
            copy.write(line)
            copy.flush()
        for rank, text, event in ended:
            _route(rank, text, event, line, tails, start_failures, result, on_event, echo)


def _route(rank, text, event, line, tails, start_failures: StartFailures, result: JobResult, on_event, echo) -> None:
    """One rank's whole line: an event to its handler, anything else to that rank's tail and the failure readers."""
    if event is not None and event.get("event") == "beat":
        return
    if event is None:
        tails[rank].append(text)
        start_failures.feed(rank, text)
        if rank is None:
            result.observed.launcher_line(text)
        else:
            result.observed.rank_line(rank, text)
        if echo is not None:
            echo(line.rstrip("\n"))
        return
    if event.get("event") == "error":
        result.observed.error(int(event.get("rank", rank or 0)), event)
        result.failed_ranks[int(event.get("rank", rank or 0))] = event.get("message", "")
        if event.get("usage"):
            result.usage_ranks.add(int(event.get("rank", rank or 0)))
    try:
        on_event(event)
    except OSError as exc:  # e.g. TensorBoard's files on a full disk: keep reading the job's output
        if len(result.launcher_errors) < 5:
            result.launcher_errors.append(f"handling a {event.get('event')} event: {exc}")


def _watch(proc: subprocess.Popen, observed: Observed, timeout: float, done: threading.Event) -> None:
    """The launcher's watchdog: a rank that has beaten (hvdat.runtime.heartbeat) and then stays silent for `timeout`
    s while the job runs is stopped or hung (its every thread is; a rank merely waiting in a collective still
    beats). Mark it and SIGKILL the job's process group: not SIGTERM, which the other ranks would take for a graceful
    stop (and mpirun sends SIGCONT first), reporting an interrupt instead of the hang. mpirun's remote daemons end
    their ranks when mpirun is gone; a remote Gloo rank ends when its peers' connections close."""
    while not done.wait(1.0):
        silent = observed.silent(time.monotonic(), timeout)
        if silent:
            for rank in silent:
                observed.hung[rank] = timeout
            _signal_group(proc, signal.SIGKILL)
            return


def _sigterm_as_interrupt():
    """SIGTERM to the launcher (a scheduler's preemption, `kill`) counts as a Ctrl-C; returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _signal_workers(proc: subprocess.Popen, markers: Sequence[str], sig: int) -> bool:
    """Signal the job's processes on this machine that have every marker as an argument of their own (not inside a
    shell's `-c` string: the shells horovodrun starts must not get it); False if there are none."""
    if not markers:
        return False
    import psutil  # only here: bin/test-cluster imports hvdat.launch with the system's python

    found = False
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if _is_worker(child, markers):
                    child.send_signal(sig)
                    found = True
    return found


def _is_worker(process, markers: Sequence[str]) -> bool:
    """Every marker is an argument of the process's own (not inside a shell's `-c` string)."""
    return all(marker in process.cmdline() for marker in markers)


def end_leftover_workers(markers: Sequence[str], grace: float = 3.0) -> List[int]:
    """End this machine's processes that have every marker as an argument of their own (the job's workers) and
    still run after the job's launcher (horovodrun, mpirun, srun) has exited: SIGTERM, then SIGKILL after `grace`
    seconds. Horovod's elastic driver can die and leave its workers running (reparented, outside the job's process
    group). Returns their pids."""
    if not markers:
        return []
    import psutil

    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and _is_worker(process, markers):
                process.terminate()
                found.append(process)
    if not found:
        return []
    _, alive = psutil.wait_procs(found, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace)
    return [process.pid for process in found]


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def raise_for_failure(
    result: JobResult, what: str, log_path: Path, kept: Optional[Callable[[], Tuple[str, Dict[str, Any]]]] = None
) -> None:
    """Turn a non-zero exit into one clear error: the hosts where no worker could start (one line), or the failing
    rank with its last lines. `kept`: what the job kind adds to its report, the way back (lines, report fields)."""
    try:
        _raise_for_failure(result, what, log_path)
    except JobFailed as failed:
        if kept is not None:
            lines, fields = kept()
            failed.then(lines, **fields)
        raise


def _raise_for_failure(result: JobResult, what: str, log_path: Path) -> None:
    if result.returncode == 0:
        return
    if result.not_started:
        hosts = ", ".join(f"{host} ({failure.why})" for host, failure in result.not_started.items())
        fixes = "; ".join(dict.fromkeys(failure.fix for failure in result.not_started.values()))
        raise JobFailed(
            f"{what} could not start a worker on host {hosts}",
            exit_code=result.returncode or 1,
            hint=f"{fixes} (`hvdat doctor -H HOSTS --ssh-port P --ssh-identity-file KEY` checks every host); "
            f"full log: {log_path}",
        )
    usage = sorted(rank for rank in result.usage_ranks if rank in result.failed_ranks)
    if usage:  # the user's mistake, found by a worker: one line, exit 2
        raise UsageError(result.failed_ranks[usage[0]])
    failure = result.failure()
    lines = result.tails.get(failure.rank) or result.tails.get(None) or []
    detail = "\n".join("    " + line for line in lines[-TAIL_LINES:])
    source = f"rank {failure.rank}" if failure.rank is not None and failure.rank in result.tails else "horovodrun"
    consequences = "".join(
        f"\n  consequence: rank {rank} {text}" for rank, text in sorted(failure.consequences.items())
    )
    raise JobFailed(
        failure.headline(what)
        + consequences
        + f"\n  full log: {log_path}"
        + (f"\n  last lines of {source}:\n{detail}" if detail else ""),
        exit_code=result.returncode or 1,
        report={"failure": failure.to_dict(), "log": str(log_path), "launcher_errors": result.launcher_errors},
    )
