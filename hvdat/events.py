"""The worker-to-launcher channel: rank 0 prints tagged JSON lines, the launcher parses them from the job's
output stream (horovodrun prefixes each line with the rank). No files to poll, no extra ports."""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Dict, Optional, Tuple

TAG = "@@hvdat "
HEARTBEAT_SECONDS = 2.0  # each worker's `beat` event (hvdat.runtime.heartbeat); the launcher's --hang-timeout
HANG_TIMEOUT_LEAST = 3 * HEARTBEAT_SECONDS  # a shorter --hang-timeout would call a healthy rank hung
FAILURES_DIR = "hvdat-failures"  # beside a job's config: each failed rank's record, rank-R.json (launch.failure)
# gloo: "[0]<stdout>:text"; mpi --tag-output: "[1,0]<stdout>:text"; plain (np 1, no horovodrun): "text"
_PREFIX = re.compile(r"^\[(?:\d+,)?(\d+)\]<(stdout|stderr)>:?(.*)$")
# mpirun --tag-output cuts a line every 4096 bytes and tags each piece again, inside the line (an eval's result)
_MPI_TAG_INSIDE = re.compile(r"\[\d+,\d+\]<(?:stdout|stderr)>:")


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(TAG + json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def split_prefix(line: str) -> Tuple[Optional[int], str]:
    """(rank, text) for a line of horovodrun output; rank is None for lines horovodrun itself printed."""
    match = _PREFIX.match(line)
    if match:
        text = match.group(3)
        if line.startswith("[") and "," in line[: line.index("]")]:
            text = _MPI_TAG_INSIDE.sub("", text)
        return int(match.group(1)), text
    return None, line


def parse(text: str) -> Optional[Dict[str, Any]]:
    if not text.startswith(TAG):
        return None
    try:
        return json.loads(text[len(TAG) :])
    except json.JSONDecodeError:
        return None
