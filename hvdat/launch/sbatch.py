"""A ready `sbatch` script for an `hvdat train` or `hvdat eval` command. Pure: builds text, runs nothing.

Inside the job, hvdat takes its hosts and slots from Slurm (hvdat.launch.slurm), so the script runs the command as
typed. Stopping: `scancel` and preemption signal every process of the job, hvdat's workers included, and they stop
after an agreed step leaving last.pt; the script only waits for them (a second signal from it would end the graceful
stop). Before the time limit Slurm signals the script alone (`--signal=B:USR1@S`): it passes SIGTERM on to hvdat and,
with --requeue, puts the job back in the queue. A train job that starts where its run folder holds a last.pt (a
requeued or resubmitted job) adds --resume.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import UsageError, require_at_least
from ..options import option

SLURM = "Slurm"
COMMANDS = ("train", "eval")
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # Slurm's minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
STOPPED_EXIT_CODE = 130  # hvdat train after a graceful stop


@dataclass(frozen=True)
class SbatchSpec:
    nodes: int = option(1, "Nodes to allocate (sbatch --nodes).", SLURM)
    ntasks_per_node: Optional[int] = option(
        None, "Workers per node (sbatch --ntasks-per-node; default: --gpus-per-node, else 1).", SLURM
    )
    gpus_per_node: Optional[int] = option(None, "GPUs per node, one worker each (sbatch --gpus-per-node).", SLURM)
    cpus_per_task: Optional[int] = option(None, "CPU cores per worker (sbatch --cpus-per-task).", SLURM)
    time: Optional[str] = option(None, "Time limit, e.g. 2:00:00 or 1-00:00:00 (sbatch --time).", SLURM)
    partition: Optional[str] = option(None, "Partition (sbatch --partition).", SLURM, flags=("-p", "--partition"))
    account: Optional[str] = option(None, "Account to charge (sbatch --account).", SLURM)
    job_name: Optional[str] = option(None, "Job name (default: hvdat-COMMAND).", SLURM)
    venv: Optional[str] = option(
        None, "The Python environment with hvdat on every node (default: this one).", SLURM, cli_type=Path
    )
    image: Optional[str] = option(
        None, "Run hvdat inside this Apptainer/Singularity image instead of a venv (one node).", SLURM
    )
    requeue: bool = option(
        True, "Before the time limit stop gracefully and requeue; a requeued train job resumes from last.pt.", SLURM
    )
    warn_seconds: int = option(120, "Seconds before the time limit that hvdat is told to stop.", SLURM)
    log: Optional[str] = option(None, "Slurm's output file (default: slurm-JOBID.out in --chdir).", SLURM)
    chdir: Optional[str] = option(None, "Folder the job runs in (default: this one).", SLURM, cli_type=Path)

    @property
    def tasks_per_node(self) -> int:
        return self.ntasks_per_node or self.gpus_per_node or 1


def validate(spec: SbatchSpec, command: Sequence[str]) -> None:
    if not command or command[0] not in COMMANDS:
        raise UsageError(
            "give the hvdat command to run after the Slurm options",
            "e.g. hvdat slurm --nodes 2 --gpus-per-node 4 -- train --dataset cifar10 --out runs/c10",
        )
    for name in ("nodes", "ntasks_per_node", "gpus_per_node", "cpus_per_task", "warn_seconds"):
        require_at_least(f"--{name.replace('_', '-')}", getattr(spec, name))
    if spec.time is not None and not _TIME.match(spec.time):
        raise UsageError(f"cannot read --time {spec.time!r}", "write minutes, HH:MM:SS or D-HH:MM:SS")
    if spec.image and spec.venv:
        raise UsageError("give either --image or --venv, not both")
    if spec.image and spec.nodes > 1:
        raise UsageError(
            "--image runs on one node: horovodrun starts the other nodes' workers over ssh, outside the image",
            "use --venv on a shared filesystem for several nodes",
        )
    hosts = {"-H", "--hosts", "--hostfile", "--host-discovery-script"}
    if any(arg.split("=", 1)[0] in hosts for arg in command):
        raise UsageError("the hosts come from the Slurm allocation", "drop -H/--hostfile from the command")


def script(spec: SbatchSpec, command: Sequence[str], run_folder: Optional[str], hvdat: Sequence[str]) -> str:
    """The sbatch script. `run_folder`: a train command's --out (where last.pt means resume); `hvdat`: how to start
    hvdat on the nodes (the venv's `hvdat`, or `apptainer exec IMAGE hvdat`)."""
    validate(spec, command)
    directives = [
        f"--job-name={spec.job_name or 'hvdat-' + command[0]}",
        f"--nodes={spec.nodes}",
        f"--ntasks-per-node={spec.tasks_per_node}",
    ]
    if spec.gpus_per_node:
        directives.append(f"--gpus-per-node={spec.gpus_per_node}")
    if spec.cpus_per_task:
        directives.append(f"--cpus-per-task={spec.cpus_per_task}")
    for name in ("time", "partition", "account", "chdir"):
        if getattr(spec, name):
            directives.append(f"--{name}={getattr(spec, name)}")
    if spec.log:
        directives += [f"--output={spec.log}", "--open-mode=append"]
    directives.append(f"--signal=B:USR1@{spec.warn_seconds}")
    directives.append("--requeue" if spec.requeue else "--no-requeue")
    lines = ["#!/bin/bash", "# Written by `hvdat slurm`: see README 'Clusters'."]
    lines += [f"#SBATCH {directive}" for directive in directives]
    lines += ["", "args=(" + " ".join(shlex.quote(arg) for arg in command) + ")"]
    if run_folder is not None:
        lines += [
            f"if [ -e {shlex.quote(str(Path(run_folder) / 'last.pt'))} ]; then",
            "  args+=(--resume)  # requeued or resubmitted: continue from the last checkpoint",
            "fi",
        ]
    lines += [
        f'{" ".join(shlex.quote(part) for part in hvdat)} "${{args[@]}}" &',
        "pid=$!",
        "requeue=0",
        "# scancel and preemption signal every process of the job, hvdat's workers too: just wait for them.",
        "trap : TERM",
        "# The time limit is near: Slurm told this script alone. hvdat stops after an agreed step, leaving last.pt.",
        f"trap 'requeue={int(spec.requeue)}; kill -TERM \"$pid\"' USR1",
        'wait "$pid"; rc=$?',
        'while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done',
        f'if [ "$requeue" = 1 ] && [ "$rc" = {STOPPED_EXIT_CODE} ]; then',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


def hvdat_command(spec: SbatchSpec, python: str) -> List[str]:
    """How the job starts hvdat: the venv's interpreter, or the image's hvdat."""
    if spec.image:
        return ["apptainer", "exec", *(["--nv"] if spec.gpus_per_node else []), spec.image, "hvdat"]
    if spec.venv:
        python = str(Path(spec.venv).resolve() / "bin" / "python")
    return [python, "-m", "hvdat"]
