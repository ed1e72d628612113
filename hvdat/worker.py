"""A Horovod worker: `python -m hvdat.worker --config RUN/config.json`.

Reads the frozen config, trains with adversarial examples, and (rank 0) writes metrics and checkpoints. Follows
Horovod's canonical order: init, pin the device, shard by rank, scale the LR with warm-up, wrap the optimizer,
broadcast the state, then log and checkpoint on rank 0 only.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from . import __version__, checkpoint, events
from .attacks import ATTACKS, pgd
from .attacks.bn_mode import attack_mode
from .compression import COMPRESSORS, wire_bytes
from .config import TrainConfig
from .data import Splits, UInt8Images, load_splits
from .extra import ExtraImages, extra_per_batch
from . import fast_path
from .models import build_model
from .optim import build_optimizer
from .schedule import lr_at, scale_factor
from .stop import StopSignal
from .worker_main import worker_main

log = logging.getLogger("hvdat.worker")
METRICS = "metrics.jsonl"
PROGRESS_EVERY_S = 0.5


def seed_for(*parts: int) -> int:
    """A stable 63-bit seed from integers (seed, rank, epoch, purpose), independent of Python's hash salt."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & 0x7FFFFFFFFFFFFFFF
    return value


def batches(dataset, indices: List[int], batch_size: int, device: torch.device, num_workers: int,
            full_only: bool = True) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Batches of the given indices: only full ones for training (every rank takes the same number of steps),
    all of them for evaluation (`full_only=False`). In-memory data is sliced directly, each batch pinned on CUDA
    (a slice of a pinned tensor is not pinned) so its copy is asynchronous; folders go through a DataLoader with
    pinned memory on CUDA."""
    if full_only and len(indices) >= batch_size:
        indices = indices[:len(indices) - len(indices) % batch_size]
    if isinstance(dataset, UInt8Images):
        order = torch.tensor(indices, dtype=torch.long)
        pin = device.type == "cuda"
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            images, labels = dataset.images[chunk], dataset.labels[chunk]
            if pin:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield (images.to(device, non_blocking=True).float().div_(255), labels.to(device, non_blocking=True))
        return
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         num_workers=num_workers, pin_memory=device.type == "cuda")
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@dataclass
class Context:
    cfg: TrainConfig
    hvd: object
    rank: int
    size: int
    device: torch.device
    out: Path

    def allreduce_sum(self, values: List[float]) -> List[float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        if self.size > 1:
            tensor = self.hvd.allreduce(tensor, op=self.hvd.Sum, name=f"metrics.{len(values)}")
        return tensor.tolist()


def evaluate(ctx: Context, model, splits: Splits, epoch: int) -> Dict[str, float]:
    """Clean accuracy on the test split, PGD robust accuracy on its first eval_samples; sharded over ranks."""
    cfg = ctx.cfg
    model.eval()
    test = splits.test
    clean_idx = list(range(ctx.rank, len(test), ctx.size))
    robust_n = min(cfg.eval_samples, len(test)) if cfg.eval_samples else 0
    robust_idx = list(range(ctx.rank, robust_n, ctx.size))
    bs, loaders = max(cfg.batch_size, 64), 0 if isinstance(test, UInt8Images) else 4
    correct = total = robust_correct = robust_total = 0
    with torch.no_grad():
        for x, y in batches(test, clean_idx, bs, ctx.device, loaders, full_only=False):
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    generator = torch.Generator(ctx.device).manual_seed(seed_for(cfg.seed, ctx.rank, 1_000_003))
    alpha = 2.5 * cfg.eps / cfg.eval_steps
    for x, y in batches(test, robust_idx, bs, ctx.device, loaders, full_only=False):
        x_adv = pgd(model, x, y, eps=cfg.eps, alpha=alpha, steps=cfg.eval_steps, norm=cfg.norm, generator=generator)
        with torch.no_grad():
            robust_correct += (model(x_adv).argmax(1) == y).sum().item()
        robust_total += len(y)
    correct, total, robust_correct, robust_total = ctx.allreduce_sum([correct, total, robust_correct, robust_total])
    return {"test_clean_acc": correct / max(total, 1),
            "test_robust_acc": robust_correct / robust_total if robust_total else None,  # None: JSON null, not NaN
            "test_clean_examples": int(total), "test_robust_examples": int(robust_total)}


def distributed_optimizer(hvd, optimizer, model, compressor):
    """Wrap the optimizer so each gradient's exchange starts as soon as backward produces it. Packed compressors
    (sign, ef-sign, natural) travel through allgather (hvdat.compression.optimizer), the others through Horovod's
    own allreduce."""
    from .compression.optimizer import DistributedOptimizer

    return DistributedOptimizer(optimizer, model.named_parameters(), compressor)


class Trainer:
    """One worker's training state and steps. `train()` drives it epoch by epoch; other drivers (elastic
    training, benchmarks) reuse the same pieces."""

    sync_at_init = True  # elastic workers sync through hvd.elastic state instead (no collectives at start-up)

    def __init__(self, cfg: TrainConfig):
        import horovod.torch as hvd

        hvd.init()
        self.cfg, self.hvd = cfg, hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // hvd.local_size()))
        self.device = torch.device(f"cuda:{hvd.local_rank()}" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.out = Path(cfg.out)
        self.ctx = Context(cfg, hvd, self.rank, self.size, self.device, self.out)

        torch.manual_seed(cfg.seed)  # same initial weights everywhere (rank 0's are broadcast anyway)
        self.splits = load_splits(cfg.dataset, cfg.data_dir, cfg.train_samples, cfg.test_samples)
        splits = self.splits
        self.model = build_model(cfg.arch, splits.num_classes, splits.shape, splits.mean, splits.std).to(self.device)
        self.forward_model = fast_path.compiled(self.model, cfg.compile)  # what the training step calls
        self.autocast = fast_path.autocast(cfg.amp, self.device)
        self.scaler = fast_path.grad_scaler(cfg.amp, self.device)
        self.extra = ExtraImages.load(cfg.extra_data, splits.shape, splits.num_classes) if cfg.extra_data else None
        self.extra_per_batch = extra_per_batch(cfg.extra_fraction, cfg.batch_size) if self.extra else 0
        self.labeled_batch = cfg.batch_size - self.extra_per_batch  # labeled images per batch
        self.global_batch = cfg.batch_size * self.size
        self.peak_lr = cfg.lr * scale_factor(self.global_batch, cfg.lr_base_batch, cfg.lr_scaling)
        self.optimizer = build_optimizer(cfg.optimizer, self.model, self.peak_lr, cfg.momentum, cfg.weight_decay,
                                         cfg.nesterov)
        self.epoch, self.step, self.best = 0, 0, -1.0
        self._guard_state: Optional[Dict] = None
        self.batch = 0  # batches of self.epoch already trained (a mid-epoch checkpoint resumes there)
        self.partial = [0.0, 0.0, 0.0]  # loss, correct, seen of those batches, summed over ranks
        # per-rank compressor state (natural's RNG, ef-sign's residuals); residuals are restored on resume
        self.compressor = COMPRESSORS.get(cfg.compression).build(seed_for(cfg.seed, self.rank, 3))
        self.compression_ranks: List[Dict] = []
        self.rank_buffers: List[Dict] = []  # each rank's BN statistics, kept only in mid-epoch checkpoints
        # wrap first: DistributedOptimizer builds a new optimizer from the param groups, dropping loaded state
        self.optimizer = distributed_optimizer(hvd, self.optimizer, self.model, self.compressor)
        if cfg.resume:
            # rank 0 reads the file; every rank gets the same state (no shared filesystem needed)
            state = checkpoint.load(self.out / checkpoint.LAST, arch=cfg.arch) if self.rank == 0 else None
            if self.size > 1 and self.sync_at_init:
                state = hvd.broadcast_object(state, root_rank=0, name="resume")
            if state is not None:
                self.load_state_dict(state)
        if self.sync_at_init and not cfg.resume:  # a resumed state already came from rank 0 (with per-rank BN)
            hvd.broadcast_parameters(self.model.state_dict(), root_rank=0)
        shapes = [p.shape for p in self.model.parameters() if p.requires_grad]
        self.fp32_bytes_per_step = 4 * sum(shape.numel() for shape in shapes)
        self.static_bytes_per_step = wire_bytes(cfg.compression, shapes)
        if not hasattr(self, "attack_name"):  # not restored from a checkpoint (the guard may have switched it)
            self.set_attack(cfg.attack, ATTACKS.get(cfg.attack).params(
                cfg.eps, cfg.alpha, cfg.steps, cfg.norm, cfg.random_start, cfg.clean_weight, cfg.trades_beta))
        self.attack_mode = attack_mode(self.model, cfg.attack_bn)
        self.sampler = torch.utils.data.distributed.DistributedSampler(
            splits.train, num_replicas=self.size, rank=self.rank, shuffle=True, seed=cfg.seed, drop_last=False)
        self.steps_per_epoch = max(1, len(self.sampler) // self.labeled_batch)
        self.loader_workers = 0 if isinstance(splits.train, UInt8Images) else min(4, os.cpu_count() or 1)
        from .co_guard import CollapseGuard

        self.guard = CollapseGuard(self) if cfg.co_guard else None
        if self.guard is not None and self._guard_state is not None:
            self.guard.load_state_dict(self._guard_state)

    def set_attack(self, name: str, params) -> None:
        """The training attack; the collapse guard switches it."""
        from .attacks.objectives import AttackParams

        self.attack_name, self.spec = name, ATTACKS.get(name)
        self.params = params if isinstance(params, AttackParams) else AttackParams(**params)

    # --- state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                "step": self.step, "batch": self.batch, "partial": list(self.partial),
                "world_size": self.size, "labeled_batch": self.labeled_batch,
                "best_robust_acc": self.best, "arch": self.cfg.arch,
                "dataset": self.cfg.dataset, "num_classes": self.splits.num_classes,
                "shape": list(self.splits.shape), "config": self.cfg.to_dict(), "hvdat_version": __version__,
                "compression_ranks": self.compression_ranks, "rank_buffers": self.rank_buffers,
                "attack": {"name": self.attack_name, "params": dict(self.params.__dict__)} if hasattr(
                    self, "attack_name") else None,
                "co_guard": self.guard.state_dict() if getattr(self, "guard", None) else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: Dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best_robust_acc"]
        self.batch, self.partial = state.get("batch", 0), list(state.get("partial", [0.0, 0.0, 0.0]))
        saved_size, saved_batch = state.get("world_size", self.size), state.get("labeled_batch", self.labeled_batch)
        if (saved_size, saved_batch) != (self.size, self.labeled_batch):
            # Resumed with another --np: the first batch x batch-size x np samples of the epoch's permutation are
            # done whatever the partition, so convert the position by samples (rounding down redoes < 1 batch).
            self.batch = self.batch * saved_batch * saved_size // (self.labeled_batch * self.size)
        if hasattr(self.compressor, "load_rank_states"):
            self.compressor.load_rank_states(state.get("compression_ranks", []), self.rank, self.size)
        if state.get("attack"):
            self.set_attack(state["attack"]["name"], state["attack"]["params"])
        self._guard_state = state.get("co_guard")
        if getattr(self, "guard", None) is not None and self._guard_state:
            self.guard.load_state_dict(self._guard_state)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rank_buffers = state.get("rank_buffers") or []
        if len(rank_buffers) == self.size:  # mid-epoch: BN statistics are per rank until the epoch's average
            own = rank_buffers[self.rank]
            for name, buffer in self.model.named_buffers():
                if name in own:
                    buffer.copy_(own[name])

    def gather_compression_state(self) -> None:
        """Collective (every rank calls it): collect each rank's compressor state (EF residuals) for the
        checkpoint, which rank 0 alone writes."""
        if hasattr(self.compressor, "state_dict"):
            mine = self.compressor.state_dict()
            self.compression_ranks = self.hvd.allgather_object(mine, name="compression_state") if self.size > 1 \
                else [mine]

    def bytes_sent_per_step(self) -> int:
        """Gradient bytes this worker hands to Horovod per step: counted for packed compressors, exact from the
        parameter sizes for allreduce ones."""
        return getattr(self.optimizer, "bytes_sent_per_step", 0) or self.static_bytes_per_step

    def save(self, improved: bool) -> None:
        state = self.state_dict()
        checkpoint.save_atomic(state, self.out / checkpoint.LAST)
        if improved:
            checkpoint.save_atomic(state, self.out / checkpoint.BEST)

    # --- steps --------------------------------------------------------------------------------------------------
    def schedule_position(self, epoch: int, batch: int) -> float:
        """Where batch `batch` of `epoch` lies in the run, in steps of the current epoch length: the LR is a
        function of it (not of the optimiser steps taken, which depend on the world sizes the run has had)."""
        return epoch * self.steps_per_epoch + batch

    def train_step(self, x: torch.Tensor, y: torch.Tensor, attack_gen: torch.Generator,
                   position: float) -> Tuple[float, int]:
        """One optimiser step on an adversarial batch at schedule `position`; returns (summed loss, correct
        predictions)."""
        cfg = self.cfg
        lr = lr_at(position, self.steps_per_epoch, cfg.epochs, self.peak_lr, cfg.schedule, cfg.warmup_epochs,
                   cfg.milestones)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast():
            loss, logits = self.spec.objective(self.forward_model, x, y, self.params, attack_gen, self.attack_mode)
        self.optimizer.zero_grad()
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:  # fp16: Horovod's recipe, every rank unscales the same exchanged gradients and skips the same steps
            self.scaler.scale(loss).backward()
            self.optimizer.synchronize()
            with self.optimizer.skip_synchronize():
                self.scaler.step(self.optimizer)
            self.scaler.update()
        self.step += 1
        return loss.item() * len(y), (logits.argmax(1) == y).sum().item()

    def sync_buffers(self) -> None:
        """Average BN running statistics over ranks. Each rank's come from its own shard; averaging makes the model
        every rank evaluates the same one rank 0 checkpoints, so a resumed run matches an uninterrupted one."""
        if self.size == 1:
            return
        for name, buffer in self.model.named_buffers():
            if buffer.is_floating_point():
                buffer.copy_(self.hvd.allreduce(buffer, op=self.hvd.Average, name=f"buffer.{name}"))

    def epoch_indices(self, epoch: int) -> List[int]:
        """This rank's sample indices for the rest of the epoch (after the self.batch batches already trained)."""
        self.sampler.set_epoch(epoch)
        return list(self.sampler)[self.batch * self.labeled_batch:]

    def train_epoch(self, epoch: int, after_step: Optional[Callable[[int, List[float]], bool]] = None
                    ) -> Optional[Dict[str, float]]:
        """Train the rest of `epoch`. `after_step(batches_done, [loss, correct, seen] so far on this rank)` returning
        True stops early: then self.batch and self.partial hold the position for a checkpoint, and it returns None."""
        cfg, size = self.cfg, self.size
        epoch_start = time.perf_counter()
        self.model.train()
        # rank 0 carries the (rank-summed) totals of batches trained before a mid-epoch checkpoint
        loss_sum, correct, seen = self.partial if self.rank == 0 else (0.0, 0.0, 0.0)
        carried = self.partial[2]  # images trained before a resume (every rank holds the same partial sums)
        last_report = time.perf_counter()
        data = batches(self.splits.train, self.epoch_indices(epoch), self.labeled_batch, self.device,
                       self.loader_workers)
        for i, (x, y) in enumerate(data, start=self.batch):
            # randomness per batch (not per epoch), so a run resumed mid-epoch repeats an uninterrupted one exactly
            attack_gen = torch.Generator(self.device).manual_seed(seed_for(cfg.seed, self.rank, epoch, 1, i))
            if self.extra is not None:
                x_extra, y_extra = self.extra.sample(self.extra_per_batch, torch.Generator().manual_seed(
                    seed_for(cfg.seed, self.rank, epoch, 3, i)), self.device)
                x, y = torch.cat([x, x_extra]), torch.cat([y, y_extra])
            if cfg.augment and self.splits.augment is not None:
                x = self.splits.augment(x, torch.Generator().manual_seed(seed_for(cfg.seed, self.rank, epoch, 2, i)))
            x = x.contiguous(memory_format=fast_path.memory_format(cfg.channels_last))
            batch_loss, batch_correct = self.train_step(x, y, attack_gen, self.schedule_position(epoch, i))
            loss_sum, correct, seen = loss_sum + batch_loss, correct + batch_correct, seen + len(y)
            if after_step is not None and after_step(i + 1, [loss_sum, correct, seen]):
                self.batch, self.partial = i + 1, self.ctx.allreduce_sum([loss_sum, correct, seen])
                return None
            now = time.perf_counter()
            if self.rank == 0 and (now - last_report >= PROGRESS_EVERY_S or i + 1 == self.steps_per_epoch):
                last_report = now
                events.emit("batch", epoch=epoch, batch=i + 1, batches=self.steps_per_epoch, loss=loss_sum / seen,
                            acc=correct / seen, images_per_sec=(seen - carried) * size / (now - epoch_start),
                            bytes_sent_per_step=self.bytes_sent_per_step())
        train_seconds = time.perf_counter() - epoch_start
        self.sync_buffers()
        loss_sum, correct, seen = self.ctx.allreduce_sum([loss_sum, correct, seen])
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}
        self.batch, self.partial = 0, [0.0, 0.0, 0.0]
        metrics.update(evaluate(self.ctx, self.model, self.splits, epoch))
        metrics.update(images_per_sec=(seen - carried) / train_seconds, lr=self.optimizer.param_groups[0]["lr"],
                       seconds=time.perf_counter() - epoch_start, train_seconds=train_seconds, world_size=size,
                       global_batch=self.global_batch, step=self.step,
                       bytes_sent_per_step=self.bytes_sent_per_step(),
                       compression_ratio=self.fp32_bytes_per_step / self.bytes_sent_per_step())
        self.epoch = epoch + 1
        return metrics

    def record(self, metrics: Dict[str, float]) -> None:
        """Rank 0: checkpoint, append the metrics line, tell the launcher (every rank calls it)."""
        self.gather_compression_state()
        if self.rank != 0:
            return
        # a collapsed epoch's weights were discarded (the guard rolled back): its accuracy cannot choose best.pt
        robust = None if metrics.get("co_guard_collapsed") else metrics["test_robust_acc"]
        improved = robust is not None and robust > self.best
        self.best = max(self.best, robust) if robust is not None else self.best
        self.save(improved)
        with open(self.out / METRICS, "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        events.emit("epoch", **metrics)

    def record_stop(self, epoch: int) -> None:
        """After a graceful stop mid-epoch (every rank calls it): rank 0 checkpoints the position, tells the
        launcher."""
        self.gather_compression_state()
        mine = {name: b.detach().cpu() for name, b in self.model.named_buffers() if b.is_floating_point()}
        self.rank_buffers = self.hvd.allgather_object(mine, name="rank_buffers") if self.size > 1 else []
        if self.rank != 0:
            return
        self.save(improved=False)
        events.emit("stopped", epoch=epoch, batch=self.batch, batches=self.steps_per_epoch, step=self.step,
                    checkpoint=str(self.out / checkpoint.LAST))


def train(cfg: TrainConfig) -> None:
    trainer = Trainer(cfg)
    if trainer.rank == 0:
        trainer.out.mkdir(parents=True, exist_ok=True)
        events.emit("start", epochs=cfg.epochs, start_epoch=trainer.epoch, steps_per_epoch=trainer.steps_per_epoch,
                    world_size=trainer.size, global_batch=trainer.global_batch, peak_lr=trainer.peak_lr,
                    params=trainer.params.__dict__)
    stop = StopSignal.install()
    while trainer.epoch < cfg.epochs:
        epoch = trainer.epoch
        metrics = trainer.train_epoch(epoch, lambda done, sums: stop.agreed(trainer.hvd, trainer.size))
        if metrics is None:
            trainer.record_stop(epoch)
            return
        if trainer.guard is not None:  # may roll the trainer back to the last good epoch
            metrics.update(trainer.guard.after_epoch(metrics))
        trainer.record(metrics)
    if trainer.rank == 0:
        events.emit("done", epochs=cfg.epochs)


def main(argv: Optional[List[str]] = None) -> int:
    return worker_main(lambda path: train(TrainConfig.load(path)), "python -m hvdat.worker", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
