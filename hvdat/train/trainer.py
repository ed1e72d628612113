"""One worker's training: a Trainer is built whole from small parts (inputs, learner, attack, position, guard) and
trains epoch by epoch; rank 0 writes metrics and checkpoints.

Follows Horovod's canonical order: init, pin the device, shard by rank, scale the LR with warm-up, wrap the
optimizer, broadcast the state, then log and checkpoint on rank 0 only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .. import __version__, events
from ..attacks.accuracy import clean_correct, pgd_correct
from ..attacks.attack_mode import attack_mode
from ..data import UInt8Images, batches
from ..runtime import checkpoint
from ..runtime.seeds import seed_for
from ..runtime.world import World
from ..schedule import AccelatCuts, lr_at
from .attack_choice import TrainingAttack
from .co_guard import CollapseGuard
from .config import TrainConfig
from .inputs import TrainInputs
from .learner import Learner, peak_lr
from .position import Position
from .replay import Replays, agree
from .run_folder import METRICS

PROGRESS_EVERY_S = 0.5
AfterStep = Callable[[int, List[float]], bool]  # (batches done, [loss, correct, seen] on this rank) -> stop?


class Trainer:
    """`train_epoch` trains; `record` checkpoints and reports. Drivers (hvdat.train.worker, the elastic worker)
    decide when."""

    sync_at_init = True  # elastic workers sync through hvd.elastic state instead (no collectives at start-up)

    def __init__(self, cfg: TrainConfig, world: World):
        self.cfg, self.world, self.out = cfg, world, Path(cfg.out)
        torch.manual_seed(cfg.seed)  # same initial weights everywhere (rank 0's are broadcast anyway)
        self.inputs = TrainInputs.load(cfg)
        self.learner = Learner.build(cfg, self.inputs.splits, world)
        self.attack = TrainingAttack.from_config(cfg)
        self.attack_mode = attack_mode(self.learner.model, cfg.attack_bn)
        self.position = Position()
        self.guard = CollapseGuard(cfg) if cfg.co_guard else None
        # Free-AT's and DEAT's replays, AccelAT's LR cuts: state that checkpoints carry
        self.replays = Replays.build(cfg, world, cfg.batch_size, tuple(self.inputs.splits.shape))
        self.lr_cuts = accelat_cuts(cfg) if cfg.schedule == "accelat" else None
        if cfg.resume:
            # rank 0 reads the file; every rank gets the same state (no shared filesystem needed)
            state = checkpoint.load(self.out / checkpoint.LAST, arch=cfg.arch) if world.rank == 0 else None
            if self.sync_at_init:
                state = world.broadcast_object(state, name="resume")
            if state is not None:
                self.load_state_dict(state)
                self.resume_rank_state(state)
        if self.sync_at_init and not cfg.resume and world.size > 1:  # a resumed state already came from rank 0
            world.hvd.broadcast_parameters(self.learner.model.state_dict(), root_rank=0)
        self.sampler = self.make_sampler()  # after a resume: an elastic sampler starts at the resumed epoch
        if self.guard is not None:
            self.guard.keep(self.state_dict(), self.rank_state_dict())  # the start counts as good

    # --- what depends on the world size (elastic jobs change it) -----------------------------------------------------
    def make_sampler(self):
        return torch.utils.data.distributed.DistributedSampler(
            self.inputs.splits.train,
            num_replicas=self.world.size,
            rank=self.world.rank,
            shuffle=True,
            seed=self.cfg.seed,
            drop_last=False,
        )

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.world.size

    @property
    def peak_lr(self) -> float:
        return peak_lr(self.cfg, self.world.size)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.sampler) // self.inputs.labeled_batch)

    def schedule_position(self, epoch: int, batch: int) -> float:
        """Where batch `batch` of `epoch` lies in the run, in steps of the current epoch length: the LR is a
        function of it (not of the optimiser steps taken, which depend on the world sizes the run has had)."""
        return epoch * self.steps_per_epoch + batch

    def epoch_indices(self, epoch: int) -> List[int]:
        """This rank's sample indices for the rest of the epoch (after the batches already trained)."""
        self.sampler.set_epoch(epoch)
        return list(self.sampler)[self.position.batch * self.inputs.labeled_batch :]

    # --- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        splits, cfg = self.inputs.splits, self.cfg
        return {
            **self.learner.state_dict(),
            **self.position.state_dict(),
            "world_size": self.world.size,
            "labeled_batch": self.inputs.labeled_batch,
            "arch": cfg.arch,
            "dataset": cfg.dataset,
            "num_classes": splits.num_classes,
            "shape": list(splits.shape),
            "config": cfg.to_dict(),
            "hvdat_version": __version__,
            "attack": self.attack.state_dict(),
            "co_guard": self.guard.state_dict() if self.guard is not None else None,
            "replays": self.replays.state_dict() if self.replays is not None else None,
            "accelat": self.lr_cuts.state_dict() if self.lr_cuts is not None else None,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """What every rank shares (rank 0's checkpoint); each rank's own comes through load_rank_state."""
        world = self.world
        self.learner.load_state_dict(state)
        self.position.load_state_dict(state, self.inputs.labeled_batch, world.size)
        if state.get("attack"):
            self.attack = TrainingAttack.from_state(state["attack"])
        if self.guard is not None and state.get("co_guard"):
            self.guard.load_state_dict(state["co_guard"])
        if self.replays is not None and state.get("replays"):
            self.replays.load_state_dict(state["replays"])
        if self.lr_cuts is not None and state.get("accelat"):
            self.lr_cuts = AccelatCuts.from_state(state["accelat"])

    def rank_state_dict(self, with_buffers: bool = False) -> Dict[str, Any]:
        """This rank's own state: its compressor's (EF residuals, RNG) and, mid-epoch, its BN statistics (per rank
        until the epoch's average)."""
        own: Dict[str, Any] = {"rank": self.world.rank, "world_size": self.world.size, "step": self.position.step}
        if self.learner.has_rank_state:
            own["compression"] = self.learner.compressor.state_dict()
        if self.replays is not None:
            own["replays"] = self.replays.rank_state_dict()
        if with_buffers:
            own["buffers"] = {
                name: b.detach().cpu() for name, b in self.learner.model.named_buffers() if b.is_floating_point()
            }
        return own

    def load_rank_state(self, own: Optional[Dict[str, Any]], everyone: Sequence[Dict[str, Any]] = ()) -> None:
        """`own`: this rank's state from a run of this world size, continued as it was. `everyone`: every rank's,
        from a run of another size: the compressor decides (ef-sign takes the mean of the residuals)."""
        compressor = self.learner.compressor
        if self.replays is not None:
            self.replays.load_rank_state(
                own.get("replays") if own is not None else None, [s["replays"] for s in everyone if s.get("replays")]
            )
        if own is not None:
            if own.get("compression") is not None:
                compressor.load_state_dict(own["compression"])
            buffers = own.get("buffers") or {}
            for name, buffer in self.learner.model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
            return
        states = [s["compression"] for s in everyone if s.get("compression") is not None]
        if states and hasattr(compressor, "load_rank_states"):
            compressor.load_rank_states(states, self.world.rank, self.world.size)

    def resume_rank_state(self, state: Dict[str, Any]) -> None:
        """Read this rank's shard of the checkpoint (every shard, if the world size changed)."""
        shards, step = state.get("rank_shards") or 0, state["step"]
        if shards == self.world.size:
            self.load_rank_state(checkpoint.load_rank_state(self.out, self.world.rank, step))
        elif shards:
            self.load_rank_state(None, checkpoint.load_rank_states(self.out, shards, step))

    def save(self, improved: bool, with_buffers: bool = False) -> None:
        """Collective: every rank writes its own shard (when it has one), then rank 0 the checkpoint that names them."""
        shards = 0
        if self.has_rank_state or (with_buffers and self.world.size > 1):
            checkpoint.save_rank_state(self.out, self.world.rank, self.rank_state_dict(with_buffers))
            shards = self.world.size
        self.world.barrier()  # every shard is on disk before last.pt names them
        if self.world.rank != 0:
            return
        state = {**self.state_dict(), "rank_shards": shards}
        checkpoint.save_atomic(state, self.out / checkpoint.LAST)
        if improved:
            checkpoint.save_atomic(state, self.out / checkpoint.BEST)

    @property
    def has_rank_state(self) -> bool:
        """Whether each rank has state of its own to checkpoint (ef-sign's residuals, Free-AT's perturbation)."""
        replays = self.replays is not None and self.replays.rank_state_dict() is not None
        return self.learner.has_rank_state or replays

    # --- steps --------------------------------------------------------------------------------------------------
    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, attack_gen: torch.Generator, position: float
    ) -> Tuple[float, int]:
        """One optimiser step on an adversarial batch at schedule `position`; returns (summed loss, correct
        predictions)."""
        learner = self.learner
        if self.replays is not None and self.attack.spec.replayed:
            return self.replays.train_batch(self, x, y, attack_gen, self.position.epoch, position)
        learner.set_lr(self.lr_for(position, self.steps_per_epoch))
        with learner.autocast():
            loss, logits = self.attack.spec.objective(
                learner.forward_model, x, y, self.attack.params, attack_gen, self.attack_mode
            )
        learner.step(loss)
        self.position.step += 1
        return loss.item() * len(y), (logits.argmax(1) == y).sum().item()

    def lr_for(self, position: float, steps_per_epoch: int) -> float:
        """The LR at schedule `position` (in steps of `steps_per_epoch`), after AccelAT's cuts."""
        cfg = self.cfg
        lr = lr_at(position, steps_per_epoch, cfg.epochs, self.peak_lr, cfg.schedule, cfg.warmup_epochs, cfg.milestones)
        return self.lr_cuts.apply(lr) if self.lr_cuts is not None else lr

    def sync_buffers(self) -> None:
        """Average BN running statistics over ranks. Each rank's come from its own shard; averaging makes the model
        every rank evaluates the same one rank 0 checkpoints, so a resumed run matches an uninterrupted one."""
        hvd = self.world.hvd
        if self.world.size == 1:
            return
        for name, buffer in self.learner.model.named_buffers():
            if buffer.is_floating_point():
                buffer.copy_(hvd.allreduce(buffer, op=hvd.Average, name=f"buffer.{name}"))

    def train_epoch(self, epoch: int, after_step: Optional[AfterStep] = None) -> Optional[Dict[str, float]]:
        """Train the rest of `epoch`. `after_step` returning True stops early: then the position holds the batch
        and partial sums for a checkpoint, and it returns None."""
        world, position, device = self.world, self.position, self.world.device
        epoch_start = time.perf_counter()
        self.learner.model.train()
        # rank 0 carries the (rank-summed) totals of batches trained before a mid-epoch checkpoint
        loss_sum, correct, seen = position.partial if world.rank == 0 else (0.0, 0.0, 0.0)
        carried = position.partial[2]  # images trained before a resume (every rank holds the same partial sums)
        last_report = time.perf_counter()
        for i, (x, y) in enumerate(self.inputs.batches(self.epoch_indices(epoch), device), start=position.batch):
            # randomness per batch (not per epoch), so a run resumed mid-epoch repeats an uninterrupted one exactly
            attack_gen = torch.Generator(device).manual_seed(seed_for(self.cfg.seed, world.rank, epoch, 1, i))
            x, y = self.inputs.complete(x, y, world.rank, epoch, i, device)
            batch_loss, batch_correct = self.train_step(x, y, attack_gen, self.schedule_position(epoch, i))
            loss_sum, correct, seen = loss_sum + batch_loss, correct + batch_correct, seen + len(y)
            if after_step is not None and after_step(i + 1, [loss_sum, correct, seen]):
                position.batch, position.partial = i + 1, world.allreduce_sum([loss_sum, correct, seen])
                if self.replays is not None:
                    self.replays.carry()
                return None
            now = time.perf_counter()
            if world.rank == 0 and (now - last_report >= PROGRESS_EVERY_S or i + 1 == self.steps_per_epoch):
                last_report = now
                events.emit(
                    "batch",
                    epoch=epoch,
                    batch=i + 1,
                    batches=self.steps_per_epoch,
                    loss=loss_sum / seen,
                    acc=correct / seen,
                    images_per_sec=(seen - carried) * world.size / (now - epoch_start),
                    bytes_sent_per_step=self.learner.bytes_sent_per_step(),
                )
        train_seconds = time.perf_counter() - epoch_start
        self.sync_buffers()
        loss_sum, correct, seen = world.allreduce_sum([loss_sum, correct, seen])
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}
        position.batch, position.partial = 0, [0.0, 0.0, 0.0]
        if self.replays is not None and self.attack.spec.replayed:
            metrics.update(self.replays.end_epoch(epoch, metrics["train_acc"]))
        metrics.update(self.evaluate())
        if self.lr_cuts is not None:
            metrics.update(self.cut_lr(metrics["test_robust_acc"]))
        bytes_sent = self.learner.bytes_sent_per_step()
        metrics.update(
            images_per_sec=(seen - carried) / train_seconds,
            lr=self.learner.optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - epoch_start,
            train_seconds=train_seconds,
            world_size=world.size,
            global_batch=self.global_batch,
            step=position.step,
            bytes_sent_per_step=bytes_sent,
            compression_ratio=self.learner.fp32_bytes_per_step / bytes_sent,
        )
        position.epoch = epoch + 1
        return metrics

    def cut_lr(self, robust_acc: Optional[float]) -> Dict[str, Any]:
        """AccelAT's decision after an epoch, from the (rank-summed) robust accuracy on held-out data."""
        cuts = self.lr_cuts
        cut = cuts.after_epoch(robust_acc if robust_acc is not None else 0.0)
        agree(self.world, "AccelAT's LR cuts", cuts.state_dict())
        return {"accelat_mean": cuts.means[-1], "accelat_cut": cut, "lr_scale": cuts.scale}

    def evaluate(self) -> Dict[str, Any]:
        """Clean accuracy on the test split, PGD robust accuracy on its first --eval-samples; sharded over ranks."""
        cfg, world, model = self.cfg, self.world, self.learner.model
        model.eval()
        test = self.inputs.splits.test
        robust_n = min(cfg.eval_samples, len(test)) if cfg.eval_samples else 0
        bs, loaders = max(cfg.batch_size, 64), 0 if isinstance(test, UInt8Images) else 4

        def shard(n: int):
            return batches(test, list(range(world.rank, n, world.size)), bs, world.device, loaders, full_only=False)

        correct, total = clean_correct(model, shard(len(test)))
        generator = torch.Generator(world.device).manual_seed(seed_for(cfg.seed, world.rank, 1_000_003))
        robust_correct, robust_total = pgd_correct(
            model, shard(robust_n), eps=cfg.eps, steps=cfg.eval_steps, norm=cfg.norm, generator=generator
        )
        correct, total, robust_correct, robust_total = world.allreduce_sum(
            [correct, total, robust_correct, robust_total]
        )
        return {
            "test_clean_acc": correct / max(total, 1),
            "test_robust_acc": robust_correct / robust_total if robust_total else None,  # JSON null, not NaN
            "test_clean_examples": int(total),
            "test_robust_examples": int(robust_total),
        }

    def record(self, metrics: Dict[str, Any]) -> None:
        """Checkpoint (every rank its own shard), and on rank 0 append the metrics line and tell the launcher (every
        rank calls it)."""
        # a collapsed epoch's weights were discarded (the guard rolled back): its accuracy cannot choose best.pt
        robust = None if metrics.get("co_guard_collapsed") else metrics["test_robust_acc"]
        improved = robust is not None and robust > self.position.best
        self.position.best = max(self.position.best, robust) if robust is not None else self.position.best
        self.save(improved)
        if self.world.rank != 0:
            return
        with open(self.out / METRICS, "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        events.emit("epoch", **metrics)

    def record_stop(self, epoch: int) -> None:
        """After a graceful stop mid-epoch (every rank calls it): checkpoint the position, with each rank's BN
        statistics; rank 0 tells the launcher."""
        self.save(improved=False, with_buffers=True)
        if self.world.rank != 0:
            return
        events.emit("stopped", epoch=epoch, batch=self.position.batch, batches=self.steps_per_epoch,
                    step=self.position.step, checkpoint=str(self.out / checkpoint.LAST))  # fmt: skip

    def after_epoch(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        """The collapse guard's check (collective), which may roll the trainer back to the last good epoch."""
        if self.guard is None:
            return metrics
        return {**metrics, **self.guard.after_epoch(self)}


def accelat_cuts(cfg: TrainConfig) -> AccelatCuts:
    return AccelatCuts(
        cfg.accelat_window, cfg.accelat_cooldown, cfg.accelat_min_gain, cfg.accelat_factor, cfg.accelat_min_lr
    )
