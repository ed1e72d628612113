"""The model and how it learns: the network, its optimizer wrapped for Horovod with the chosen compressor, and the
fast-path pieces (compiled forward, autocast, GradScaler). One `step(loss)` does backward, exchange and update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Optional

import torch

from ..compression import wire_bytes
from ..data import Splits
from ..models import build_model
from ..optim import build_optimizer
from ..runtime.distributed_optimizer import DistributedOptimizer, bucket_bytes
from ..runtime.horovod_compression import build_compressor
from ..runtime.seeds import seed_for
from ..runtime.world import World
from ..schedule import scale_factor
from . import fast_path
from .config import TrainConfig


def peak_lr(cfg: TrainConfig, size: int) -> float:
    """--lr scaled from --lr-base-batch to the global batch of `size` workers (--lr-scaling)."""
    return cfg.lr * scale_factor(cfg.batch_size * size, cfg.lr_base_batch, cfg.lr_scaling)


@dataclass
class Learner:
    model: torch.nn.Module  # uncompiled: its state_dict is what checkpoints hold
    forward_model: torch.nn.Module  # what the training step calls (compiled with --compile)
    optimizer: Any  # Horovod's DistributedOptimizer (or hvdat's packed variant) around the registry's optimizer
    compressor: Any  # per-rank state (natural's RNG, ef-sign's residuals) lives here
    autocast: Callable[[], ContextManager]
    scaler: Optional[torch.amp.GradScaler]
    fp32_bytes_per_step: int
    static_bytes_per_step: int  # allreduce compressors' exact bytes; packed ones are counted live

    @classmethod
    def build(cls, cfg: TrainConfig, splits: Splits, world: World) -> Learner:
        model = build_model(cfg.arch, splits.num_classes, splits.shape, splits.mean, splits.std).to(world.device)
        optimizer = build_optimizer(
            cfg.optimizer, model, peak_lr(cfg, world.size), cfg.momentum, cfg.weight_decay, cfg.nesterov
        )
        compressor = build_compressor(cfg.compression, seed_for(cfg.seed, world.rank, 3))
        # each gradient's exchange starts as soon as backward produces it; the wrapped optimizer builds a new one
        # from the param groups, so nothing may be loaded into `optimizer` before this
        optimizer = DistributedOptimizer(optimizer, model.named_parameters(), compressor, bucket_bytes(cfg.bucket_mb))
        shapes = [p.shape for p in model.parameters() if p.requires_grad]
        return cls(
            model,
            fast_path.compiled(model, cfg.compile),
            optimizer,
            compressor,
            fast_path.autocast(cfg.amp, world.device),
            fast_path.grad_scaler(cfg.amp, world.device),
            4 * sum(shape.numel() for shape in shapes),
            wire_bytes(cfg.compression, shapes),
        )

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, loss: torch.Tensor) -> None:
        """Backward, the gradients' exchange (started by Horovod's hooks during backward) and the update."""
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

    def bytes_sent_per_step(self) -> int:
        """Gradient bytes this worker hands to Horovod per step: counted for packed compressors, exact from the
        parameter sizes for allreduce ones."""
        return getattr(self.optimizer, "bytes_sent_per_step", 0) or self.static_bytes_per_step

    @property
    def has_rank_state(self) -> bool:
        """Whether the compressor keeps per-rank state that checkpoints must hold (ef-sign's residuals)."""
        return hasattr(self.compressor, "state_dict")

    def state_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
