"""What one host can run: its Python, hvdat, the Horovod build, MPI, torch, GPUs and /dev/shm, as one JSON-able dict.

`hvdat doctor` calls `gather()` in-process for this machine, and sends this file's source over ssh to `PYTHON -` on
every remote host (PYTHON: the interpreter doctor itself runs on, the one horovodrun starts the workers with there),
which prints the same dict as its last line, after `MARK`. So this module must stay a self-contained script: the
standard library only at import time (horovod and torch are imported inside the functions, and may be missing),
no hvdat import, no relative import.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

MARK = "@@hvdat-facts "


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def find_horovodrun() -> Optional[str]:
    """As hvdat.launch.argv.find_horovodrun: the one beside python (a venv's, even when not activated), else PATH."""
    beside = Path(sys.executable).parent / "horovodrun"
    return str(beside) if beside.exists() else shutil.which("horovodrun")


def horovod_build() -> Dict[str, Any]:
    """What `horovodrun --check-build` prints, read from the library itself."""
    try:
        import horovod
        import horovod.torch as hvd
    except Exception as exc:  # not installed, or built against another torch
        return {"installed": False, "error": _error(exc)}
    return {
        "installed": True,
        "version": horovod.__version__,
        "horovodrun": find_horovodrun(),
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
    """`mpirun` on this PATH (on a remote host: the PATH of a non-interactive ssh login, which mpirun's orted gets)."""
    mpirun = shutil.which("mpirun")
    version = ""
    if mpirun:
        try:
            proc = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=10)
            lines = (proc.stdout or proc.stderr).strip().splitlines()
            version = lines[0] if lines else ""
        except (OSError, subprocess.TimeoutExpired) as exc:
            version = f"unusable: {exc}"
    return {"mpirun": mpirun, "version": version}


def torch_info() -> Dict[str, Any]:
    try:
        import torch
    except Exception as exc:
        return {"installed": False, "error": _error(exc), "version": None, "cuda": None, "cuda_available": False}
    cuda = torch.cuda.is_available()
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if cuda else None
    return {
        "installed": True,
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": cuda,
        "nccl": nccl,
    }


def gpus() -> List[str]:
    try:
        import torch
    except Exception:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def shm_free() -> Optional[int]:
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return None


def hvdat_info() -> Dict[str, Any]:
    """Whether this interpreter can import hvdat (the workers are `python -m hvdat.<job>.worker`), without importing
    it: where from."""
    try:
        spec = importlib.util.find_spec("hvdat")
    except Exception as exc:
        return {"importable": False, "path": None, "error": _error(exc)}
    if spec is None:
        return {"importable": False, "path": None, "error": "No module named 'hvdat'"}
    path = str(Path(spec.origin).parent) if spec.origin else None
    return {"importable": True, "path": path, "error": ""}


def gather() -> Dict[str, Any]:
    return {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "hostname": platform.node(),
        "hvdat": hvdat_info(),
        "horovod": horovod_build(),
        "mpi": mpi_runtime(),
        "torch": torch_info(),
        "gpus": gpus(),
        "shm_free_bytes": shm_free(),
    }


def parse(stdout: str) -> Optional[Dict[str, Any]]:
    """The facts from what `python -` printed on a remote host (its last MARK line; anything else is ignored)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):
            try:
                return json.loads(line[len(MARK) :])
            except ValueError:
                return None
    return None


if __name__ == "__main__":
    print(MARK + json.dumps(gather()), flush=True)
