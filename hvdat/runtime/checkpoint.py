"""Checkpoints: written atomically (temp file + rename), read with `torch.load(weights_only=True)`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..errors import UsageError

LAST, BEST = "last.pt", "best.pt"


def save_atomic(state: Dict[str, Any], path: Path) -> None:
    """Write next to the target and rename: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path, arch: Optional[str] = None) -> Dict[str, Any]:
    """Load a checkpoint made by hvdat; `arch` (when given) must match the one it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}", "train first, or point at a run directory with last.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(
            f"{path} is not a loadable hvdat checkpoint ({type(exc).__name__})",
            "it may be truncated or from another tool",
        ) from None
    if not isinstance(state, dict) or "model" not in state or "arch" not in state:
        raise UsageError(f"{path} is not an hvdat checkpoint", "expected a file written by `hvdat train`")
    if arch is not None and state["arch"] != arch:
        raise UsageError(
            f"checkpoint {path} holds arch {state['arch']!r}, not {arch!r}",
            f"pass --arch {state['arch']} or start a fresh --out directory",
        )
    return state
