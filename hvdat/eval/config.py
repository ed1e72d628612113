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
from ..errors import UsageError
from ..frozen_config import FrozenConfig
from ..options import ATTACK, DATA, DATA_DIR, NORM, OUTPUT, SEED, TENSORBOARD, THREADS, option

TARGET = "Model to evaluate"


def _attack_help() -> str:
    from .plan import EVAL_ATTACKS

    return "Evaluation attack: " + "; ".join(f"{n}: {EVAL_ATTACKS.get(n).doc}" for n in EVAL_ATTACKS.names())


def _eps(value: Any, values: Dict[str, Any]) -> Tuple[float, ...]:
    return parse_eps_list(value, values["norm"])


def _floats(value: Any, values: Dict[str, Any]) -> Optional[Tuple[float, ...]]:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in str(value).split(","))
    except ValueError:
        raise UsageError(f"invalid --mean/--std {value!r}", "give one number per channel: 0.485,0.456,0.406") from None


def _model_args(value: Any, values: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """KEY=VALUE,KEY=VALUE; each value a JSON literal (3, 0.5, true, "x") or else a string (none given: None, the
    field's default)."""
    if value is None:
        return None
    args: Dict[str, Any] = {}
    for item in filter(None, (str(value or "")).split(",")):
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"invalid --model-args item {item!r}", "write KEY=VALUE,KEY=VALUE, e.g. depth=28,width=10")
        try:
            args[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            args[key.strip()] = text
    return args


def _input_size(value: Any, values: Dict[str, Any]) -> Optional[Tuple[int, ...]]:
    """3x32x32 (channels x height x width), 32x32 or 32."""
    if value is None:
        return None
    try:
        parts = tuple(int(v) for v in str(value).lower().split("x"))
    except ValueError:
        parts = ()
    if not 1 <= len(parts) <= 3 or min(parts) < 1:
        raise UsageError(f"invalid --input-size {value!r}", "write CxHxW, HxW or a side, e.g. 3x32x32")
    return parts if len(parts) != 1 else (parts[0], parts[0])


@dataclass(frozen=True)
class EvalConfig(FrozenConfig):
    MISSING_HINT = "point at the work folder written by `hvdat eval`"

    checkpoint: str = ""  # resolved from the command's TARGET: the path or name of the model
    target_kind: str = option(
        "auto",
        "What TARGET is: auto, hvdat, torchscript, export, factory, torchvision, robustbench.",
        TARGET,
    )  # resolved: auto becomes the detected kind
    weights: Optional[str] = option(
        None, "A state-dict file for a factory or torchvision TARGET (local files only).", TARGET, cli_type=Path
    )
    model_args: Optional[Dict[str, Any]] = option(
        None,
        "Keyword arguments for a factory or torchvision TARGET: KEY=VALUE,KEY=VALUE.",
        TARGET,
        cli_type=str,
        parse=_model_args,
    )
    mean: Optional[Tuple[float, ...]] = option(
        None,
        "Wrap the model with (x - mean) / std, per channel: 0.4914,0.4822,0.4465.",
        TARGET,
        cli_type=str,
        parse=_floats,
    )
    std: Optional[Tuple[float, ...]] = option(None, "The std for --mean.", TARGET, cli_type=str, parse=_floats)
    num_classes: Optional[int] = option(None, "Classes the model outputs (default: read from its output).", TARGET)
    input_size: Optional[Tuple[int, ...]] = option(
        None,
        "Input the model expects, CxHxW (checked against the dataset's images).",
        TARGET,
        cli_type=str,
        parse=_input_size,
    )
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
    # also the unit of work; never chosen from --np, so results do not depend on it
    batch_size: Optional[int] = option(
        None,
        "Examples per attack batch: each stage's still-robust examples in blocks of this many, as the reference's "
        "bs (default: the model's size decides the largest batch, and each stage's examples are split into an even "
        "number of equal batches, never chosen from --np).",
        DATA,
    )  # resolved
    even_batches: bool = False  # resolved: no --batch-size given, so each phase is split evenly
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
    cwd: str = ""  # where hvdat ran: a factory's module is imported from here, as `python -m` would
    plan: Dict[str, Any] = field(default_factory=dict)  # the resolved Plan (hvdat.eval.plan), as a dict
    fingerprint: str = ""  # of what decides the results; a state file with another one is not resumed

    def compute_fingerprint(self) -> str:
        """What decides the results (not where they go, nor how many ranks compute them)."""
        keys = (
            "checkpoint",
            "target_kind",
            "weights",
            "model_args",
            "mean",
            "std",
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
            "even_batches",
            "seed",
        )
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        for path in (self.checkpoint, self.weights):
            stat = Path(path).stat() if path and Path(path).exists() else None
            blob += f"|{stat.st_size}|{stat.st_mtime_ns}" if stat else ""
        return hashlib.sha1(blob.encode()).hexdigest()[:16]
