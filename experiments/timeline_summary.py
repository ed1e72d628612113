"""Summarise a Horovod timeline (`hvdat train --timeline-filename T.json`) per group of tensors: how many collectives
ran and the bytes they returned, and the wall-clock time (the union of their intervals, so overlapping tensors count
once) that the group spent waiting in negotiation for the last rank to submit its tensor, being processed by Horovod
after negotiation, and inside the transport itself (GLOO_*/MPI_*/NCCL_* activities).

    python experiments/timeline_summary.py T.json [--json]

Groups: the packed compressor payloads (`allgather.hvdat.packed.*`, one per parameter tensor and step), the
per-step stop check (`allreduce.hvdat.stop`), the per-epoch BN statistics and metrics, and the start-up broadcasts.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Tuple

DTYPE_BYTES = {"uint8": 1, "int8": 1, "float16": 2, "bfloat16": 2, "float32": 4, "int32": 4, "float64": 8, "int64": 8}
GROUPS = (
    ("packed allgathers (hvdat.packed.*)", re.compile(r"^allgather\.hvdat\.packed\.")),
    ("stop check (hvdat.stop)", re.compile(r"^allreduce\.hvdat\.stop")),
    ("per-epoch allreduces (BN buffers, metrics)", re.compile(r"^allreduce\.")),
    ("broadcasts (start-up)", re.compile(r"^broadcast\.")),
    ("other", re.compile(r"")),
)
Interval = Tuple[int, int]


def group_of(tensor: str) -> str:
    return next(name for name, pattern in GROUPS if pattern.search(tensor))


def union_us(intervals: List[Interval]) -> int:
    total, end = 0, None
    for lo, hi in sorted(intervals):
        if end is None or lo > end:
            total, end = total + hi - lo, hi
        elif hi > end:
            total, end = total + hi - end, hi
    return total


def summarise(trace: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    names = {e["pid"]: e["args"]["name"] for e in trace if e.get("name") == "process_name" and "name" in e["args"]}
    stacks: Dict[int, List[Dict[str, Any]]] = defaultdict(list)
    ready: Dict[int, List[int]] = {}  # pid -> when each rank said it was ready (during negotiation)
    spans: Dict[str, Dict[str, List[Interval]]] = defaultdict(lambda: defaultdict(list))
    counts: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in trace:
        pid, phase = event.get("pid"), event.get("ph")
        if pid not in names:
            continue
        group = group_of(names[pid])
        if phase == "B" and event["name"].startswith("NEGOTIATE_"):
            ready[pid] = []
        elif phase == "X" and pid in ready:
            ready[pid].append(event["ts"])
        elif phase == "E" and pid in ready and not stacks[pid]:
            times = ready.pop(pid)
            if times:
                spans[group]["wait"].append((min(times), max(times)))
        elif phase == "B":
            stacks[pid].append(event)
        elif phase == "E" and stacks[pid]:
            begin = stacks[pid].pop()
            if not stacks[pid]:  # the collective itself (ALLGATHER, ALLREDUCE, ...)
                spans[group]["op"].append((begin["ts"], event["ts"]))
                counts[group]["ops"] += 1
                args = event.get("args") or {}
                if "shape" in args:
                    elements = 1
                    for size in json.loads(args["shape"]):
                        elements *= size
                    counts[group]["bytes"] += elements * DTYPE_BYTES.get(args.get("dtype", ""), 4)
            elif re.match(r"^(GLOO|MPI|NCCL)_", begin["name"]):
                spans[group]["transport"].append((begin["ts"], event["ts"]))
    return {
        group: {
            **counts[group],
            **{f"{kind}_ms": union_us(spans[group][kind]) / 1e3 for kind in ("wait", "op", "transport")},
        }
        for group in counts
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("timeline")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    stats = summarise(json.loads(Path(args.timeline).read_text()))
    if args.json:
        print(json.dumps(stats, indent=1))
        return
    print(f"{'group':44} {'ops':>5} {'MB':>7} {'wait ms':>9} {'op ms':>8} {'transport ms':>13}")
    for name, _ in GROUPS:
        row = stats.get(name)
        if row:
            print(
                f"{name:44} {row['ops']:5.0f} {row.get('bytes', 0) / 1e6:7.3f} {row['wait_ms']:9.1f} "
                f"{row['op_ms']:8.1f} {row['transport_ms']:13.1f}"
            )


if __name__ == "__main__":
    main()
