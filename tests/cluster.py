"""A test cluster on one machine: N "hosts", each a network namespace with its own address, /etc/hosts and sshd.

    hv1 (198.18.0.1) --+
    hv2 (198.18.0.2) --+-- bridge br0 in the switch namespace hvsw
    hv3 (198.18.0.3) --+

Each host is `ip netns add hvN` with `eth0` (one end of a veth pair whose other end hangs on the bridge of a
dedicated switch namespace, so nothing is created in the machine's own namespace) and `lo` up;
`/etc/netns/hvN/hosts` maps the machine's host name to the host's own address (all namespaces share one host
name; without this Gloo advertises 127.0.0.1) and every cluster host name to its address. One ed25519 client key
is authorised on every host; each host runs its own key-only sshd on `port`, started with `ip netns exec`, so the
remote workers see that host's /etc/hosts. A drop-in `/etc/ssh/ssh_config.d/hvdat-test-cluster-PREFIX.conf` points
ssh at a known_hosts file with the hosts' own host keys (for the cluster host names only): horovodrun's Gloo ssh
passes `StrictHostKeyChecking=no` but OpenMPI's plm_rsh does not, and neither then writes to ~/.ssh.

Run a command on a host with `argv_on(host, argv)`; launch multi-host jobs from inside the first host:

    ip netns exec hv1 .venv/bin/hvdat train --np 2 -H hv1:1,hv2:1 --ssh-port 12345 --ssh-identity-file KEY \
        --network-interfaces eth0

Everything `up()` creates is recorded first in `/run/hvdat-test-cluster/PREFIX.json`, so `down()` (also after a
failed `up()`, also from another process: `bin/test-cluster down`) removes every process, namespace, file and
directory the cluster made, and is idempotent. Needs root, iproute2 and openssh-server (bin/install provides it).
No pytest in here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from hvdat.launch.netns import tbf_argv  # the same token bucket as `hvdat bench comm --bandwidth`

STATE_DIR = Path("/run/hvdat-test-cluster")
NETNS_ETC = Path("/etc/netns")
SSH_CONFIG_D = Path("/etc/ssh/ssh_config.d")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it
SSHD = "/usr/sbin/sshd"
ALLOWED = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking addresses: never routed anywhere
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,14}$")
_RATE = re.compile(r"^\d+(\.\d+)?(k|m|g)?(bit|bps)$")


class ClusterError(RuntimeError):
    pass


def _run(argv: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _netns_list() -> List[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _alive(pid: int, marker: str) -> bool:
    """Is `pid` still the process we started (its command line names our config), and not a zombie?

    While a process execs (sshd's start goes unshare -> sh -> ip netns exec -> sshd, one pid), its command line can
    read empty, or the read fail, for an instant: a reading without the marker is taken again a few times before
    the answer is no (tests/test_multihost.py once failed on such a reading)."""
    for attempt in range(5):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False  # no such process
        except OSError:
            cmdline, stat = "", ""
        state = stat.rsplit(")", 1)[-1].split()[0] if stat else ""
        if state == "Z":
            return False
        if marker in cmdline and state:
            return True
        time.sleep(0.002 * (attempt + 1))
    return False


def _terminate(pids: Sequence[int], marker: Optional[str] = None, grace: float = 5.0) -> None:
    """SIGTERM these pids (only those still carrying `marker` when one is given), then SIGKILL what remains."""

    def ours(pid: int) -> bool:
        return _alive(pid, marker) if marker else Path(f"/proc/{pid}").exists()

    pids = [p for p in pids if ours(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for pid in pids:  # reap our own children; others are reaped by init
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            pids = [p for p in pids if _alive(p, marker or "")]
            if not pids:
                return
            time.sleep(0.05)


class Cluster:
    """`with Cluster(n=3) as c:` brings the hosts up and always takes them down again."""

    def __init__(
        self, n: int = 3, prefix: str = "hv", port: int = 12345, subnet: str = "198.18.0", rate: Optional[str] = None
    ):
        if not 1 <= n <= 250:
            raise ClusterError(f"n must be in 1..250, not {n}")
        if not _PREFIX.match(prefix):
            raise ClusterError(f"prefix {prefix!r}: lower-case letters, digits and '-', at most 15")
        if not 1 <= port <= 65535:
            raise ClusterError(f"port {port} is not a port number")
        try:
            net = ipaddress.ip_network(f"{subnet}.0/24")
        except ValueError as exc:
            raise ClusterError(f"subnet {subnet!r}: write three octets such as 198.18.0") from exc
        if not net.subnet_of(ALLOWED):
            raise ClusterError(f"subnet {subnet} is outside {ALLOWED}; the cluster uses only those addresses")
        if rate is not None:
            self._check_rate(rate)
        self.n, self.prefix, self.port, self.subnet, self.rate = n, prefix, port, subnet, rate
        self.hosts = [f"{prefix}{i}" for i in range(1, n + 1)]
        self.switch = f"{prefix}sw"
        self.state_file = STATE_DIR / f"{prefix}.json"
        self.workdir: Optional[Path] = None
        self._procs: Dict[str, subprocess.Popen] = {}
        self._state: dict = {}

    # --- naming ---------------------------------------------------------------------------------------------
    def address(self, host: str) -> str:
        return f"{self.subnet}.{self._index(host)}"

    @property
    def key(self) -> Path:
        """The client's private key (pass it as --ssh-identity-file / ssh -i)."""
        if self.workdir is None:
            raise ClusterError("the cluster is not up")
        return self.workdir / "id_ed25519"

    def argv_on(self, host: str, argv: Sequence[str]) -> List[str]:
        """The command that runs `argv` on `host` (in its namespace, with its /etc/hosts)."""
        self._index(host)
        return ["ip", "netns", "exec", host, *[str(a) for a in argv]]

    def pids(self, host: str) -> List[int]:
        """The processes running on `host` (in its namespace): its sshd, the sessions it serves, what they started."""
        self._index(host)
        return [int(p) for p in _run(["ip", "netns", "pids", host], check=False).stdout.split() if p.isdigit()]

    def run_on(self, host: str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv_on(host, argv), **kwargs)

    def hosts_arg(self, slots: int = 1, n: Optional[int] = None) -> str:
        """`-H`'s value for the first n hosts (default all): 'hv1:1,hv2:1'."""
        return ",".join(f"{h}:{slots}" for h in self.hosts[: self.n if n is None else n])

    def ssh_argv(self, host: str, argv: Sequence[str] = ("true",)) -> List[str]:
        """ssh from the first host to `host`, key only, never asking."""
        return [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(self.key),
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=3",
            host,
            *argv,
        ]

    def _index(self, host: str) -> int:
        if host not in self.hosts:
            raise ClusterError(f"unknown host {host!r}; the cluster has {', '.join(self.hosts)}")
        return self.hosts.index(host) + 1

    # --- the record ----------------------------------------------------------------------------------------
    def _save(self) -> None:
        STATE_DIR.mkdir(mode=0o755, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=1))
        os.replace(tmp, self.state_file)

    def _record(self, key: str, value) -> None:
        """Write down what is about to be made (before making it), so a crash leaves a complete record."""
        if isinstance(self._state.get(key), list):
            if value not in self._state[key]:
                self._state[key].append(value)
        else:
            self._state[key] = value
        self._save()

    @classmethod
    def recorded(cls) -> List[str]:
        """The prefixes of every cluster with a record (up, or left over from a crash)."""
        return sorted(p.stem for p in STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []

    @classmethod
    def from_record(cls, prefix: str = "hv") -> Cluster:
        """The cluster a record describes (to take it down, or inspect it, from another process)."""
        state = json.loads((STATE_DIR / f"{prefix}.json").read_text())
        cluster = cls(n=state["n"], prefix=prefix, port=state["port"], subnet=state["subnet"])
        cluster._state = state
        cluster.workdir = Path(state["workdir"]) if state.get("workdir") else None
        return cluster

    # --- up ----------------------------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self, timeout: float = 30) -> Cluster:
        self._preflight()
        try:
            self._up(timeout)
        except BaseException:
            self.down()
            raise
        return self

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise ClusterError("the test cluster needs root (network namespaces, sshd)")
        for tool in ("ip", "tc", "ssh", "ssh-keygen", SSHD):
            if shutil.which(tool) is None:
                raise ClusterError(f"`{tool}` not found; run bin/install (apt-get install iproute2 openssh-server)")
        if self.state_file.exists():
            raise ClusterError(
                f"a cluster '{self.prefix}' is recorded in {self.state_file}; "
                f"run `bin/test-cluster down --prefix {self.prefix}` first"
            )
        taken = set(_netns_list()) & {*self.hosts, self.switch}
        if taken:
            raise ClusterError(f"network namespace(s) {', '.join(sorted(taken))} already exist")
        config = Path("/etc/ssh/ssh_config")
        if config.exists() and "ssh_config.d/*.conf" not in config.read_text():
            raise ClusterError(f"{config} does not include {SSH_CONFIG_D}/*.conf (the cluster's known hosts)")

    def _up(self, timeout: float) -> None:
        self._state = {
            "prefix": self.prefix,
            "n": self.n,
            "port": self.port,
            "subnet": self.subnet,
            "namespaces": [],
            "netns_dirs": [],
            "made_dirs": [],
            "sshd": {},
            "shaped": {},
        }
        self._save()
        STATE_DIR.chmod(0o755)  # sshd's StrictModes checks every directory above the authorized_keys file
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-", dir=STATE_DIR))
        self._record("workdir", str(self.workdir))
        for path in (NETNS_ETC, PRIVSEP_DIR, SSH_CONFIG_D):
            if not path.exists():
                self._record("made_dirs", str(path))
                path.mkdir(mode=0o755, parents=True)
        _run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"hvdat-test-cluster-{self.prefix}",
                "-f",
                str(self.key),
            ]
        )
        (self.workdir / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        known_hosts = []
        for host in self.hosts:
            host_key = self.workdir / f"{host}_host_ed25519"
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host, "-f", str(host_key)])
            public = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])
            known_hosts.append(f"[{host}]:{self.port} {public}\n")
            self._write_sshd_config(host, host_key)
        (self.workdir / "known_hosts").write_text("".join(known_hosts))
        ssh_conf = SSH_CONFIG_D / f"hvdat-test-cluster-{self.prefix}.conf"
        self._record("ssh_config", str(ssh_conf))
        ssh_conf.write_text(
            f"# hvdat's test cluster (tests/cluster.py); `bin/test-cluster down` removes this file.\n"
            f"Host {' '.join(self.hosts)}\n"
            f"    UserKnownHostsFile {self.workdir / 'known_hosts'}\n"
        )

        self._record("namespaces", self.switch)
        _run(["ip", "netns", "add", self.switch])
        _run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        hostname = socket.gethostname()
        for i, host in enumerate(self.hosts, start=1):
            self._record("namespaces", host)
            _run(["ip", "netns", "add", host])
            port = f"p{i}"
            _run(["ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host])
            _run(["ip", "-n", self.switch, "link", "set", port, "master", "br0"])
            _run(["ip", "-n", self.switch, "link", "set", port, "up"])
            _run(["ip", "-n", host, "link", "set", "lo", "up"])
            _run(["ip", "-n", host, "addr", "add", f"{self.address(host)}/24", "dev", "eth0"])
            _run(["ip", "-n", host, "link", "set", "eth0", "up"])
            etc = NETNS_ETC / host
            self._record("netns_dirs", str(etc))
            etc.mkdir(exist_ok=True)
            lines = [
                "127.0.0.1\tlocalhost",
                "::1\tlocalhost ip6-localhost ip6-loopback",
                f"{self.address(host)}\t{hostname}",
            ]
            lines += [f"{self.address(h)}\t{h}" for h in self.hosts]
            (etc / "hosts").write_text("\n".join(lines) + "\n")
            if self.rate:
                self.shape(host, self.rate)
        for host in self.hosts:
            self.start_sshd(host, wait=False)
        for host in self.hosts:
            self.wait_for_sshd(host, timeout)

    def _write_sshd_config(self, host: str, host_key: Path) -> None:
        """What a container's entrypoint would write: one port, its own host key, the cluster key only."""
        assert self.workdir is not None
        (self.workdir / f"{host}_sshd_config").write_text(
            f"Port {self.port}\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "PidFile none\n"
            "PrintMotd no\n"
            "X11Forwarding no\n"
            "MaxStartups 64\n"
        )

    # --- sshd ----------------------------------------------------------------------------------------------
    def start_sshd(self, host: str, wait: bool = True, timeout: float = 30, hide: Sequence[str] = ()) -> None:
        """Start `host`'s sshd (in the foreground of its own session, logging to WORKDIR/HOST_sshd.log). `hide`:
        directories that the sessions it serves see empty (an empty tmpfs over each, in a mount namespace of the
        sshd's own), as on a host where a venv or a package was never installed."""
        assert self.workdir is not None
        if self.sshd_running(host):
            return
        config = self.workdir / f"{host}_sshd_config"
        argv = self.argv_on(host, [SSHD, "-D", "-e", "-f", str(config)])
        if hide:
            mounts = " && ".join(shlex.join(["mount", "-t", "tmpfs", "hidden", str(path)]) for path in hide)
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"{mounts} && exec {shlex.join(argv)}",
            ]
        with open(self.workdir / f"{host}_sshd.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[host] = proc  # `ip netns exec` execs sshd: this pid is sshd's
        self._state["sshd"][host] = proc.pid
        self._save()
        if wait:
            self.wait_for_sshd(host, timeout)

    def stop_sshd(self, host: str) -> None:
        """Stop `host`'s sshd (sessions already open keep running, as with a real sshd)."""
        pid = self._state.get("sshd", {}).get(host)
        if pid is None:
            return
        assert self.workdir is not None
        _terminate([pid], marker=f"{self.workdir}/{host}_sshd_config")
        proc = self._procs.pop(host, None)
        if proc is not None:
            proc.wait(timeout=10)
        self._state["sshd"].pop(host, None)
        self._save()

    def sshd_running(self, host: str) -> bool:
        pid = self._state.get("sshd", {}).get(host)
        return pid is not None and self.workdir is not None and _alive(pid, f"{self.workdir}/{host}_sshd_config")

    def sshd_log(self, host: str) -> str:
        """What `host`'s sshd logged so far (e.g. `Accepted publickey for root` per session)."""
        assert self.workdir is not None
        path = self.workdir / f"{host}_sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_sshd(self, host: str, timeout: float = 30) -> None:
        """Until `ssh hvN true` from the first host succeeds with the cluster key."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.run_on(self.hosts[0], self.ssh_argv(host), timeout=15)
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline or not self.sshd_running(host):
                log = (self.workdir / f"{host}_sshd.log").read_text()[-2000:] if self.workdir else ""
                raise ClusterError(
                    f"sshd on {host} does not accept the cluster key: {proc.stderr.strip()}\nsshd log:\n{log}"
                )
            time.sleep(0.2)

    # --- the link ----------------------------------------------------------------------------------------------
    @staticmethod
    def _check_rate(rate: str) -> None:
        if not _RATE.match(rate):
            raise ClusterError(f"rate {rate!r}: write a tc rate such as 1gbit, 100mbit or 500kbit")

    def shape(self, host: str, rate: str) -> None:
        """Limit `host`'s eth0 to `rate` (tc tbf, both the host's sends; the switch side is not shaped)."""
        self._check_rate(rate)
        _run(self.argv_on(host, tbf_argv("eth0", rate)))
        self._state["shaped"][host] = rate
        self._save()

    def unshape(self, host: str) -> None:
        _run(self.argv_on(host, ["tc", "qdisc", "del", "dev", "eth0", "root"]), check=False)
        self._state["shaped"].pop(host, None)
        self._save()

    def link_down(self, host: str) -> None:
        _run(["ip", "-n", host, "link", "set", "eth0", "down"])

    def link_up(self, host: str) -> None:
        _run(["ip", "-n", host, "link", "set", "eth0", "up"])

    # --- down --------------------------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove everything recorded; safe to call twice, after a failed up(), or on a crashed run's record."""
        state = self._state
        if not state and self.state_file.exists():
            state = self._state = json.loads(self.state_file.read_text())
        workdir = state.get("workdir")
        errors = []
        # 1. sshd, then anything else still running inside the cluster's namespaces (remote workers, jobs)
        for host, pid in list(state.get("sshd", {}).items()):
            _terminate([pid], marker=f"{workdir}/{host}_sshd_config")
            proc = self._procs.pop(host, None)
            if proc is not None:
                proc.wait(timeout=10)
        present = set(_netns_list())
        for ns in state.get("namespaces", []):
            if ns in present:
                pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
                _terminate([int(p) for p in pids if p.isdigit() and int(p) != os.getpid()])
        # 2. the namespaces (their veths, the bridge and any qdisc go with them)
        for ns in reversed(state.get("namespaces", [])):
            if ns in present:
                proc = _run(["ip", "netns", "del", ns], check=False)
                if proc.returncode != 0:
                    errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
        # 3. files and directories
        for path in state.get("netns_dirs", []):
            shutil.rmtree(path, ignore_errors=True)
        if state.get("ssh_config"):
            Path(state["ssh_config"]).unlink(missing_ok=True)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        others = [p for p in self.recorded() if p != self.prefix]
        for path in reversed(state.get("made_dirs", [])):
            # shared by every cluster: only the last one takes them away, and only when nothing else is in them
            if not others and Path(path).is_dir() and not any(Path(path).iterdir()):
                Path(path).rmdir()
        self.state_file.unlink(missing_ok=True)
        if STATE_DIR.is_dir() and not any(STATE_DIR.iterdir()):
            STATE_DIR.rmdir()
        self._state, self.workdir = {}, None
        left = set(_netns_list()) & set(state.get("namespaces", []))
        if left or errors:
            raise ClusterError(f"cluster '{self.prefix}' left behind: {sorted(left)} {errors}")

    # --- status ------------------------------------------------------------------------------------------------
    def status(self) -> dict:
        present = set(_netns_list())
        hosts = {}
        for host in self.hosts:
            qdisc = ""
            if host in present:
                qdisc = _run(self.argv_on(host, ["tc", "qdisc", "show", "dev", "eth0"]), check=False).stdout.strip()
            hosts[host] = {
                "address": self.address(host),
                "namespace": host in present,
                "sshd_pid": self._state.get("sshd", {}).get(host) if self.sshd_running(host) else None,
                "qdisc": qdisc,
            }
        return {
            "prefix": self.prefix,
            "port": self.port,
            "key": str(self.key) if self.workdir else None,
            "switch": self.switch in present,
            "hosts": hosts,
        }
