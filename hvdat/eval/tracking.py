"""The launcher's view of an evaluation job, from its events: examples done and the time to finish, counting only
this run's work (examples resumed from the state files cost nothing now). Pure: a clock is passed in."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional


class EvalTracker:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.total = self.resumed = self.done = 0
        self.started: Optional[float] = None

    def annotate(self, event: Dict[str, Any]) -> Dict[str, Any]:
        """The event with `done`, `total` and `eta_seconds` (None until a chunk of this run has finished) added,
        as a new dict. Chunks run in parallel on the ranks, so the rate is this run's examples over its wall time."""
        kind = event.get("event")
        if kind == "start":
            self.total, self.resumed = event["n_examples"], event["resumed_examples"]
            self.done, self.started = self.resumed, self.clock()
            return {**event, "done": self.done, "total": self.total, "eta_seconds": None}
        if kind == "chunk" and self.started is not None:
            self.done += event["examples"]
            elapsed = self.clock() - self.started
            rate = (self.done - self.resumed) / elapsed if elapsed > 0 else 0.0
            eta = round((self.total - self.done) / rate, 1) if rate > 0 else None
            return {**event, "done": self.done, "total": self.total, "eta_seconds": eta}
        return dict(event)
