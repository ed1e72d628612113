"""A Horovod training worker: `python -m hvdat.train.worker --config RUN/config.json`.

Reads the frozen config and drives a Trainer epoch by epoch; a SIGTERM/SIGINT stops every rank after the same step
with a checkpoint of the position.
"""

from __future__ import annotations

import sys
from typing import List, Optional

from .. import events
from ..runtime.stop import StopSignal
from ..runtime.worker_main import worker_main
from ..runtime.world import World
from .config import TrainConfig
from .trainer import Trainer


def emit_start(trainer: Trainer, **extra) -> None:
    """Rank 0 tells the launcher what the run looks like."""
    if trainer.world.rank == 0:
        trainer.out.mkdir(parents=True, exist_ok=True)
        events.emit(
            "start",
            epochs=trainer.cfg.epochs,
            start_epoch=trainer.position.epoch,
            steps_per_epoch=trainer.steps_per_epoch,
            world_size=trainer.world.size,
            global_batch=trainer.global_batch,
            peak_lr=trainer.peak_lr,
            params=trainer.attack.params.__dict__,
            **extra,
        )


def train(cfg: TrainConfig) -> None:
    trainer = Trainer(cfg, World.start(cfg.threads))
    emit_start(trainer)
    stop = StopSignal.install()
    while trainer.position.epoch < cfg.epochs:
        epoch = trainer.position.epoch
        metrics = trainer.train_epoch(epoch, lambda done, sums: stop.agreed(trainer.world))
        if metrics is None:
            trainer.record_stop(epoch)
            return
        trainer.record(trainer.after_epoch(metrics))
    if trainer.world.rank == 0:
        events.emit("done", epochs=cfg.epochs)


def main(argv: Optional[List[str]] = None) -> int:
    return worker_main(lambda path: train(TrainConfig.load(path)), "python -m hvdat.train.worker", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
