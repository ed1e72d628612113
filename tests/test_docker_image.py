"""The CPU image built for real from docker/Dockerfile and run: `make image-test` (marker `image`, not in `make test`).

A Debian bookworm base is made locally (`debootstrap --variant=minbase` + `docker import`, no registry needed), the
image is built from it (`--build-arg BASE=...`, with pip's local file indexes served on loopback to a `--network
host` build), then:
- one container (`--network none`) trains 2 Horovod workers on digits;
- two containers are two hosts: each runs the image's key-only sshd entrypoint (`worker`), has `--network none`
  plus one end of a veth pair made between the two namespaces (198.18.0.0/15 addresses) and an /etc/hosts with both
  names, and a 2-worker `hvdat train` started in the first reaches the second over ssh (Gloo).

Starts dockerd (`--bridge=none --iptables=false --ip6tables=false`) when none answers and stops it again. The base
and the image stay in the engine, so a rerun reuses the layers: a cold build compiles Horovod (11 to 36 minutes
measured on 2 shared cores) in a layer whose only input is bin/install, so a rerun after an edit under hvdat/ or
to setup.py reuses it. pip's index reaches the build as a secret: a build argument holding the served index's
fresh port would be part of every layer's cache key.
Needs root, docker.io and debootstrap (`HVDAT_DOCKER=1 bin/install`, which `make image-test` runs).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import REPO

pytestmark = [pytest.mark.image, pytest.mark.timeout(7200)]

BASE = "hvdat-base:bookworm"
IMAGE = "hvdat:cpu"
PREFIX = f"hvdat-it{os.getpid()}"  # container names of this session
SUBNET = "198.19.7"  # RFC 2544 benchmarking range, inside tests/cluster.py's ALLOWED; only between two containers
TINY = ["--dataset", "digits", "--eps", "0.1", "--steps", "2", "--epochs", "1", "--batch-size", "64"]
TINY += ["--train-samples", "512", "--test-samples", "128", "--eval-samples", "64", "--eval-steps", "3"]


def _docker_cli() -> str | None:
    # The engine's own client first: a newer stand-alone client without the buildx plugin cannot build.
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def docker(*args: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    return proc


DOCKER = _docker_cli() or "docker"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A Docker engine: the running one, or a dockerd this module starts (no bridge, no iptables) and stops."""
    if _docker_cli() and subprocess.run([DOCKER, "info"], capture_output=True, timeout=60).returncode == 0:
        yield None  # an engine answers: use it, leave it running
        return
    if _docker_cli() is None or shutil.which("dockerd") is None:
        pytest.skip("no Docker engine here: `HVDAT_DOCKER=1 bin/install` installs docker.io and debootstrap")
    if os.geteuid() != 0:
        pytest.skip("dockerd is installed but not running, and starting it needs root")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            ["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([DOCKER, "info"], capture_output=True).returncode != 0:
            assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield daemon
    finally:
        daemon.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(30)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


@pytest.fixture(scope="module")
def base_image(engine, tmp_path_factory):
    """Debian bookworm from Debian's packages (debootstrap minbase), imported once and kept for later runs."""
    if docker("image", "inspect", BASE, check=False).returncode != 0:
        rootfs = tmp_path_factory.mktemp("rootfs") / "bookworm"
        subprocess.run(
            ["nice", "-n", "10", "debootstrap", "--variant=minbase", "bookworm", str(rootfs)],
            check=True,
            capture_output=True,
            timeout=1800,
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        docker("import", "-", BASE, stdin=tar.stdout, timeout=600)
        assert tar.wait() == 0
        shutil.rmtree(rootfs, ignore_errors=True)
    assert docker("run", "--rm", "--network", "none", BASE, "cat", "/etc/debian_version").stdout.startswith("12.")
    return BASE


def _pip_config() -> dict:
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    return {
        k.split(".", 1)[-1]: v.strip("'\"") for k, _, v in (line.partition("=") for line in proc.stdout.splitlines())
    }


def _pip_file_indexes() -> list[Path]:
    """The local (file://) extra indexes in pip's configuration: a build cannot see them unless they are served."""
    config = _pip_config()
    urls = (config.get("index-url", "") + " " + config.get("extra-index-url", "")).split()
    return [Path(urlparse(u).path) for u in urls if u.startswith("file://") and Path(urlparse(u).path).is_dir()]


def _pip_cert() -> str | None:
    """The CA bundle pip trusts here (a network that intercepts TLS adds its own CA): a build secret, never a layer."""
    cert = os.environ.get("PIP_CERT") or _pip_config().get("cert") or "/etc/ssl/certs/ca-certificates.crt"
    return cert if Path(cert).is_file() else None


@pytest.fixture(scope="module")
def index_urls():
    """Serve each local index's folder (the index links to ../../files) on loopback, for the build only."""
    root = Path(tempfile.mkdtemp(prefix="hvdat-index-"))
    urls = []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for i, simple in enumerate(_pip_file_indexes()):
        (root / f"i{i}").symlink_to(simple.parent)
        urls.append(f"http://127.0.0.1:{port}/i{i}/{simple.name}")
    handler = partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield urls
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(root, ignore_errors=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image(base_image, index_urls, tmp_path_factory):
    """`docker build` of the CPU flavour (nice'd: it compiles Horovod). Returns the build's wall seconds."""
    log = tmp_path_factory.mktemp("build") / "build.log"
    argv = ["nice", "-n", "10", DOCKER, "build", "--network", "host", "-f", "docker/Dockerfile"]
    argv += ["--build-arg", f"BASE={base_image}", "-t", IMAGE]
    if index_urls:  # a secret, not a build argument: the served index's port changes per run, the cache key must not
        pip_conf = log.parent / "pip.conf"
        pip_conf.write_text(f"[global]\nextra-index-url = {' '.join(index_urls)}\ntrusted-host = 127.0.0.1\n")
        argv += ["--secret", f"id=pip_conf,src={pip_conf}"]
    if _pip_cert():
        argv += ["--secret", f"id=pip_cert,src={_pip_cert()}"]
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}  # BuildKit: docker/Dockerfile.dockerignore and the secret mount
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(
            [*argv, "--progress", "plain", "."], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=6000, env=env
        )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, log.read_text()[-6000:]
    size = docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout.strip()
    print(f"\n[image] {IMAGE} built in {seconds:.0f} s, {int(size) / 2**30:.2f} GiB")
    return IMAGE


def test_image_has_the_pins_and_horovod_with_gloo_and_mpi(image):
    script = (
        "import torch, torchvision, horovod, horovod.torch as hvd, hvdat;"
        "print(torch.__version__, torchvision.__version__, horovod.__version__, hvd.gloo_built(), hvd.mpi_built(),"
        " bool(hvd.nccl_built()), hvdat.__version__)"
    )
    out = docker("run", "--rm", "--network", "none", image, "python", "-c", script).stdout.split()
    import horovod
    import torch
    import torchvision

    import hvdat

    assert out == [
        torch.__version__,
        torchvision.__version__,
        horovod.__version__,
        "True",
        "True",
        "False",
        hvdat.__version__,
    ]


def test_one_container_trains_two_workers_on_digits(image, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    proc = docker(
        "run", "--rm", "--network", "none", "-v", f"{runs}:/runs", image,
        "hvdat", "train", "--np", "2", *TINY, "--out", "/runs/one",
        timeout=600,
    )  # fmt: skip
    metrics = [json.loads(line) for line in (runs / "one" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and metrics[-1]["world_size"] == 2, proc.stdout[-3000:]


@pytest.fixture
def two_hosts(image, tmp_path):
    """Two containers hva, hvb: the sshd entrypoint, no Docker network, a veth pair between their namespaces."""
    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id_ed25519")], check=True)
    runs = tmp_path / "runs"
    runs.mkdir()
    hosts = {"hva": f"{SUBNET}.1", "hvb": f"{SUBNET}.2"}
    names = {h: f"{PREFIX}-{h}" for h in hosts}
    add_hosts = [arg for h, ip in hosts.items() for arg in ("--add-host", f"{h}:{ip}")]
    try:
        for host, name in names.items():
            docker(
                "run", "-d", "--name", name, "--hostname", host, "--network", "none", *add_hosts,
                "-v", f"{keys / 'id_ed25519.pub'}:/root/.ssh/authorized_keys:ro",
                "-v", f"{keys / 'id_ed25519'}:/keys/id_ed25519:ro", "-v", f"{runs}:/runs",
                image, "worker",
            )  # fmt: skip
        pids = {h: docker("inspect", "-f", "{{.State.Pid}}", n).stdout.strip() for h, n in names.items()}
        # eth0 in hva's namespace, its peer eth0 straight into hvb's: nothing is made in the machine's namespace.
        subprocess.run(
            ["nsenter", "-t", pids["hva"], "-n", "ip", "link", "add", "eth0", "type", "veth",
             "peer", "name", "eth0", "netns", pids["hvb"]],
            check=True, capture_output=True,
        )  # fmt: skip
        for host, ip in hosts.items():
            for cmd in (["addr", "add", f"{ip}/24", "dev", "eth0"], ["link", "set", "eth0", "up"]):
                subprocess.run(["nsenter", "-t", pids[host], "-n", "ip", *cmd], check=True, capture_output=True)
        for name in names.values():  # sshd is listening
            deadline = time.monotonic() + 30
            while "sshd listening" not in docker("logs", name).stdout + docker("logs", name).stderr:
                assert time.monotonic() < deadline, docker("logs", name).stderr
                time.sleep(0.2)
        yield names, runs
    finally:
        for name in names.values():
            docker("rm", "-f", name, check=False)


def test_two_containers_train_as_two_hosts(two_hosts):
    names, runs = two_hosts
    primary = names["hva"]
    ssh = ["ssh", "-p", "12345", "-i", "/keys/id_ed25519", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]
    assert docker("exec", primary, *ssh, "hvb", "hostname").stdout.strip() == "hvb"  # key-only ssh across
    proc = docker(
        "exec", primary, "hvdat", "train", "--np", "2", "-H", "hva:1,hvb:1", "--ssh-port", "12345",
        "--ssh-identity-file", "/keys/id_ed25519", "--network-interfaces", "eth0", *TINY, "--out", "/runs/two",
        check=False, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    metrics = [json.loads(line) for line in (runs / "two" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["world_size"] == 2
    # The second rank really ran in hvb: its sshd accepted the primary's key.
    assert re.search(
        r"Accepted publickey for root from " + re.escape(f"{SUBNET}.1"), docker("logs", names["hvb"]).stderr
    )
