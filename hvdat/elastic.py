"""Elastic launch options (`--min-np/--max-np/--host-discovery-script`): validation and horovodrun arguments.

Pure like launch.py. Horovod elastic runs on Gloo only; it blacklists a failed worker's whole host, so on one
machine the discovery script lists distinct names for it (`localhost:1`, `127.0.0.1:1`, `$(hostname):1`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

from .errors import UsageError

ELASTIC_WORKER = "hvdat.elastic_worker"


def initial_np(spec) -> int:
    """Workers to start with: --np, raised to --min-np (the default --np 1 means 'as few as allowed')."""
    return max(spec.np, spec.min_np or 1)


def validate_elastic(spec) -> None:
    if spec.launcher != "gloo":
        raise UsageError("elastic training (--min-np/--max-np) runs on Gloo only", "drop --launcher mpi")
    if spec.min_np is None or spec.max_np is None:
        raise UsageError("elastic training needs both --min-np and --max-np")
    if not 1 <= spec.min_np <= spec.max_np:
        raise UsageError(f"need 1 <= --min-np <= --max-np, got {spec.min_np} and {spec.max_np}")
    if not spec.min_np <= initial_np(spec) <= spec.max_np:
        raise UsageError(f"--np {spec.np} is outside --min-np {spec.min_np} .. --max-np {spec.max_np}")
    script = spec.host_discovery_script
    if script is None:
        if not (spec.hosts or spec.hostfile):
            raise UsageError("elastic training needs --host-discovery-script (or a fixed -H/--hostfile)",
                             "write a script that prints the usable `host:slots`, one per line")
        return
    if spec.hosts or spec.hostfile:
        raise UsageError("give either --host-discovery-script or -H/--hostfile, not both")
    if not Path(script).is_file() or not os.access(script, os.X_OK):
        raise UsageError(f"--host-discovery-script {script} is not an executable file", f"chmod +x {script}")


def elastic_args(spec) -> List[str]:
    """horovodrun options for an elastic job (everything before --gloo)."""
    argv = ["-np", str(initial_np(spec)), "--min-np", str(spec.min_np), "--max-np", str(spec.max_np)]
    if spec.host_discovery_script:
        argv += ["--host-discovery-script", str(Path(spec.host_discovery_script).resolve())]
    elif spec.hostfile:
        argv += ["--hostfile", spec.hostfile]
    else:
        from .launch import slots_of

        argv += ["-H", ",".join(f"{h}:{s}" for h, s in slots_of(spec))]
    return argv
