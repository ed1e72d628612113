"""A real one-node Slurm for the tests: munged (as the munge user), slurmctld and slurmd, all with their key,
sockets, state, logs and slurm.conf in one folder, found by the commands through SLURM_CONF. Needs root and
`apt-get install slurm-wlm munge` (bin/install)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
PARTITION = "hvdat"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_conf(folder: Path, node: str, socket_path: Path) -> str:
    ports = _free_port(), _free_port()
    return "\n".join(
        [
            "ClusterName=hvdat",
            f"SlurmctldHost={node}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={socket_path}",
            "SelectType=select/cons_tres",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SchedulerType=sched/builtin",
            "ReturnToService=2",
            f"SlurmctldPort={ports[0]}",
            f"SlurmdPort={ports[1]}",
            f"StateSaveLocation={folder}/ctld",
            f"SlurmdSpoolDir={folder}/spool",
            f"SlurmctldPidFile={folder}/slurmctld.pid",
            f"SlurmdPidFile={folder}/slurmd.pid",
            f"SlurmctldLogFile={folder}/slurmctld.log",
            f"SlurmdLogFile={folder}/slurmd.log",
            f"NodeName={node} CPUs=2 State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


class SlurmCluster:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.node = socket.gethostname()
        self.conf = folder / "slurm.conf"
        self.env: Dict[str, str] = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: List[subprocess.Popen] = []
        self.munge: Optional[Path] = None

    def start(self) -> None:
        # the munge user must reach its folder (pytest's are private to root); munged wants it searchable by all
        munge = self.munge = Path(tempfile.mkdtemp(prefix="hvdat-munge-"))
        munge.chmod(0o755)
        for sub in ("ctld", "spool"):
            (self.folder / sub).mkdir()
        user = pwd.getpwnam("munge")
        key = munge / "munge.key"
        subprocess.run(["/usr/sbin/mungekey", "--create", "--keyfile", str(key)], check=True)
        for path in (munge, key):
            os.chown(path, user.pw_uid, user.pw_gid)
        sock = munge / "munge.socket"
        self.conf.write_text(slurm_conf(self.folder, self.node, sock))
        # munged stays in the foreground (-F) so that it is our child and stops with us
        self._spawn(
            ["runuser", "-u", "munge", "--", DAEMONS[0], "-F", "--key-file", str(key), "--socket", str(sock)]
            + ["--pid-file", str(munge / "munged.pid"), "--log-file", str(munge / "munged.log")]
            + ["--seed-file", str(munge / "munged.seed")]
        )
        self._wait(lambda: sock.exists(), "munged's socket")
        self._spawn([DAEMONS[1], "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.run("sinfo", "-h", check=False).returncode == 0, "slurmctld")
        self._spawn([DAEMONS[2], "-D", "-f", str(self.conf), "-N", self.node])
        self._wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T").stdout, "the node to be idle")

    def _spawn(self, argv: List[str]) -> None:
        name = Path(DAEMONS[0] if argv[0] == "runuser" else argv[0]).name
        with open(self.folder / f"{name}.out", "w") as log:  # the daemon keeps its own copy of the descriptor
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def _wait(self, ready, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) waiting for {what}:\n{self.logs()}")
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        files = sorted(self.folder.glob("*.log")) + sorted(self.folder.glob("*.out"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in files)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, check=check, timeout=60)

    def job_state(self, job: str) -> str:
        """The job's state while slurmctld remembers it (MinJobAge), e.g. RUNNING, COMPLETED, CANCELLED."""
        out = self.run("scontrol", "show", "job", job, check=False).stdout
        return next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "GONE")

    def wait_done(self, job: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job)
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED"):
                return state
            time.sleep(0.2)
        raise AssertionError(f"job {job} still {self.job_state(job)} after {timeout} s")

    def stop(self) -> None:
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.munge is not None:
            shutil.rmtree(self.munge, ignore_errors=True)


def available() -> bool:
    return os.geteuid() == 0 and all(shutil.which(d) for d in DAEMONS)
