"""The launcher's view of a training job, from the events rank 0 prints: the optimiser step each `batch` event stands
for, how much of this run's work is done, and the time to finish. Pure (a clock is passed in): no torch, no job.

The time to finish counts only what this run still has to do, at the rate this run trains: the remaining steps times
this epoch's seconds per step (the `batch` event's images/s, which counts only images trained since this run
started), plus, for each epoch still to end, the time this run's epochs spent after their last step (the
per-epoch test, the collapse guard, the checkpoint), measured between the last `batch` event and the `epoch`
event. Before the first epoch ends that part is unknown and counted as 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional


@dataclass(frozen=True)
class Anchor:
    """A known point of the run: batch `batch` of epoch `epoch` (0-based) ends optimiser step `step`."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


class TrainTracker:
    def __init__(self, anchor: Anchor = Anchor(), clock: Callable[[], float] = time.monotonic):
        self.anchor, self.clock = anchor, clock
        self.epochs = self.steps_per_epoch = self.global_batch = self.world_size = 0
        self.start_step = anchor.step
        self.overheads: List[float] = []  # seconds each epoch of this run spent after its last step
        self.last_step_at: Optional[float] = None  # when the current epoch's last batch was reported

    def annotate(self, event: Dict[str, Any]) -> Dict[str, Any]:
        """The event with what the launcher knows added: `step`, `steps_done`/`steps_total` (this run's) and
        `eta_seconds` (None while unknown). A new dict: the event itself is left as the job printed it."""
        kind = event.get("event")
        if kind == "start":
            return self._start(event)
        if kind == "batch" and self.steps_per_epoch:
            return self._batch(event)
        if kind == "epoch" and self.steps_per_epoch:
            return self._epoch(event)
        if kind == "reset" and self.steps_per_epoch:  # elastic: another world size, so another epoch length
            per_worker = self.global_batch // max(self.world_size, 1)
            self.steps_per_epoch = max(1, self.steps_per_epoch * self.world_size // max(event["world_size"], 1))
            self.world_size, self.global_batch = event["world_size"], per_worker * event["world_size"]
        return dict(event)

    def _start(self, event: Dict[str, Any]) -> Dict[str, Any]:
        self.epochs, self.steps_per_epoch = event["epochs"], event["steps_per_epoch"]
        self.global_batch, self.world_size = event["global_batch"], event["world_size"]
        if self.anchor.epoch != event["start_epoch"]:  # no checkpoint to say otherwise: whole epochs of this length
            self.anchor = Anchor(event["start_epoch"], 0, event["start_epoch"] * self.steps_per_epoch)
        self.start_step = self.anchor.step
        total = (self.epochs - self.anchor.epoch) * self.steps_per_epoch - self.anchor.batch
        return {**event, "step": self.start_step, "steps_done": 0, "steps_total": total, "eta_seconds": None}

    def _step_of(self, epoch: int, batch: int) -> int:
        anchor = self.anchor
        return anchor.step + (epoch - anchor.epoch) * self.steps_per_epoch + batch - anchor.batch

    def _eta(self, epoch: int, batch: int, images_per_sec: float) -> Optional[float]:
        """Seconds until the last epoch ends, from batch `batch` of `epoch` (0-based)."""
        if not images_per_sec > 0:
            return None
        remaining_steps = (self.epochs - epoch) * self.steps_per_epoch - batch
        overhead = sum(self.overheads) / len(self.overheads) if self.overheads else 0.0
        seconds = remaining_steps * self.global_batch / images_per_sec + (self.epochs - epoch) * overhead
        return round(max(seconds, 0.0), 1)

    def _batch(self, event: Dict[str, Any]) -> Dict[str, Any]:
        epoch, batch = event["epoch"], event["batch"]
        step = self._step_of(epoch, batch)
        if batch >= event.get("batches", self.steps_per_epoch):
            self.last_step_at = self.clock()
        return {
            **event,
            "step": step,
            "steps_done": step - self.start_step,
            "eta_seconds": self._eta(epoch, batch, event.get("images_per_sec", 0.0)),
        }

    def _epoch(self, event: Dict[str, Any]) -> Dict[str, Any]:
        now = self.clock()
        if self.last_step_at is not None:
            self.overheads.append(now - self.last_step_at)
        elif "train_seconds" in event:
            self.overheads.append(max(event["seconds"] - event["train_seconds"], 0.0))
        self.last_step_at = None
        done = event["epoch"]  # 1-based: epochs finished
        self.anchor = Anchor(done, 0, event.get("step", self._step_of(done, 0)))
        eta = 0.0 if done >= self.epochs else self._eta(done, 0, event.get("images_per_sec", 0.0))
        return {**event, "steps_done": self.anchor.step - self.start_step, "eta_seconds": eta}
