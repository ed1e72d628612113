"""Where a run is: epoch, batch within it, optimiser steps, the partial sums of the batches done, the best robust
accuracy. A checkpoint taken mid-epoch resumes at `batch`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List


@dataclass
class Position:
    epoch: int = 0
    step: int = 0
    batch: int = 0  # batches of `epoch` already trained
    partial: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss, correct, seen: summed over ranks
    best: float = -1.0  # best per-epoch robust accuracy so far (chooses best.pt)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "batch": self.batch,
            "partial": list(self.partial),
            "best_robust_acc": self.best,
        }

    def load_state_dict(self, state: Dict[str, Any], labeled_batch: int, size: int) -> None:
        """Restore; a position saved with another world size or batch is converted by samples: the first
        batch x batch-size x np samples of the epoch's permutation are done whatever the partition (rounding down
        redoes less than one batch)."""
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best_robust_acc"]
        self.batch, self.partial = state.get("batch", 0), list(state.get("partial", [0.0, 0.0, 0.0]))
        saved_size, saved_batch = state.get("world_size", size), state.get("labeled_batch", labeled_batch)
        if (saved_size, saved_batch) != (size, labeled_batch):
            self.batch = self.batch * saved_batch * saved_size // (labeled_batch * size)

    def epoch_done(self) -> None:
        self.epoch, self.batch, self.partial = self.epoch + 1, 0, [0.0, 0.0, 0.0]
