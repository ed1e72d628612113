"""The work queue of an evaluation phase: its batches handed out one at a time, first come first served."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Generic, Iterator, Optional, Sequence, TypeVar

QUEUE_DIR = "queue"
T = TypeVar("T")


class WorkQueue(Generic[T]):
    """A counter in a file that every rank increments under an exclusive lock (fcntl.flock), so a slow rank or host
    takes fewer batches instead of holding the rest. The file's name is fresh for each phase of each run (a nonce
    from rank 0), so a killed run's counter is never reused; the work to do is the same list on every rank."""

    def __init__(self, work_dir: Path, nonce: str, todo: Sequence[T]):
        self.path = Path(work_dir) / QUEUE_DIR / f"{nonce}.counter"
        self.todo = list(todo)

    @staticmethod
    def create(work_dir: Path, nonce: str) -> None:
        """Rank 0, before the others look: clear old counters and start this one at 0."""
        folder = Path(work_dir) / QUEUE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.counter"):
            old.unlink(missing_ok=True)
        (folder / f"{nonce}.counter").write_text("0")

    def visible(self) -> bool:
        return self.path.is_file()

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self.take()
            if item is None:
                return
            yield item

    def take(self) -> Optional[T]:
        import fcntl

        with open(self.path, "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            taken = int(handle.read().strip() or 0)
            if taken >= len(self.todo):
                return None
            handle.seek(0)
            handle.write(str(taken + 1))
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
        return self.todo[taken]
