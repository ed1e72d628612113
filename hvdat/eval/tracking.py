"""The launcher's view of an evaluation job, from its events: work done, the work left and the time to finish,
counting only this run's work (batches resumed from the state files cost nothing now). Pure: a clock is passed in.

Work is in gradient steps per example (hvdat.eval.plan.Plan.cost). The total starts as the most the evaluation can
take, every example attacked by every stage, and shrinks as examples are broken (their later stages drop out), so
the estimate of what is left is an upper bound that tightens as the evaluation goes."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional


class EvalTracker:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.total = self.done = self.resumed = 0.0
        self.started: Optional[float] = None

    def annotate(self, event: Dict[str, Any]) -> Dict[str, Any]:
        """The event with `done`, `total` and `eta_seconds` (None until a batch of this run has finished) added, as
        a new dict. Batches run in parallel on the ranks, so the rate is this run's work over its wall time."""
        kind = event.get("event")
        if kind == "start":
            self.total, self.done, self.resumed, self.started = event["work_total"], 0.0, 0.0, self.clock()
            return {**event, "done": 0.0, "total": self.total, "eta_seconds": None}
        if kind == "attacked" and self.started is not None:
            self.done += event["work"]
            self.total -= event["dropped"]
            self.resumed += event["work"] if event.get("resumed") else 0.0
            elapsed = self.clock() - self.started
            rate = (self.done - self.resumed) / elapsed if elapsed > 0 else 0.0
            eta = round(max(self.total - self.done, 0.0) / rate, 1) if rate > 0 else None
            return {**event, "done": round(self.done, 3), "total": round(self.total, 3), "eta_seconds": eta}
        return dict(event)
