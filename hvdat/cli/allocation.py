"""The hosts that `hvdat train` / `hvdat eval` take from the Slurm allocation they run in, said on stderr."""

from __future__ import annotations

import os

from ..launch import LaunchSpec
from ..launch.slurm import within_allocation
from .app import err
from .options import given


def slurm_hosts(spec: LaunchSpec) -> LaunchSpec:
    """Inside a Slurm job and without -H/--hostfile: the allocation's hosts and slots (and --np, unless given), said
    on stderr."""
    np_given = "np" in given(LaunchSpec) or "HVDAT_NP" in os.environ
    spec, found = within_allocation(spec, os.environ, np_given)
    if found is not None:
        err.print(f"[dim]{found.describe(os.environ)}; --np {spec.np}[/]", highlight=False, soft_wrap=True)
    return spec
