"""The store of finished batches that makes an evaluation resumable."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Dict

from .. import __version__
from .cascade import BatchResult

STATE_DIR = "state"


class BatchStore:
    """Finished batches as JSON lines, one file per rank (`state/rank-R.jsonl`), headed by the fingerprint of the
    settings. Every rank reads every file it can see and the ranks pool what they found, so a resumed run may use
    another --np and needs no shared filesystem."""

    def __init__(self, work_dir: Path, fingerprint: str, rank: int):
        self.dir = Path(work_dir) / STATE_DIR
        self.fingerprint = fingerprint
        self.path = self.dir / f"rank-{rank}.jsonl"

    def load(self) -> Dict[str, BatchResult]:
        """Finished batches by key (hvdat.eval.batches.Batch.key)."""
        done: Dict[str, BatchResult] = {}
        for path in sorted(self.dir.glob("rank-*.jsonl")) if self.dir.is_dir() else []:
            lines = path.read_text().splitlines()
            if not lines or json.loads(lines[0]).get("fingerprint") != self.fingerprint:
                continue
            for line in lines[1:]:
                try:
                    result = BatchResult(**json.loads(line))
                except (json.JSONDecodeError, TypeError):  # a line cut short by a kill
                    continue
                done[result.key] = result
        return done

    def open(self) -> None:
        """Keep our file if it belongs to these settings; otherwise start it afresh."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            text = self.path.read_text()
            try:
                if json.loads(text.split("\n", 1)[0]).get("fingerprint") == self.fingerprint:
                    if not text.endswith("\n"):  # drop a last line cut short by a kill, or the next append joins it
                        self.path.write_text(text[: text.rfind("\n") + 1])
                    return
            except json.JSONDecodeError:
                pass
        self.path.write_text(json.dumps({"fingerprint": self.fingerprint, "hvdat_version": __version__}) + "\n")

    def append(self, result: BatchResult) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(dataclasses.asdict(result)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
