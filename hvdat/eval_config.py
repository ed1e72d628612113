"""The frozen evaluation configuration: the contract from `hvdat eval` to its workers, saved next to the report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple


@dataclass(frozen=True)
class EvalConfig:
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

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def compute_fingerprint(self) -> str:
        """What decides the results (not where they go, nor how many ranks compute them)."""
        keys = ("checkpoint", "dataset", "data_dir", "attack", "version", "eps", "norm", "steps", "restarts",
                "n_examples", "batch_size", "seed")
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        stat = Path(self.checkpoint).stat() if Path(self.checkpoint).exists() else None
        blob += f"|{stat.st_size}|{stat.st_mtime_ns}" if stat else ""
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "EvalConfig":
        values = json.loads(Path(path).read_text())
        values["eps"] = tuple(values["eps"])
        return cls(**values)
