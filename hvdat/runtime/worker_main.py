"""The shared `main()` of every worker module (training, elastic training, benchmarks, evaluation,
pseudo-labelling): parse `--config`, run, and on failure tell the launcher which rank failed and why, then exit 1."""

from __future__ import annotations

import argparse
import logging
import os
import traceback
from pathlib import Path
from typing import Callable, List, Optional

from .. import events
from ..errors import UsageError


def current_rank() -> int:
    return int(os.environ.get("HOROVOD_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))


def worker_main(
    run: Callable[[Path], None], prog: str, description: Optional[str], argv: Optional[List[str]] = None
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, type=Path, help="the job's config file, written by the CLI")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("HVDAT_LOG", "WARNING"), format="%(name)s: %(message)s")
    try:
        run(args.config)
    except UsageError as exc:  # found only where the data is (a folder's layout, image sizes): one line, exit 2
        events.emit("error", rank=current_rank(), message=str(exc), usage=True)
        return UsageError.exit_code
    except Exception as exc:  # the launcher names this rank and shows its last lines
        events.emit("error", rank=current_rank(), message=f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        return 1
    return 0
