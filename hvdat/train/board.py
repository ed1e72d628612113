"""TensorBoard scalars of a training run, from the job's events on the launcher side (the workers write nothing):

- `epoch/<key>` for each number of a metrics.jsonl entry (train_loss, train_acc, test_clean_acc, test_robust_acc,
  lr, images_per_sec, bytes_sent_per_step, compression_ratio, seconds, co_guard_acc, ...; a bool as 0/1), at the
  epoch's last optimiser step (the entry's `step`);
- `step/<field>` from each `batch` event, every ~0.5 s (loss, acc, images_per_sec, bytes_sent_per_step: rank 0's
  running means over the epoch so far), at the step it reports (hvdat.train.tracking);
- the run's configuration as text (`config`), and the collapse guard's attack switches (`co_guard`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from ..tb_events import TB_DIR, EventWriter
from .config import TrainConfig

STEP_FIELDS = ("loss", "acc", "images_per_sec", "bytes_sent_per_step")
NOT_SCALARS = frozenset({"event", "epoch", "step", "world_size", "global_batch", "eta_seconds", "steps_done"})


class TrainBoard:
    def __init__(self, run_dir: Path, config: TrainConfig):
        self.writer = EventWriter(Path(run_dir) / TB_DIR)
        self.config = config

    def handle(self, event: Dict[str, Any]) -> None:
        """An annotated event (with `step`, from TrainTracker)."""
        kind = event.get("event")
        if kind == "start":
            text = json.dumps(self.config.to_dict(), indent=2, sort_keys=True)
            self.writer.text("config", "\n".join("    " + line for line in text.splitlines()), event["step"])
        elif kind == "batch":
            for field in STEP_FIELDS:
                if field in event:
                    self.writer.scalar(f"step/{field}", event[field], event["step"])
        elif kind == "epoch":
            for key, value in event.items():
                if key not in NOT_SCALARS and isinstance(value, (int, float)):  # a bool is an int: 0/1
                    self.writer.scalar(f"epoch/{key}", value, event["step"])
            if event.get("co_guard_switched_to"):
                self.writer.text(
                    "co_guard", f"epoch {event['epoch']}: switched to {event['co_guard_switched_to']}", event["step"]
                )
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
