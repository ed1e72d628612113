"""The trainer's side of the replayed methods (`--attack free`, `deat`, `deat-d`, `deat-p`): each minibatch is
replayed several times, every replay one forward/backward on x + delta whose weight gradient goes through Horovod
(its hooks fire: one backward per replay, as in the authors' code) to an optimiser step, and whose input gradient
moves delta (hvdat.attacks.replay).

- FreeReplays keeps one perturbation buffer per rank across minibatches and epochs: it is this rank's own state,
  saved in its rank-state shard so a resumed run continues exactly.
- DeatReplays draws a fresh uniform start per minibatch, runs K replays, sums MG = |grad| at the last replay over
  the epoch, and feeds MG (summed over ranks) to DeatRule, whose state is in the shared checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch

from ..attacks import ATTACKS
from ..attacks.replay import replay_loss, replay_update, uniform_start
from ..errors import HvdatError
from ..runtime.world import World
from .config import TrainConfig
from .deat_rule import DeatRule

if TYPE_CHECKING:
    from .trainer import Trainer


def agree(world: World, name: str, decision: Any) -> None:
    """Every rank must have decided the same (rank-summed inputs make it so); say so loudly if not."""
    if world.size == 1:
        return
    decisions = world.allgather_object(decision, name=f"agree.{name}")
    if any(d != decisions[0] for d in decisions):
        raise HvdatError(f"ranks disagree on {name}: {decisions}")


class Replays:
    """One method's replays; the Trainer calls `train_batch` per minibatch, `carry` before a mid-epoch checkpoint
    and `end_epoch` after the epoch's sums are known."""

    def __init__(self, cfg: TrainConfig, world: World, rows: int, shape: Tuple[int, ...]):
        self.cfg, self.world = cfg, world

    def steps(self, epoch: int) -> int:
        raise NotImplementedError

    def lr_position(self, trainer: Trainer, position: float, replay: int) -> Tuple[float, int]:
        """(schedule position, steps per epoch) of replay `replay` of the minibatch at `position`."""
        return position, trainer.steps_per_epoch

    def start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def keep(self, delta: torch.Tensor, last_grad: torch.Tensor) -> None:
        """After the minibatch's replays."""

    def train_batch(
        self,
        trainer: Trainer,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        epoch: int,
        position: float,
    ) -> Tuple[float, int]:
        """The minibatch's replays; (summed loss, correct) of the last one, as the authors report."""
        learner, params = trainer.learner, trainer.attack.params
        delta = self.start(x, generator)
        for replay in range(self.steps(epoch)):
            learner.set_lr(trainer.lr_for(*self.lr_position(trainer, position, replay)))
            delta.requires_grad_(True)
            with learner.autocast():
                loss, logits = replay_loss(learner.forward_model, x, delta, y)
            learner.step(loss)  # one backward: the weights' gradient (Horovod) and delta's
            grad = delta.grad.detach()
            delta = replay_update(delta, grad, x, params.eps, params.alpha)
            trainer.position.step += 1
        self.keep(delta, grad)
        return loss.item() * len(y), (logits.argmax(1) == y).sum().item()

    def carry(self) -> None:
        """Collective, before a mid-epoch checkpoint: fold this epoch's per-rank sums into the shared state."""

    def end_epoch(self, epoch: int, train_acc: float) -> Dict[str, Any]:
        """Collective: the epoch's decisions, as metrics."""
        return {}

    def state_dict(self) -> Optional[Dict[str, Any]]:
        return None

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def rank_state_dict(self) -> Optional[Dict[str, Any]]:
        return None

    def load_rank_state(self, own: Optional[Dict[str, Any]], everyone: List[Dict[str, Any]]) -> None:
        pass

    @staticmethod
    def build(cfg: TrainConfig, world: World, rows: int, shape: Tuple[int, ...]) -> Optional[Replays]:
        """The method of `--attack`, or None when its minibatches are not replayed."""
        if not ATTACKS.get(cfg.attack).replayed:
            return None
        kind = FreeReplays if cfg.attack == "free" else DeatReplays
        return kind(cfg, world, rows, shape)


class FreeReplays(Replays):
    def __init__(self, cfg: TrainConfig, world: World, rows: int, shape: Tuple[int, ...]):
        super().__init__(cfg, world, rows, shape)
        # sized for a full batch; a shorter last batch uses (and moves) its first rows, as the authors' delta[:n]
        self.buffer = torch.zeros((rows, *shape), device=world.device)

    def steps(self, epoch: int) -> int:
        return self.cfg.replays

    def lr_position(self, trainer: Trainer, position: float, replay: int) -> Tuple[float, int]:
        m = self.cfg.replays  # an epoch is a pass: the schedule runs over epochs x m optimiser steps
        return position * m + replay, trainer.steps_per_epoch * m

    def start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.buffer

    def keep(self, delta: torch.Tensor, last_grad: torch.Tensor) -> None:
        self.buffer = delta.detach()

    def rank_state_dict(self) -> Dict[str, Any]:
        return {"free_delta": self.buffer.detach().cpu()}

    def load_rank_state(self, own: Optional[Dict[str, Any]], everyone: List[Dict[str, Any]]) -> None:
        """Its own buffer; after a change of world size, that of the old rank with this number (mod the old size):
        any buffer is a valid perturbation, the carried one is only a warmer start."""
        if own is None and everyone:
            own = everyone[self.world.rank % len(everyone)]
        if own is not None and own.get("free_delta") is not None and own["free_delta"].shape == self.buffer.shape:
            self.buffer = own["free_delta"].to(self.buffer.device)


class DeatReplays(Replays):
    def __init__(self, cfg: TrainConfig, world: World, rows: int, shape: Tuple[int, ...]):
        super().__init__(cfg, world, rows, shape)
        spec = ATTACKS.get(cfg.attack)
        self.rule = DeatRule(
            cfg.attack, cfg.deat_max_k or spec.max_replays, cfg.deat_gamma, cfg.deat_delay, cfg.deat_acc
        )
        self.mg = 0.0  # this rank's sum this epoch; rank 0 also holds what every rank summed before a resume
        self.carried = 0.0  # every rank's sum of this epoch's batches before a mid-epoch checkpoint

    def steps(self, epoch: int) -> int:
        return self.rule.k_for(epoch)

    def start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return uniform_start(x, self.cfg.eps, generator)

    def keep(self, delta: torch.Tensor, last_grad: torch.Tensor) -> None:
        self.mg += last_grad.abs().sum().item()

    def carry(self) -> None:
        (self.carried,) = self.world.allreduce_sum([self.mg])

    def end_epoch(self, epoch: int, train_acc: float) -> Dict[str, Any]:
        (mg,) = self.world.allreduce_sum([self.mg])
        k = self.rule.k_for(epoch)
        self.rule.after_epoch(epoch, mg, train_acc)
        self.mg = self.carried = 0.0
        agree(self.world, "DEAT's K", self.rule.state_dict())
        return {"deat_k": k, "deat_mg": mg, "deat_next_k": self.rule.k_for(epoch + 1)}

    def state_dict(self) -> Dict[str, Any]:
        return {"rule": self.rule.state_dict(), "carried_mg": self.carried}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.rule = DeatRule.from_state(state["rule"])
        self.carried = state.get("carried_mg", 0.0)
        self.mg = self.carried if self.world.rank == 0 else 0.0
