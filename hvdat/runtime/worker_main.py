"""The shared `main()` of every worker module (training, elastic training, benchmarks, evaluation,
pseudo-labelling): parse `--config`, run, and on failure tell the launcher which rank failed, where, when and why
(an `error` event, and the same as `hvdat-failures/rank-R.json` beside the config, where the output could be lost), then
exit 1. A rank killed by a signal writes nothing: the launcher reads its exit status."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Callable, List, Optional

from .. import events
from ..errors import UsageError
from .allocator import keep_freed_memory
from .heartbeat import Heartbeat


def current_rank() -> int:
    return int(os.environ.get("HOROVOD_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))


def failure_record(config: Path, rank: int, message: str, usage: bool = False) -> dict:
    """Emit this rank's failure as an event and write it beside the config (best effort: the disk may be full)."""
    record = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "message": message}
    if usage:
        record["usage"] = True
    events.emit("error", **record)
    with contextlib.suppress(OSError):
        folder = Path(config).parent / events.FAILURES_DIR
        folder.mkdir(exist_ok=True)
        (folder / f"rank-{rank}.json").write_text(json.dumps(record) + "\n")
    return record


def worker_main(
    run: Callable[[Path], None], prog: str, description: Optional[str], argv: Optional[List[str]] = None
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, type=Path, help="the job's config file, written by the CLI")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("HVDAT_LOG", "WARNING"), format="%(name)s: %(message)s")
    faulthandler.enable()  # a segfault or abort still prints where it happened; the exit status names the signal
    keep_freed_memory()  # tensors' memory stays in the heap from step to step (allocator.py)
    try:
        with Heartbeat():
            run(args.config)
    except UsageError as exc:  # found only where the data is (a folder's layout, image sizes): one line, exit 2
        failure_record(args.config, current_rank(), str(exc), usage=True)
        return UsageError.exit_code
    except Exception as exc:  # the launcher names this rank and shows its last lines
        failure_record(args.config, current_rank(), f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        return 1
    return 0
