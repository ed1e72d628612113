"""Checkpoints: written atomically (temp file + rename), read with `torch.load(weights_only=True)`.

Rank 0 writes the run's checkpoint (`last.pt`, `best.pt`): what every rank shares. What is a rank's own (a stateful
compressor's residuals or RNG, BatchNorm statistics mid-epoch) each rank writes beside it, `rank-state/rank-R.pt`,
so nothing is gathered to every rank and the checkpoint does not grow with the world size. `last.pt` names how many
shards belong to it (`rank_shards`) and each shard carries the step it was written at.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..errors import UsageError

LAST, BEST = "last.pt", "best.pt"
RANK_STATE_DIR = "rank-state"


def save_atomic(state: Dict[str, Any], path: Path) -> None:
    """Write next to the target and rename: a crash mid-write leaves the previous file intact. A full disk is
    said as such (torch's writer reports only "file write failed")."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        if getattr(exc, "errno", None) != errno.ENOSPC and shutil.disk_usage(path.parent).free >= 1 << 20:
            raise
        raise OSError(errno.ENOSPC, f"No space left on device writing {path} (any previous one is intact)") from exc
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


def rank_state_path(out: Path, rank: int) -> Path:
    return Path(out) / RANK_STATE_DIR / f"rank-{rank}.pt"


def save_rank_state(out: Path, rank: int, state: Dict[str, Any]) -> None:
    path = rank_state_path(out, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(state, path)


def load_rank_state(out: Path, rank: int, step: int) -> Dict[str, Any]:
    """Rank `rank`'s shard of the checkpoint written at `step` (one clear line when it is missing or stale)."""
    path = rank_state_path(out, rank)
    hint = (f"resume on the hosts (and ranks) that wrote {RANK_STATE_DIR}/, or delete {Path(out) / RANK_STATE_DIR} to "
            "resume without each rank's compressor state (not an exact resume)")  # fmt: skip
    if not path.is_file():
        raise UsageError(f"no {path} here for rank {rank}", hint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"{path} is not loadable ({type(exc).__name__})", hint) from None
    if state.get("step") != step:
        raise UsageError(f"{path} is from step {state.get('step')} but {LAST} from step {step} (a kill during the "
                         "checkpoint?)", hint)  # fmt: skip
    return state


def load_rank_states(out: Path, shards: int, step: int) -> List[Dict[str, Any]]:
    """Every rank's shard (a resume with another world size needs them all: a shared filesystem, or copies)."""
    return [load_rank_state(out, rank, step) for rank in range(shards)]
