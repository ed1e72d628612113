"""`hvdat doctor`: what this machine (and every host of a job) can run, and why not.

Gathers facts (Horovod build, MPI, NCCL, GPUs, torch/CUDA, /dev/shm) on this machine, and the same facts on every
remote host of `-H`/`--hostfile`: one ssh session per host, all in parallel, each bounded by `PROBE_TIMEOUT_S`, runs
the interpreter doctor runs on (the one horovodrun starts the workers with there) on `host_facts.py`'s source. Then
one verdict per remote host (ssh, its Python, hvdat and Horovod) and per requested setup, each failing one with the
command that fixes it. Rendering is `render` (the CLI's edge); everything before it is JSON-serialisable data.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typing_extensions import Annotated

from .. import launch
from ..errors import UsageError
from ..launch import LaunchSpec
from ..launch.spec import LAUNCHERS
from ..launch.start_failures import FIX_INSTALL, ssh_failure
from ..options import CLUSTER
from . import host_facts
from .app import app, out
from .options import Json, with_options

log = logging.getLogger("hvdat.doctor")
SHM_MIN_BYTES = 1 << 30  # NCCL and DataLoader workers want more than Docker's 64 MB default
SSH_TIMEOUT_S = 5  # ssh's ConnectTimeout
PROBE_TIMEOUT_S = 60  # one remote host, all told: connect, then its Python imports torch and Horovod
FIX_MPI_BUILD = "rerun bin/install after apt-get install libopenmpi-dev openmpi-bin"
FIX_MPIRUN = "apt-get install openmpi-bin, or put the directory holding mpirun on PATH"
HOST_KEY_FAILED = "Host key verification failed"


@dataclass
class Verdict:
    setup: str
    ok: bool
    reason: str = ""
    hosts: List[str] = field(default_factory=list)  # the hosts this setup fails on (empty: this machine, or none)


@dataclass
class HostCheck:
    """One host of the job. `facts` is `host_facts.gather()` from there (this machine's for a local name), None when
    they could not be read; `problem` says why no worker can start there although ssh works (no Python, hvdat or
    Horovod); `known_host`: whether ssh with your own host-key policy (as OpenMPI's mpirun runs it, without
    horovodrun's StrictHostKeyChecking=no) accepts the host's key, None when not known."""

    host: str
    slots: int
    local: bool
    reachable: bool
    detail: str = ""  # what ssh said ("ssh ok", "Connection refused", ...), or "this machine"
    fix: str = ""  # for an ssh failure
    port: Optional[int] = None
    python: str = ""
    known_host: Optional[bool] = None
    known_host_detail: str = ""
    known_host_fix: str = ""
    facts: Optional[Dict[str, Any]] = None
    problem: str = ""
    keepalive_seconds: Optional[int] = None  # ssh's ServerAliveInterval x CountMax for it (0: none), None: unknown

    @property
    def usable(self) -> bool:
        return self.reachable and not self.problem and self.facts is not None


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


# --- this machine --------------------------------------------------------------------------------------------------
def is_local(host: str) -> bool:
    names = {"localhost", socket.gethostname(), socket.getfqdn()}
    if host in names or host.startswith("127."):
        return True
    try:
        return socket.gethostbyname(host) == socket.gethostbyname(socket.gethostname())
    except OSError:
        return False


# --- a remote host -------------------------------------------------------------------------------------------------
def ssh_argv(ssh: str, ssh_port: Optional[int], ssh_identity_file: Optional[str], any_host_key: bool) -> List[str]:
    """ssh that never prompts. By default it keeps your ssh config's host-key policy (what OpenMPI's mpirun gets);
    `any_host_key` is horovodrun's Gloo ssh (StrictHostKeyChecking=no), minus its writing to known_hosts."""
    argv = [ssh, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT_S}"]
    if any_host_key:
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    if ssh_port:
        argv += ["-p", str(ssh_port)]
    if ssh_identity_file:
        argv += ["-i", ssh_identity_file]
    return argv


def ssh_keepalive_seconds(ssh: str, host: str, ssh_port: Optional[int]) -> Optional[int]:
    """How long ssh (your config for `host`, as `ssh -G` resolves it) takes to notice that the host went silent:
    ServerAliveInterval x ServerAliveCountMax seconds, 0 when there is no keepalive (then TCP's retransmission
    timeout decides: minutes); None when ssh cannot say."""
    try:
        proc = subprocess.run(
            [ssh, "-G", *(["-p", str(ssh_port)] if ssh_port else []), host], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    options = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    try:
        interval, count = int(options["serveraliveinterval"]), int(options["serveralivecountmax"])
    except (KeyError, ValueError):
        return None
    return interval * count


def ssh_said(stderr: str) -> str:
    """The line of ssh's stderr that says why it failed, without the host and port (the verdict names them)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        found = ssh_failure(line)
        if found:
            return f"Could not resolve hostname ({found[1]})" if "Could not resolve hostname" in line else found[1]
    if any(HOST_KEY_FAILED in line for line in lines):
        return HOST_KEY_FAILED
    return lines[-1].rstrip(".") if lines else "ssh failed without a message"


def _keyscan(host: str, port: Optional[int]) -> str:
    return f"ssh-keyscan{f' -p {port}' if port else ''} {host} >> ~/.ssh/known_hosts"


def host_key_fix(host: str, port: Optional[int], changed: bool) -> str:
    name = f"'[{host}]:{port}'" if port and port != 22 else host
    forget = f"ssh-keygen -R {name} && " if changed else ""
    return f"{forget}{_keyscan(host, port)} (compare its fingerprint with the host's own key first)"


def ssh_fix(why: str, host: str, port: Optional[int], identity: Optional[str]) -> str:
    if "refused" in why:
        return f"start sshd on {host}, or pass the --ssh-port its sshd listens on"
    if "Permission denied" in why:
        copy = f"ssh-copy-id{f' -p {port}' if port else ''}{f' -i {identity}' if identity else ''} {host}"
        return f"authorise your public key there ({copy}), or pass --ssh-identity-file with a key it accepts"
    if "resolve hostname" in why:
        return f"check the name {host} (DNS or /etc/hosts), or give its address"
    if "timed out" in why or "No route" in why or "unreachable" in why:
        return f"check that {host} is up and that port {port or 22} is open to this machine"
    return f"check that `ssh{f' -p {port}' if port else ''} {host} true` works without a prompt"


def _run_ssh(argv: Sequence[str], script: str, timeout: float) -> Optional[subprocess.CompletedProcess]:
    try:
        return subprocess.run(list(argv), input=script, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def check_remote(
    host: str, slots: int, ssh_port: Optional[int], ssh_identity_file: Optional[str], timeout: float = PROBE_TIMEOUT_S
) -> HostCheck:
    """ssh to `host` and run this interpreter there on `host_facts.py`. One session; a second one (with any host
    key, as horovodrun's Gloo ssh) only when your own host-key policy refused the host's key."""
    python = sys.executable
    check = HostCheck(host, slots, local=False, reachable=False, port=ssh_port, python=python)
    ssh = shutil.which("ssh")
    if not ssh:
        check.detail, check.fix = "ssh not found on PATH", "apt-get install openssh-client"
        return check
    # horovodrun passes its environment on to the workers: PYTHONPATH decides whether hvdat imports there too
    env = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} " if os.environ.get("PYTHONPATH") else ""
    remote = f"{env}{shlex.quote(python)} -"
    script = Path(host_facts.__file__).read_text()
    proc = _run_ssh([*ssh_argv(ssh, ssh_port, ssh_identity_file, False), host, remote], script, timeout)
    if proc is not None and proc.returncode == 255 and HOST_KEY_FAILED in proc.stderr:
        changed = "CHANGED" in proc.stderr
        check.known_host = False
        check.known_host_detail = f"{HOST_KEY_FAILED}: " + (
            "its host key changed since it was added to known_hosts" if changed else "its key is not in known_hosts"
        )
        check.known_host_fix = host_key_fix(host, ssh_port, changed)
        proc = _run_ssh([*ssh_argv(ssh, ssh_port, ssh_identity_file, True), host, remote], script, timeout)
    if proc is None:
        check.detail = f"timed out after {timeout:.0f} s"
        check.fix = f"check that {host} is up, and that `ssh {host} {shlex.quote(python)} -V` answers quickly"
        return check
    if proc.returncode == 255:
        check.detail = ssh_said(proc.stderr)
        check.fix = ssh_fix(check.detail, host, ssh_port, ssh_identity_file)
        return check
    check.reachable, check.detail = True, "ssh ok"
    check.keepalive_seconds = ssh_keepalive_seconds(ssh, host, ssh_port)
    if check.known_host is None:
        check.known_host = True
    last = ([line for line in proc.stderr.splitlines() if line.strip()] or [""])[-1].strip()
    if proc.returncode == 127:
        check.problem = f"no {python} on {host}: {FIX_INSTALL}"
        return check
    facts = host_facts.parse(proc.stdout)
    if facts is None:
        check.problem = f"{python} on {host} failed (exit {proc.returncode}: {last or 'no output'}): {FIX_INSTALL}"
        return check
    check.facts = facts
    if not facts["hvdat"]["importable"]:
        check.problem = f"hvdat does not import with {python} on {host} ({facts['hvdat']['error']}): {FIX_INSTALL}"
    elif not facts["horovod"].get("installed"):
        check.problem = (
            f"Horovod does not import with {python} on {host} ({facts['horovod'].get('error')}): "
            "run bin/install there, or use the image"
        )
    return check


def check_host(
    host: str, slots: int, ssh_port: Optional[int], ssh_identity_file: Optional[str], timeout: float = PROBE_TIMEOUT_S
) -> HostCheck:
    """A local name needs no ssh (its facts are this machine's, filled in by `check_hosts`); a remote one must accept
    a key login without a prompt, as horovodrun needs, and run this interpreter there."""
    if is_local(host):
        return HostCheck(host, slots, local=True, reachable=True, detail="this machine", python=sys.executable)
    return check_remote(host, slots, ssh_port, ssh_identity_file, timeout)


def check_hosts(
    hosts: Sequence[Tuple[str, int]],
    ssh_port: Optional[int],
    ssh_identity_file: Optional[str],
    local_facts: Callable[[], Dict[str, Any]],
) -> List[HostCheck]:
    """Every host of the list in parallel (name lookups too); `local_facts()` runs meanwhile, in this thread."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(32, len(hosts)))) as pool:
        futures = [pool.submit(check_host, h, s, ssh_port, ssh_identity_file) for h, s in hosts]
        here = local_facts()
        checks = [f.result() for f in futures]
    for check in checks:
        if check.local:
            check.facts = here
    return checks


# --- verdicts -------------------------------------------------------------------------------------------------------
def mpi_name(mpi: Dict[str, Any]) -> str:
    """`mpirun (Open MPI) 4.1.4` -> `Open MPI 4.1.4`; the path when it printed no version, 'no mpirun' without it."""
    if not mpi["mpirun"]:
        return "no mpirun"
    return re.sub(r"^mpirun \((.+?)\)", r"\1", mpi["version"]) or mpi["mpirun"]


def host_summary(facts: Dict[str, Any]) -> str:
    hv, mpi, torch = facts["horovod"], facts["mpi"], facts["torch"]
    built = [name for name, on in hv["controllers"].items() if on] + (["nccl"] if hv["tensor_ops"]["nccl"] else [])
    return (
        f"Horovod {hv['version']} ({', '.join(built) or 'no controllers'}), "
        f"{mpi_name(mpi)}, "
        f"torch {torch.get('version') or 'missing'}, {len(facts['gpus'])} GPU(s)"
    )


def host_verdict(h: HostCheck) -> Verdict:
    setup = f"host {h.host}"
    if not h.reachable:
        port = f" (port {h.port or 22})" if "refused" in h.detail or "timed out" in h.detail else ""
        return Verdict(setup, False, f"ssh to {h.host} fails: {h.detail}{port}; {h.fix}", [h.host])
    if h.problem or h.facts is None:
        return Verdict(setup, False, h.problem, [h.host])
    return Verdict(setup, True, f"ssh ok, {host_summary(h.facts)}")


def launcher_problems(name: str, horovod: Dict[str, Any], mpi: Dict[str, Any], host: Optional[str]) -> List[str]:
    """Why `--launcher name` cannot run with this Horovod build and MPI; `host`: on a remote host (None: here)."""
    on, fix_on = (f" on {host}", f"on {host}: ") if host else ("", "")
    if not horovod.get("installed"):
        return [f"Horovod does not import{on} ({horovod.get('error')}); {fix_on}run bin/install"]
    if name == "gloo":
        return [] if horovod["controllers"]["gloo"] else [f"Horovod{on} built without Gloo; {fix_on}rerun bin/install"]
    if not horovod["controllers"]["mpi"]:
        return [f"not available{on}, Horovod built without MPI; {fix_on}{FIX_MPI_BUILD}"]
    if not mpi["mpirun"]:
        where = f"the PATH of an ssh login to {host}" if host else "PATH"
        return [f"not available{on}, mpirun not found on {where}; {fix_on}{FIX_MPIRUN}"]
    return []


def setup_verdict(setup: str, name: str, report: Report, ready: str) -> Verdict:
    """One launcher (or elastic, on Gloo) judged on this machine and on every host of the job."""
    problems = launcher_problems(name, report.horovod, report.mpi, None)
    failing = []
    for h in report.hosts:
        if h.local:
            continue
        found: List[str] = []
        if not h.usable:
            found = [f"cannot run on {h.host} (see host {h.host})"]
        else:
            assert h.facts is not None
            found = launcher_problems(name, h.facts["horovod"], h.facts["mpi"], h.host)
            if name == "mpi" and h.known_host is False:
                found.append(
                    f"not available on {h.host}, mpirun's ssh (unlike horovodrun's) checks host keys and gets "
                    f"'{h.known_host_detail}'; {h.known_host_fix}"
                )
        problems += found
        failing += [h.host] if found else []
    if problems:
        return Verdict(setup, False, " | ".join(problems), failing)
    return Verdict(setup, True, ready)


def verdicts(report: Report, launchers: Sequence[str], np: Optional[int], elastic: bool) -> List[Verdict]:
    hv = report.horovod
    found: List[Verdict] = [host_verdict(h) for h in report.hosts if not h.local]
    if not hv.get("installed"):
        reason = f"Horovod does not import ({hv.get('error')}); run bin/install"
        return found + [Verdict(f"--launcher {name}", False, reason) for name in launchers]
    for name in launchers:
        ready = f"ready ({mpi_name(report.mpi)})" if name == "mpi" else "ready"
        found.append(setup_verdict(f"--launcher {name}", name, report, ready))
    if elastic:
        verdict = setup_verdict("elastic (--min-np/--max-np)", "gloo", report, "ready (Gloo)")
        if not verdict.ok:
            verdict.reason = f"elastic training needs Gloo: {verdict.reason}"
        found.append(verdict)
    if (np is not None and np > 1 or report.hosts) and not hv.get("horovodrun"):
        found.append(Verdict("horovodrun", False, "not found next to python or on PATH; run bin/install"))
    if np is not None:
        slots = sum(h.slots for h in report.hosts) if report.hosts else None
        if slots is not None and np > slots:
            found.append(Verdict(f"--np {np}", False, f"only {slots} slots in the host list; add hosts or slots"))
        elif slots is not None:
            found.append(Verdict(f"--np {np}", True, f"{slots} slots"))
    return found


def warnings_for(report: Report, elastic: bool = False) -> List[str]:
    notes = []
    silent = [h.host for h in report.hosts if not h.local and h.reachable and h.keepalive_seconds == 0]
    if elastic and silent:  # the elastic driver re-forms only once every old worker, and its ssh session, has ended
        notes.append(
            f"ssh has no keepalive for {', '.join(silent)}: if an elastic job loses one, the others wait minutes "
            "(TCP's timeout) before re-forming; add `ServerAliveInterval 3` and `ServerAliveCountMax 2` for them to "
            "~/.ssh/config"
        )
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
    for h in report.hosts:
        if h.local or not h.usable or not hv.get("installed"):
            continue
        assert h.facts is not None
        theirs = {"Horovod": h.facts["horovod"].get("version"), "torch": h.facts["torch"].get("version")}
        ours = {"Horovod": hv.get("version"), "torch": report.torch.get("version")}
        for what, version in theirs.items():
            if version != ours[what]:
                notes.append(
                    f"{h.host} has {what} {version}, this machine {ours[what]}: workers must run the same versions; "
                    "rerun bin/install there, or use the same image everywhere"
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
    slots = launch.slots_of(LaunchSpec(np=np or 1, hosts=hosts, hostfile=hostfile)) if hosts or hostfile else []
    gathered: Dict[str, Any] = {}

    def here() -> Dict[str, Any]:
        gathered.update(host_facts.gather())
        return gathered

    checks = check_hosts(slots, ssh_port, ssh_identity_file, here) if slots else []
    facts = gathered or here()
    report = Report(
        horovod=facts["horovod"],
        mpi=facts["mpi"],
        torch=facts["torch"],
        gpus=facts["gpus"],
        shm_free_bytes=facts["shm_free_bytes"],
        hosts=checks,
    )
    report.verdicts = verdicts(report, launchers, np, elastic)
    report.warnings = warnings_for(report, elastic)
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
    console.print(table)
    if report.hosts:
        console.print(hosts_table(report.hosts))
    for note in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
    for v in report.verdicts:
        mark = "[green]ok[/]" if v.ok else "[bold red]FAIL[/]"
        console.print(f"{mark} {escape(v.setup)}: {escape(v.reason)}", highlight=False, soft_wrap=True)


def hosts_table(hosts: Sequence[HostCheck]) -> Table:
    """One row per host of the job: how ssh went, and what its Python, Horovod, MPI, torch and GPUs are."""
    table = Table(title="hosts")
    for column in ("host", "slots", "ssh", "Horovod", "MPI", "torch", "GPUs"):
        table.add_column(column, overflow="fold")  # never cut a host name or a version short
    for h in hosts:
        if not h.reachable:
            ssh = f"[red]{escape(h.detail)}[/]"
        elif h.local:
            ssh = "this machine"
        elif h.known_host is False:
            ssh = "[yellow]ok, host key not known[/]"
        else:
            ssh = "[green]ok[/]"
        facts = h.facts
        if facts is None:
            rest = [f"[red]{escape(h.problem)}[/]" if h.problem else "-", "-", "-", "-"]
        else:
            hv, mpi = facts["horovod"], facts["mpi"]
            if hv.get("installed"):
                built = [name for name, on in hv["controllers"].items() if on]
                built += ["nccl"] if hv["tensor_ops"]["nccl"] else []
                horovod = f"{hv['version']} ({', '.join(built) or 'no controllers'})"
            else:
                horovod = f"[red]{escape(str(hv.get('error')))}[/]"
            if not facts["hvdat"]["importable"]:
                horovod += " [red](no hvdat)[/]"
            rest = [
                horovod,
                escape(mpi_name(mpi)),
                escape(str(facts["torch"].get("version") or facts["torch"].get("error"))),
                str(len(facts["gpus"])),
            ]
        table.add_row(escape(h.host), str(h.slots), ssh, *rest)
    return table


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
    """Check the Horovod build, MPI, NCCL, GPUs, and every host of -H/--hostfile over ssh (its Horovod, MPI, torch and
    GPUs); exit 1 when a requested setup cannot run."""
    report = diagnose(
        launcher or ["gloo"], np, spec.hosts, spec.hostfile, spec.ssh_port, spec.ssh_identity_file, elastic
    )
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        render(report, out)
    if not report.ok:
        raise typer.Exit(1)
