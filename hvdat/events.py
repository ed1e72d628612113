"""The worker-to-launcher channel: rank 0 prints tagged JSON lines, the launcher parses them from the job's
output stream (horovodrun prefixes each line with the rank). No files to poll, no extra ports."""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

TAG = "@@hvdat "
HEARTBEAT_SECONDS = 2.0  # each worker's `beat` event (hvdat.runtime.heartbeat); the launcher's --hang-timeout
HANG_TIMEOUT_LEAST = 3 * HEARTBEAT_SECONDS  # a shorter --hang-timeout would call a healthy rank hung
FAILURES_DIR = "hvdat-failures"  # beside a job's config: each failed rank's record, rank-R.json (launch.failure)
# gloo: "[0]<stdout>:text"; mpi --tag-output: "[1,0]<stdout>:text"; plain (np 1, no horovodrun): "text"
_PREFIX = re.compile(r"^\[(?:\d+,)?(\d+)\]<(stdout|stderr)>:?(.*)$")
# mpirun --tag-output's tag, also inside a line: see `Lines`
_MPI_TAG = re.compile(r"\[\d+,(\d+)\]<(stdout|stderr)>:")


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(TAG + json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def split_prefix(line: str) -> Tuple[Optional[int], str]:
    """(rank, text) for a line of horovodrun output; rank is None for lines horovodrun itself printed."""
    match = _PREFIX.match(line)
    if match:
        return int(match.group(1)), match.group(3)
    return None, line


class Lines:
    """The ranks' whole lines, from the job's output stream one physical line at a time (`feed`).

    mpirun --tag-output passes a rank's output on as it reads it: a line longer than its 4096-byte reads (an eval's
    result event) comes in tagged pieces, and another rank's output can come between them, inside the same physical
    line (`[1,0]<stdout>:PIECE[1,1]<stdout>:LINE`) or before the rest of the piece on a later one (every rank's
    heartbeat makes this common). A piece that another tag cuts off is held for its rank and stream until that line
    ends. horovodrun's Gloo output (`[0]<stdout>:line`) and plain lines are whole already."""

    def __init__(self) -> None:
        self._pending: Dict[Tuple[int, str], str] = {}
        self.held = 0  # pieces the last physical line gave that wait for the rest of their line

    def feed(self, line: str) -> List[Tuple[Optional[int], str]]:
        """The (rank, text) lines this physical line ends (its last piece ends one; a piece cut off by another tag
        is held, `held` says how many)."""
        line = line.rstrip("\n")
        tags = list(_MPI_TAG.finditer(line))
        if not tags or tags[0].start() != 0:
            self.held = 0
            return [split_prefix(line)]
        ended, self.held = [], len(tags) - 1
        for i, tag in enumerate(tags):
            key = (int(tag.group(1)), tag.group(2))
            last = i + 1 == len(tags)
            text = self._pending.pop(key, "") + line[tag.end() : len(line) if last else tags[i + 1].start()]
            if last:
                ended.append((key[0], text))
            else:
                self._pending[key] = text
        return ended


def parse(text: str) -> Optional[Dict[str, Any]]:
    if not text.startswith(TAG):
        return None
    try:
        return json.loads(text[len(TAG) :])
    except json.JSONDecodeError:
        return None
