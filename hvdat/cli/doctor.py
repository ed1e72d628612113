"""`hvdat doctor`: what this machine (and the hosts of a job) can run, and why not.

Gathers facts (Horovod build, MPI, NCCL, GPUs, torch/CUDA, /dev/shm, ssh reachability) and turns them into one
verdict per requested setup, each with the command that fixes it. Runs nothing on the cluster but `ssh host true`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import typer
from rich.console import Console
from rich.table import Table
from typing_extensions import Annotated

from .. import launch
from ..errors import UsageError
from ..launch import LaunchSpec
from ..launch.argv import find_horovodrun
from ..launch.spec import LAUNCHERS
from ..options import CLUSTER
from .app import app, out
from .options import Json, with_options

log = logging.getLogger("hvdat.doctor")
SHM_MIN_BYTES = 1 << 30  # NCCL and DataLoader workers want more than Docker's 64 MB default
SSH_TIMEOUT_S = 5
FIX_MPI_BUILD = "rerun bin/install after apt-get install libopenmpi-dev openmpi-bin"
FIX_MPIRUN = "apt-get install openmpi-bin, or put the directory holding mpirun on PATH"


@dataclass
class Verdict:
    setup: str
    ok: bool
    reason: str = ""


@dataclass
class HostCheck:
    host: str
    slots: int
    local: bool
    reachable: bool
    detail: str = ""


@dataclass
class Report:
    horovod: Dict[str, Any]
    mpi: Dict[str, Any]
    torch: Dict[str, Any]
    gpus: List[str]
    shm_free_bytes: Optional[int]
    hosts: List[HostCheck] = field(default_factory=list)
    verdicts: List[Verdict] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def horovod_build() -> Dict[str, Any]:
    """What `horovodrun --check-build` prints, read from the library itself."""
    try:
        import horovod
        import horovod.torch as hvd
    except Exception as exc:  # not installed, or built against another torch
        return {"installed": False, "error": f"{type(exc).__name__}: {exc}"}
    try:
        horovodrun: Optional[str] = find_horovodrun()
    except Exception:
        horovodrun = None
    return {
        "installed": True,
        "version": horovod.__version__,
        "horovodrun": horovodrun,
        "frameworks": {"pytorch": True},
        "controllers": {"mpi": bool(hvd.mpi_built()), "gloo": bool(hvd.gloo_built())},
        "tensor_ops": {
            "nccl": bool(hvd.nccl_built()),
            "ddl": bool(hvd.ddl_built()),
            "ccl": bool(hvd.ccl_built()),
            "mpi": bool(hvd.mpi_built()),
            "gloo": bool(hvd.gloo_built()),
        },
        "cuda_built": bool(hvd.cuda_built()),
        "nccl_version": int(hvd.nccl_built() or 0),
    }


def mpi_runtime() -> Dict[str, Any]:
    mpirun = shutil.which("mpirun")
    version = ""
    if mpirun:
        try:
            out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=10)
            version = (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""
        except (OSError, subprocess.TimeoutExpired) as exc:
            version = f"unusable: {exc}"
    return {"mpirun": mpirun, "version": version}


def torch_info() -> Dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if cuda else None
    return {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda, "nccl": nccl}


def gpus() -> List[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def shm_free() -> Optional[int]:
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return None


def is_local(host: str) -> bool:
    names = {"localhost", socket.gethostname(), socket.getfqdn()}
    if host in names or host.startswith("127."):
        return True
    try:
        return socket.gethostbyname(host) == socket.gethostbyname(socket.gethostname())
    except OSError:
        return False


def check_host(host: str, slots: int, ssh_port: Optional[int], ssh_identity_file: Optional[str]) -> HostCheck:
    """A local name needs no ssh; a remote one must accept a key login without a prompt (as horovodrun needs)."""
    if is_local(host):
        return HostCheck(host, slots, local=True, reachable=True, detail="this machine")
    ssh = shutil.which("ssh")
    if not ssh:
        return HostCheck(host, slots, local=False, reachable=False, detail="ssh not found on PATH")
    argv = [ssh, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT_S}", "-o", "StrictHostKeyChecking=no"]
    if ssh_port:
        argv += ["-p", str(ssh_port)]
    if ssh_identity_file:
        argv += ["-i", ssh_identity_file]
    try:
        proc = subprocess.run(
            argv + [host, "true"], capture_output=True, text=True, timeout=SSH_TIMEOUT_S + 5, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return HostCheck(host, slots, local=False, reachable=False, detail="ssh timed out")
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return HostCheck(host, slots, local=False, reachable=proc.returncode == 0, detail=last or "ssh ok")


def verdicts(report: Report, launchers: Sequence[str], np: Optional[int], elastic: bool) -> List[Verdict]:
    hv = report.horovod
    found: List[Verdict] = []
    if not hv.get("installed"):
        reason = f"Horovod does not import ({hv.get('error')}); run bin/install"
        return [Verdict(f"--launcher {name}", False, reason) for name in launchers]
    for name in launchers:
        setup = f"--launcher {name}"
        if name == "gloo":
            ok = hv["controllers"]["gloo"]
            found.append(Verdict(setup, ok, "ready" if ok else "Horovod built without Gloo; rerun bin/install"))
        elif not hv["controllers"]["mpi"]:
            found.append(Verdict(setup, False, f"not available, Horovod built without MPI; {FIX_MPI_BUILD}"))
        elif not report.mpi["mpirun"]:
            found.append(Verdict(setup, False, f"not available, mpirun not found on PATH; {FIX_MPIRUN}"))
        else:
            found.append(Verdict(setup, True, f"ready ({report.mpi['version']})"))
    if elastic:
        ok = hv["controllers"]["gloo"]
        found.append(
            Verdict(
                "elastic (--min-np/--max-np)",
                ok,
                "ready (Gloo)" if ok else "elastic training needs Gloo; rerun bin/install",
            )
        )
    if (np is not None and np > 1 or report.hosts) and not hv.get("horovodrun"):
        found.append(Verdict("horovodrun", False, "not found next to python or on PATH; run bin/install"))
    if report.hosts:
        down = [h for h in report.hosts if not h.reachable]
        found.append(
            Verdict(
                "ssh",
                not down,
                "all hosts reachable"
                if not down
                else "cannot ssh to "
                + ", ".join(f"{h.host} ({h.detail})" for h in down)
                + "; copy your key (ssh-copy-id), or pass --ssh-port/--ssh-identity-file",
            )
        )
    if np is not None:
        slots = sum(h.slots for h in report.hosts) if report.hosts else None
        if slots is not None and np > slots:
            found.append(Verdict(f"--np {np}", False, f"only {slots} slots in the host list; add hosts or slots"))
        elif slots is not None:
            found.append(Verdict(f"--np {np}", True, f"{slots} slots"))
    return found


def warnings_for(report: Report) -> List[str]:
    notes = []
    hv = report.horovod
    if report.gpus and hv.get("installed") and not hv["tensor_ops"]["nccl"]:
        notes.append(
            "GPUs are visible but Horovod has no NCCL: gradients go through host memory; rerun bin/install "
            "with HVDAT_GPU=1 HVDAT_FORCE_HOROVOD=1"
        )
    if report.shm_free_bytes is not None and report.shm_free_bytes < SHM_MIN_BYTES:
        notes.append(
            f"/dev/shm has only {report.shm_free_bytes / 2**20:.0f} MiB free; NCCL and data loaders need "
            "more: docker run --shm-size=8g (or --ipc=host)"
        )
    return notes


def diagnose(
    launchers: Sequence[str] = ("gloo",),
    np: Optional[int] = None,
    hosts: Optional[str] = None,
    hostfile: Optional[str] = None,
    ssh_port: Optional[int] = None,
    ssh_identity_file: Optional[str] = None,
    elastic: bool = False,
) -> Report:
    for name in launchers:
        if name not in LAUNCHERS:
            raise UsageError(f"unknown launcher {name!r}", f"choose from: {', '.join(LAUNCHERS)}")
    report = Report(
        horovod=horovod_build(), mpi=mpi_runtime(), torch=torch_info(), gpus=gpus(), shm_free_bytes=shm_free()
    )
    if hosts or hostfile:
        spec = LaunchSpec(np=np or 1, hosts=hosts, hostfile=hostfile)
        report.hosts = [check_host(h, s, ssh_port, ssh_identity_file) for h, s in launch.slots_of(spec)]
    report.verdicts = verdicts(report, launchers, np, elastic)
    report.warnings = warnings_for(report)
    return report


def render(report: Report, console: Console) -> None:
    table = Table(title="hvdat doctor", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("found")
    hv = report.horovod
    if hv.get("installed"):

        def marks(kind: str) -> str:
            return "  ".join(f"[{'X' if on else ' '}] {name}" for name, on in hv[kind].items())

        table.add_row("Horovod", f"{hv['version']} ({hv['horovodrun'] or 'horovodrun not found'})")
        table.add_row("controllers", marks("controllers"))
        table.add_row("tensor ops", marks("tensor_ops"))
    else:
        table.add_row("Horovod", f"[red]not importable[/]: {hv['error']}")
    table.add_row(
        "MPI",
        f"{report.mpi['version'] or 'mpirun'} ({report.mpi['mpirun']})"
        if report.mpi["mpirun"]
        else "mpirun not on PATH",
    )
    t = report.torch
    table.add_row("torch", f"{t['version']} (CUDA {t['cuda'] or 'none'}, NCCL {t['nccl'] or 'n/a'})")
    table.add_row("GPUs", ", ".join(report.gpus) if report.gpus else "none visible")
    shm = report.shm_free_bytes
    table.add_row("/dev/shm free", f"{shm / 2**30:.1f} GiB" if shm is not None else "no /dev/shm")
    for h in report.hosts:
        state = "[green]ok[/]" if h.reachable else "[red]unreachable[/]"
        table.add_row(f"host {h.host}", f"{h.slots} slot(s), {state}, {h.detail}")
    console.print(table)
    for note in report.warnings:
        console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    for v in report.verdicts:
        mark = "[green]ok[/]" if v.ok else "[bold red]FAIL[/]"
        console.print(f"{mark} {v.setup}: {v.reason}", highlight=False, soft_wrap=True)


HOST_OPTIONS = ("hosts", "hostfile", "ssh_port", "ssh_identity_file")


@app.command()
@with_options(spec=tuple(f.name for f in dataclasses.fields(LaunchSpec) if f.name not in HOST_OPTIONS))
def doctor(
    spec: LaunchSpec,
    launcher: Annotated[
        Optional[List[str]], typer.Option(help="Setup to judge (repeatable): gloo or mpi.", rich_help_panel=CLUSTER)
    ] = None,
    np: Annotated[
        Optional[int],
        typer.Option("--np", help="Workers the job will ask for (checked against the slots).", rich_help_panel=CLUSTER),
    ] = None,
    elastic: Annotated[
        bool,
        typer.Option("--elastic", help="Also judge elastic training (--min-np/--max-np).", rich_help_panel=CLUSTER),
    ] = False,
    as_json: Json = False,
) -> None:
    """Check the Horovod build, MPI, NCCL, GPUs and hosts; exit 1 when a requested setup cannot run."""
    report = diagnose(
        launcher or ["gloo"], np, spec.hosts, spec.hostfile, spec.ssh_port, spec.ssh_identity_file, elastic
    )
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        render(report, out)
    if not report.ok:
        raise typer.Exit(1)
