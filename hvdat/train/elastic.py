"""An elastic Horovod worker: `python -m hvdat.train.elastic --config RUN/config.json` under
`horovodrun --min-np N --max-np M --host-discovery-script S`.

Drives the same Trainer as hvdat.train.worker inside `@hvd.elastic.run`. A `hvd.elastic.TorchState` holds the
model, the optimizer, an `ElasticSampler` (which samples of the epoch are done), a stateful compressor's per-rank
state (ef-sign's residuals, kept on their rank: hvdat.runtime.rank_state) and the position (epoch, batch, step,
partial sums, best); it is committed every `commit_every` batches and after each epoch. When a worker dies the
others get a HorovodInternalError, roll back to the last commit, re-form without it, and continue: at most
`commit_every` batches are redone.
"""

from __future__ import annotations

import sys
from typing import List, Optional

from .. import events
from ..runtime import rank_state
from ..runtime.worker_main import worker_main
from ..runtime.world import World
from .config import TrainConfig
from .trainer import Trainer
from .worker import emit_start

POSITION = ("epoch", "batch", "step", "partial", "best")  # Position fields that travel in the elastic state


class ElasticTrainer(Trainer):
    sync_at_init = False  # state.sync() broadcasts rank 0's model and position; a joining worker must not add more

    def make_sampler(self):
        """Partitions the epoch's not-yet-committed samples over whoever is alive."""
        sampler = self.world.hvd.elastic.ElasticSampler(self.inputs.splits.train, shuffle=True, seed=self.cfg.seed)
        sampler.set_epoch(self.position.epoch)
        return sampler

    def resized(self) -> None:
        """After (re)forming the ring: world size and rank follow the live workers (and with them the LR scaling
        and the epoch length)."""
        self.world = self.world.resized()

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.inputs.splits.train) // (self.inputs.labeled_batch * self.world.size))

    def schedule_position(self, epoch: int, batch: int) -> float:
        """From the samples of the epoch done (committed or since), which stays right across resizes."""
        return epoch * self.steps_per_epoch + self.sampler.processed_num / (self.inputs.labeled_batch * self.world.size)

    def epoch_indices(self, epoch: int) -> List[int]:
        return list(self.sampler)  # already excludes the samples committed as done this epoch


def train(cfg: TrainConfig) -> None:
    trainer = ElasticTrainer(cfg, World.start(cfg.threads))
    hvd, position = trainer.world.hvd, trainer.position
    per_rank = {}
    if rank_state.has_rank_state(trainer.learner.compressor):
        rank_state.register(trainer.learner.compressor)
        per_rank["compression"] = trainer.learner.compressor
    state = hvd.elastic.TorchState(
        model=trainer.learner.model,
        optimizer=trainer.learner.optimizer,
        sampler=trainer.sampler,
        **per_rank,
        **{name: getattr(position, name) for name in POSITION},
    )

    def on_reset() -> None:
        trainer.resized()
        if trainer.world.rank == 0:
            events.emit("reset", world_size=trainer.world.size, epoch=state.epoch, batch=state.batch, step=state.step)

    state.register_reset_callbacks([on_reset])
    emit_start(trainer, elastic=True, commit_every=cfg.commit_every)

    @hvd.elastic.run
    def run(state) -> None:
        for name in POSITION:  # the committed position (after a rollback, the last commit's)
            setattr(position, name, getattr(state, name))

        def commit(done: int, sums: List[float]) -> bool:
            trainer.sampler.record_batch(done - 1, trainer.inputs.labeled_batch)  # labeled images only
            if done % cfg.commit_every == 0:
                state.partial = trainer.world.allreduce_sum(sums)
                state.batch, state.step = done, position.step
                state.commit()
            return False

        for epoch in range(state.epoch, cfg.epochs):
            metrics = trainer.train_epoch(epoch, commit)
            trainer.sampler.set_epoch(epoch + 1)
            trainer.record(metrics)
            state.epoch, state.batch, state.step, state.partial, state.best = (
                position.epoch,
                0,
                position.step,
                [0.0, 0.0, 0.0],
                position.best,
            )
            state.commit()

    run(state)
    if trainer.world.rank == 0:
        events.emit("done", epochs=cfg.epochs)


def main(argv: Optional[List[str]] = None) -> int:
    return worker_main(lambda path: train(TrainConfig.load(path)), "python -m hvdat.train.elastic", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
