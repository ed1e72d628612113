"""The frozen evaluation configuration: the contract from `hvdat eval` to its workers, saved next to the report."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from .frozen_config import FrozenConfig


@dataclass(frozen=True)
class EvalConfig(FrozenConfig):
    MISSING_HINT = "point at the work folder written by `hvdat eval`"

    checkpoint: str
    dataset: str
    data_dir: Optional[str]
    attack: str = "autoattack"
    version: str = "standard"
    eps: Tuple[float, ...] = (8 / 255,)
    norm: str = "linf"
    steps: Optional[int] = None  # None: the attack's reference default
    restarts: Optional[int] = None
    n_examples: int = 1000  # the first n of the test split
    batch_size: int = 50  # also the unit of work: fixed chunks, so results do not depend on --np
    seed: int = 0
    threads: int = 0  # torch threads per worker; 0: cores / local ranks
    out: str = "eval.json"  # the report; working files go to work_dir
    work_dir: str = "eval.work"
    np: int = 1  # for the record
    fingerprint: str = ""  # of what decides the results; a state file with another one is not resumed

    def compute_fingerprint(self) -> str:
        """What decides the results (not where they go, nor how many ranks compute them)."""
        keys = ("checkpoint", "dataset", "data_dir", "attack", "version", "eps", "norm", "steps", "restarts",
                "n_examples", "batch_size", "seed")
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        stat = Path(self.checkpoint).stat() if Path(self.checkpoint).exists() else None
        blob += f"|{stat.st_size}|{stat.st_mtime_ns}" if stat else ""
        return hashlib.sha1(blob.encode()).hexdigest()[:16]
