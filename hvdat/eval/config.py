"""The frozen evaluation configuration: the contract from `hvdat eval` to its workers, saved in its work folder.

Its command-line options are declared here once; `prepare` (hvdat.eval.run) resolves the rest (the checkpoint,
the default report path, the plan) before anything is launched, and the workers read the resolved plan from here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..attacks.budget import parse_eps_list
from ..frozen_config import FrozenConfig
from ..options import ATTACK, DATA, DATA_DIR, NORM, OUTPUT, SEED, TENSORBOARD, THREADS, option


def _attack_help() -> str:
    from .plan import EVAL_ATTACKS

    return "Evaluation attack: " + "; ".join(f"{n}: {EVAL_ATTACKS.get(n).doc}" for n in EVAL_ATTACKS.names())


def _eps(value: Any, values: Dict[str, Any]) -> Tuple[float, ...]:
    return parse_eps_list(value, values["norm"])


@dataclass(frozen=True)
class EvalConfig(FrozenConfig):
    MISSING_HINT = "point at the work folder written by `hvdat eval`"

    checkpoint: str = ""  # resolved from the command's TARGET
    attack: str = option("autoattack", _attack_help, ATTACK)
    version: str = option("standard", "AutoAttack version: standard, plus or rand.", ATTACK)
    eps: Tuple[float, ...] = option(
        (8 / 255,),
        "Budget in [0,1] pixels: 8/255, or a sweep 1/255,2/255,4/255,8/255.",
        ATTACK,
        cli_type=str,
        parse=_eps,
        cli_default="8/255",
    )
    norm: str = option("linf", NORM, help="Threat model: linf, l2 or l1.")
    steps: Optional[int] = option(
        None, "Iterations (default: the attack's reference value; any change is reported).", ATTACK
    )  # None: the attack's reference default
    restarts: Optional[int] = option(None, "Restarts (default: the reference value).", ATTACK)
    n_examples: Optional[int] = option(
        None, "Evaluate the first N test images (default: 1000, or all if fewer).", DATA
    )  # resolved: the first n of the test split
    # also the unit of work: fixed chunks, so results do not depend on --np
    batch_size: int = option(50, "Examples per chunk; chunks are the unit of work and of reproducibility.", DATA)
    dataset: Optional[str] = option(None, "Dataset (default: the run's own).", DATA)  # resolved
    data_dir: Optional[str] = option(None, DATA_DIR, cli_type=Path)
    threads: int = option(0, THREADS)  # torch threads per worker; 0: cores / local ranks
    seed: int = option(0, SEED)
    out: Optional[str] = option(
        None, "The JSON report (default: RUN/eval/ATTACK-NORM.json).", OUTPUT, flags=("--out",), cli_type=Path
    )  # resolved; working files go to work_dir
    tensorboard: bool = option(
        True, TENSORBOARD, help="Add the accuracies to the run's TensorBoard events (RUN/tb/), when TARGET is a run's."
    )
    work_dir: str = "eval.work"
    checkpoint_step: int = 0  # resolved: the optimiser step of the checkpoint (the x of its TensorBoard points)
    np: int = 1  # for the record
    plan: Dict[str, Any] = field(default_factory=dict)  # the resolved Plan (hvdat.eval.plan), as a dict
    fingerprint: str = ""  # of what decides the results; a state file with another one is not resumed

    def compute_fingerprint(self) -> str:
        """What decides the results (not where they go, nor how many ranks compute them)."""
        keys = (
            "checkpoint",
            "dataset",
            "data_dir",
            "attack",
            "version",
            "eps",
            "norm",
            "steps",
            "restarts",
            "n_examples",
            "batch_size",
            "seed",
        )
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        stat = Path(self.checkpoint).stat() if Path(self.checkpoint).exists() else None
        blob += f"|{stat.st_size}|{stat.st_mtime_ns}" if stat else ""
        return hashlib.sha1(blob.encode()).hexdigest()[:16]
