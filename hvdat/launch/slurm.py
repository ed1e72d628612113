"""Hosts and slots from a Slurm allocation, read from the variables Slurm sets in a job (`sbatch`, `salloc`).

Pure: parses strings and an environment mapping, runs nothing (no `scontrol`). Node lists are expanded as
`scontrol show hostnames` expands them (`gpu[01-03,07],cpu5`: ranges keep their zero padding, several bracket
groups in one name make every combination), tasks per node as Slurm writes them (`2(x3),1`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple

from ..errors import UsageError
from .spec import LaunchSpec

NODELIST = "SLURM_JOB_NODELIST"
TASKS_PER_NODE = "SLURM_TASKS_PER_NODE"
GPUS_PER_NODE = "SLURM_GPUS_PER_NODE"
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_COUNT = re.compile(r"(\d+)(?:\(x(\d+)\))?")


def expand_nodelist(text: str) -> List[str]:
    """`gpu[01-03,07],cpu5` -> gpu01 gpu02 gpu03 gpu07 cpu5, in Slurm's order (duplicates kept, as scontrol does)."""
    names: List[str] = []
    for item in _split_top_level(text.strip(), text):
        names += _expand_name(item, text)
    if not names:
        raise UsageError(f"no nodes in the Slurm node list {text!r}")
    return names


def _split_top_level(text: str, whole: str) -> List[str]:
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if depth not in (0, 1):
            raise UsageError(f"unbalanced brackets in the Slurm node list {whole!r}")
        if char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    if depth:
        raise UsageError(f"unbalanced brackets in the Slurm node list {whole!r}")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _expand_name(item: str, whole: str) -> List[str]:
    """One name with zero or more bracket groups: every combination, the last group varying fastest."""
    open_at = item.find("[")
    if open_at < 0:
        return [item]
    close_at = item.index("]", open_at)
    prefix, ranges, rest = item[:open_at], item[open_at + 1 : close_at], item[close_at + 1 :]
    tails = _expand_name(rest, whole)
    return [prefix + number + tail for number in _expand_ranges(ranges, whole) for tail in tails]


def _expand_ranges(ranges: str, whole: str) -> List[str]:
    numbers: List[str] = []
    for part in ranges.split(","):
        match = _RANGE.fullmatch(part.strip())
        if not match:
            raise UsageError(f"cannot read the range {part!r} in the Slurm node list {whole!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise UsageError(f"descending range {part!r} in the Slurm node list {whole!r}")
        numbers += [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
    return numbers


def expand_counts(text: str) -> List[int]:
    """Slurm's compressed per-node counts: `2(x3),1` -> [2, 2, 2, 1]."""
    counts: List[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _COUNT.fullmatch(part)
        if not match:
            raise UsageError(f"cannot read the Slurm per-node count {part!r} in {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def gpu_count(text: str) -> int:
    """`--gpus-per-node` as Slurm passes it on: `4`, `a100:4` or `gpu:a100:4` (several types add up)."""
    total = 0
    for part in filter(None, (p.strip() for p in text.split(","))):
        number = part.rsplit(":", 1)[-1]
        if not number.isdigit():
            raise UsageError(f"cannot read {GPUS_PER_NODE}={text!r}")
        total += int(number)
    return total


@dataclass(frozen=True)
class Allocation:
    """The nodes of a Slurm job and the workers each takes: its GPUs per node when the job asked for GPUs (one
    worker per GPU), else its tasks per node."""

    hosts: Tuple[Tuple[str, int], ...]
    per: str  # "GPUs" or "tasks": what the slots count

    @property
    def slots(self) -> int:
        return sum(slots for _, slots in self.hosts)

    def describe(self, env: Mapping[str, str]) -> str:
        listed = ",".join(f"{host}:{slots}" for host, slots in self.hosts)
        return f"hosts from Slurm ({NODELIST}={env[NODELIST]}, {self.per} per node): {listed}"


def allocation(env: Mapping[str, str]) -> Optional[Allocation]:
    """The allocation this process runs in, or None outside Slurm."""
    if not env.get(NODELIST):
        return None
    nodes = expand_nodelist(env[NODELIST])
    gpus = env.get(GPUS_PER_NODE, "").strip()
    if gpus and gpu_count(gpus) > 0:
        return Allocation(tuple((node, gpu_count(gpus)) for node in nodes), "GPUs")
    counts = expand_counts(env.get(TASKS_PER_NODE, "") or "1")
    if len(counts) != len(nodes):
        raise UsageError(
            f"{TASKS_PER_NODE}={env.get(TASKS_PER_NODE)!r} does not give one count per node of {NODELIST}="
            f"{env[NODELIST]!r}",
            "pass the hosts yourself with -H host:slots,...",
        )
    return Allocation(tuple(zip(nodes, counts)), "tasks")


def within_allocation(
    spec: LaunchSpec, env: Mapping[str, str], np_given: bool
) -> Tuple[LaunchSpec, Optional[Allocation]]:
    """`spec` with its hosts from the Slurm allocation when it names none (no -H, --hostfile or discovery script),
    and --np, unless given, as every slot. One node is a local run (no ssh): `localhost`, as without Slurm."""
    if spec.hosts or spec.hostfile or spec.host_discovery_script:
        return spec, None
    found = allocation(env)
    if found is None:
        return spec, None
    np = spec.np if np_given else found.slots
    if np > found.slots:
        raise UsageError(
            f"--np {np} is more than the {found.slots} slots of this Slurm allocation ({found.per} per node)",
            "lower --np, or ask Slurm for more (--nodes, --ntasks-per-node, --gpus-per-node)",
        )
    if len(found.hosts) == 1 and not spec.elastic:
        return dataclasses.replace(spec, np=np), found  # as without Slurm: this machine, no horovodrun for one
    if len(found.hosts) == 1:
        return dataclasses.replace(spec, np=np, hosts=f"localhost:{found.slots}"), found
    return dataclasses.replace(spec, np=np, hosts=",".join(f"{h}:{s}" for h, s in found.hosts)), found
