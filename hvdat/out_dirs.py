"""Output folders the user names (`--out`): created up front, before any work, or one clear line saying why not."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError


def make_dir(path: Path, option: str = "--out") -> Path:
    """mkdir -p `path`; a file in the way, a missing permission or a read-only place is the user's to fix."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{option} {path} is a file, not a folder", f"choose another {option}") from None
    except OSError as exc:
        raise UsageError(
            f"cannot create the folder {path} for {option}: {exc.strerror or exc}", f"choose another {option}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {path} ({option}): permission denied", f"choose another {option}")
    return path


def file_target(path: Path, option: str = "--out") -> Path:
    """A file the command will write at the end: its folder is made now, and it must not be a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; it names the file to write", f"e.g. {option} {path}/out.json")
    make_dir(path.parent, option)
    return path
