"""An elastic Horovod worker: `python -m hvdat.elastic_worker --config RUN/config.json` under
`horovodrun --min-np N --max-np M --host-discovery-script S`.

Drives the same `Trainer` as hvdat.worker inside `@hvd.elastic.run`. A `hvd.elastic.TorchState` holds the model,
the optimizer, an `ElasticSampler` (which samples of the epoch are done), a stateful compressor's per-rank state
(ef-sign's residuals, kept on their rank: hvdat.rank_state) and the position (epoch, batch, step, partial sums);
it is committed every `commit_every` batches and after each epoch. When a worker dies the others
get a HorovodInternalError, roll back to the last commit, re-form without it, and continue: at most
`commit_every` batches are redone.
"""

from __future__ import annotations

import logging
import sys
from typing import List, Optional

from . import events, rank_state
from .config import TrainConfig
from .schedule import scale_factor
from .worker import Context, Trainer
from .worker_main import worker_main

log = logging.getLogger("hvdat.elastic_worker")
POSITION = ("epoch", "batch", "step", "partial", "best")  # Trainer attributes that travel in the elastic state


class ElasticTrainer(Trainer):
    sync_at_init = False  # state.sync() broadcasts rank 0's model and position; a joining worker must not add more

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        # partitions the epoch's not-yet-committed samples over whoever is alive
        self.sampler = self.hvd.elastic.ElasticSampler(self.splits.train, shuffle=True, seed=cfg.seed)
        self.sampler.set_epoch(self.epoch)
        self.resized()

    def resized(self) -> None:
        """After (re)forming the ring: world size, rank, LR scaling and epoch length follow the live workers."""
        hvd, cfg = self.hvd, self.cfg
        self.rank, self.size = hvd.rank(), hvd.size()
        self.ctx = Context(cfg, hvd, self.rank, self.size, self.device, self.out)
        self.global_batch = cfg.batch_size * self.size
        self.peak_lr = cfg.lr * scale_factor(self.global_batch, cfg.lr_base_batch, cfg.lr_scaling)
        self.steps_per_epoch = max(1, len(self.splits.train) // (self.labeled_batch * self.size))

    def schedule_position(self, epoch: int, batch: int) -> float:
        """From the samples of the epoch done (committed or since), which stays right across resizes."""
        return epoch * self.steps_per_epoch + self.sampler.processed_num / (self.labeled_batch * self.size)

    def epoch_indices(self, epoch: int) -> List[int]:
        return list(self.sampler)  # already excludes the samples committed as done this epoch


def train(cfg: TrainConfig) -> None:
    trainer = ElasticTrainer(cfg)
    hvd = trainer.hvd
    per_rank = {}
    if rank_state.has_rank_state(trainer.compressor):
        rank_state.register(trainer.compressor)
        per_rank["compression"] = trainer.compressor
    state = hvd.elastic.TorchState(model=trainer.model, optimizer=trainer.optimizer, sampler=trainer.sampler,
                                   **per_rank, **{name: getattr(trainer, name) for name in POSITION})

    def on_reset() -> None:
        trainer.resized()
        if trainer.rank == 0:
            events.emit("reset", world_size=trainer.size, epoch=state.epoch, batch=state.batch, step=state.step)

    state.register_reset_callbacks([on_reset])
    if trainer.rank == 0:
        trainer.out.mkdir(parents=True, exist_ok=True)
        events.emit("start", epochs=cfg.epochs, start_epoch=trainer.epoch, steps_per_epoch=trainer.steps_per_epoch,
                    world_size=trainer.size, global_batch=trainer.global_batch, peak_lr=trainer.peak_lr,
                    params=trainer.params.__dict__, elastic=True, commit_every=cfg.commit_every)

    @hvd.elastic.run
    def run(state) -> None:
        for name in POSITION:  # the committed position (after a rollback, the last commit's)
            setattr(trainer, name, getattr(state, name))

        def commit(done: int, sums: List[float]) -> bool:
            trainer.sampler.record_batch(done - 1, trainer.labeled_batch)  # labeled images: extra ones are not in it
            if done % cfg.commit_every == 0:
                state.partial = trainer.ctx.allreduce_sum(sums)
                state.batch, state.step = done, trainer.step
                state.commit()
            return False

        for epoch in range(state.epoch, cfg.epochs):
            metrics = trainer.train_epoch(epoch, commit)
            trainer.sampler.set_epoch(epoch + 1)
            trainer.record(metrics)
            state.epoch, state.batch, state.step, state.partial, state.best = (
                trainer.epoch, 0, trainer.step, [0.0, 0.0, 0.0], trainer.best)
            state.commit()

    run(state)
    if trainer.rank == 0:
        events.emit("done", epochs=cfg.epochs)


def main(argv: Optional[List[str]] = None) -> int:
    return worker_main(lambda path: train(TrainConfig.load(path)), "python -m hvdat.elastic_worker", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
