"""Builds the command that starts a Horovod job. Pure: imports no torch, runs nothing, never builds a shell string.

`--np 1` on the local machine runs the worker directly (no horovodrun needed); everything else goes through
`horovodrun` with Gloo or MPI, elastic jobs with `--min-np/--max-np` and a host discovery script. Horovod's knobs
(`--timeline-filename`, `--autotune`, ...) become horovodrun's flags, or, for a worker run directly, the
`HOROVOD_*` variables horovodrun would have set (horovod/runner/common/util/config_parser.py).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import UsageError
from ..events import FAILURES_DIR
from .spec import LaunchSpec, initial_np, is_local_single, rank0_is_here, slots_of, validate


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
        # absolute, not resolved: a Kubernetes ConfigMap's file is a link that moves when the operator updates it
        script = ["--host-discovery-script", os.path.abspath(spec.host_discovery_script)]
        return script + (["--slots-per-host", str(spec.slots_per_host)] if spec.slots_per_host else [])
    if spec.hostfile:
        return ["--hostfile", spec.hostfile]
    return ["-H", ",".join(f"{h}:{s}" for h, s in slots_of(spec))]


@dataclass(frozen=True)
class Launch:
    """What the launcher runs: the argv, the environment it adds, and (a worker run directly) the folder that takes
    its output as horovodrun's --output-filename would."""

    argv: List[str]
    env: Dict[str, str] = field(default_factory=dict)
    output_dir: Optional[str] = None
    timeline: Optional[str] = None  # a Horovod timeline that rank 0 writes on this machine (closed after the job)
    # What names this job's workers in their command line (the module and its config). Any still running on this
    # machine once horovodrun has exited are ended (an elastic driver that died can leave them).
    workers: Tuple[str, ...] = ()
    # The workers stop gracefully on SIGTERM, so a Ctrl-C or SIGTERM goes to them first: they agree on a step and
    # checkpoint. Signalled instead, horovodrun would end a remote rank's ssh (exit 255) while that rank was still
    # finishing the stop.
    graceful: bool = False
    rank_hosts: Tuple[str, ...] = ()  # rank r's host, for errors that name it (empty: elastic, not known up front)
    failure_dir: Optional[str] = None  # where failed ranks write their records (beside the job's config)
    hang_timeout: float = 0.0  # seconds without a rank's heartbeat before the launcher ends the job (0: no watchdog)

    def display(self) -> str:
        """For --dry-run: a copy-pasteable line, the added environment first."""
        return shell_quote([f"{key}={value}" for key, value in sorted(self.env.items())] + self.argv)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def tuning_args(spec: LaunchSpec) -> List[str]:
    """Horovod's knobs as horovodrun's flags (`horovodrun --help`: tuneable parameter, autotune, timeline, logging)."""
    args: List[str] = []
    if spec.start_timeout is not None:
        args += ["--start-timeout", str(spec.start_timeout)]
    if spec.output_filename:
        args += ["--output-filename", spec.output_filename]
    if spec.fusion_threshold_mb is not None:
        args += ["--fusion-threshold-mb", str(spec.fusion_threshold_mb)]
    if spec.cycle_time_ms is not None:
        args += ["--cycle-time-ms", _number(spec.cycle_time_ms)]
    if spec.cache_capacity is not None:
        args += ["--cache-capacity", str(spec.cache_capacity)]
    for value, name in ((spec.hierarchical_allreduce, "allreduce"), (spec.hierarchical_allgather, "allgather")):
        if value is not None:
            args.append(f"--{'' if value else 'no-'}hierarchical-{name}")
    if spec.autotune:
        args.append("--autotune")
        if spec.autotune_log_file:
            args += ["--autotune-log-file", spec.autotune_log_file]
    if spec.timeline_filename:
        args += ["--timeline-filename", spec.timeline_filename]
        if spec.timeline_mark_cycles:
            args.append("--timeline-mark-cycles")
    if spec.gloo_timeout is not None and spec.launcher == "gloo":
        args += ["--gloo-timeout-seconds", str(spec.gloo_timeout)]
    if spec.log_level:
        args += ["--log-level", spec.log_level.upper()]
    return args


def tuning_env(spec: LaunchSpec) -> Dict[str, str]:
    """The same knobs as the HOROVOD_* variables horovodrun sets for its workers (config_parser.set_env_from_args),
    for a worker started without it. --start-timeout has no worker-side variable (no start phase to time)."""
    env: Dict[str, str] = {}
    if spec.fusion_threshold_mb is not None:
        env["HOROVOD_FUSION_THRESHOLD"] = str(spec.fusion_threshold_mb * 1024 * 1024)
    if spec.cycle_time_ms is not None:
        env["HOROVOD_CYCLE_TIME"] = _number(spec.cycle_time_ms)
    if spec.cache_capacity is not None:
        env["HOROVOD_CACHE_CAPACITY"] = str(spec.cache_capacity)
    if spec.hierarchical_allreduce is not None:
        env["HOROVOD_HIERARCHICAL_ALLREDUCE"] = str(int(spec.hierarchical_allreduce))
    if spec.hierarchical_allgather is not None:
        env["HOROVOD_HIERARCHICAL_ALLGATHER"] = str(int(spec.hierarchical_allgather))
    if spec.autotune:
        env["HOROVOD_AUTOTUNE"] = "1"
        if spec.autotune_log_file:
            env["HOROVOD_AUTOTUNE_LOG"] = spec.autotune_log_file
    if spec.timeline_filename:
        env["HOROVOD_TIMELINE"] = spec.timeline_filename
        env["HOROVOD_TIMELINE_MARK_CYCLES"] = str(int(spec.timeline_mark_cycles))
    if spec.log_level:
        env["HOROVOD_LOG_LEVEL"] = spec.log_level.upper()
    return env


def build_launch(
    spec: LaunchSpec, module: str, config: Path, horovodrun: Optional[str] = None, graceful: bool = False
) -> Launch:
    """The full command. `module` is the worker module (`hvdat.train.worker`, ...); `graceful`: its workers stop
    after an agreed step on SIGTERM, so an interrupt goes to them first."""
    validate(spec)
    timeline = spec.timeline_filename if rank0_is_here(spec) else None
    workers = (module, str(config))
    failures = str(Path(config).parent / FAILURES_DIR)
    # an elastic job's ranks come and go (and are renumbered): a lost worker's silence is Horovod's to handle
    hang = 0.0 if spec.elastic else float(spec.hang_timeout)
    if is_local_single(spec):
        return Launch(
            worker_argv(module, config), tuning_env(spec), spec.output_filename, timeline, workers, graceful,
            ("localhost",), failures, hang,
        )  # fmt: skip
    argv = horovodrun_argv(spec, module, config, horovodrun)
    return Launch(
        argv, timeline=timeline, workers=workers, graceful=graceful, rank_hosts=rank_hosts(spec),
        failure_dir=failures, hang_timeout=hang,
    )  # fmt: skip


def rank_hosts(spec: LaunchSpec) -> Tuple[str, ...]:
    """Each rank's host as horovodrun and mpirun place a static job (hosts in order, a host's slots filled first);
    empty for an elastic job, whose hosts come from its discovery script."""
    if spec.host_discovery_script:
        return ()
    return tuple(host for host, slots in slots_of(spec) for _ in range(slots))[: spec.np]


def build_argv(spec: LaunchSpec, module: str, config: Path, horovodrun: Optional[str] = None) -> List[str]:
    """The argv alone (a launch without Horovod's knobs needs nothing else)."""
    return build_launch(spec, module, config, horovodrun).argv


def horovodrun_argv(spec: LaunchSpec, module: str, config: Path, horovodrun: Optional[str] = None) -> List[str]:
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
    return argv + tuning_args(spec) + worker_argv(module, config)


def shell_quote(argv: Sequence[str]) -> str:
    """For display only (--dry-run): the argv as a copy-pasteable line."""
    return " ".join(shlex.quote(a) for a in argv)
