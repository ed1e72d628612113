"""Catastrophic-overfitting guard (`hvdat train --co-guard`).

Single-step adversarial training (FGSM without random init, or FGSM-RS at a large step) can collapse within an
epoch: PGD accuracy falls to about zero while FGSM training accuracy jumps (Wong et al. 2020, "Fast is better than
free", Sec. 5; Andriushchenko & Flammarion 2020). After every epoch the guard attacks a fixed set of training images
(no augmentation, the first --co-guard-samples, sharded over ranks) with PGD-eval_steps. When that accuracy drops
below --co-guard-ratio times its best so far, the epoch is discarded: every rank restores the state saved after the
last good epoch (model, optimizer, step, all in memory; ranks hold identical copies, so no communication) and
training continues with --co-guard-fallback (another attack: e.g. PGD with --co-guard-steps steps; the same attack:
half its step size). The decision is recorded in metrics.jsonl (`co_guard_*` keys).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Dict, Optional

import torch

from ..attacks.accuracy import pgd_correct
from ..data import batches
from ..runtime.seeds import seed_for
from .attack_choice import TrainingAttack
from .config import TrainConfig

if TYPE_CHECKING:
    from .trainer import Trainer

MAX_ROLLBACKS = 3  # after that, training goes on unguarded rather than looping
MIN_BEST = 0.05  # a best check accuracy below this carries no signal (the model has not learnt robustness yet)


class CollapseGuard:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.best = 0.0
        self.rollbacks = 0
        self.snapshot: Optional[Dict[str, Any]] = None  # the trainer's state after the last good epoch
        self.rank_snapshot: Optional[Dict[str, Any]] = None  # this rank's own part of it (EF residuals)

    def keep(self, state: Dict[str, Any], rank_state: Dict[str, Any]) -> None:
        """Remember a good state (deep copies; each rank keeps its own part) to roll back to."""
        self.snapshot, self.rank_snapshot = copy.deepcopy(state), copy.deepcopy(rank_state)

    def check_accuracy(self, trainer: Trainer) -> float:
        """PGD accuracy on the fixed training images (collective: every rank calls it)."""
        cfg, world, model = self.cfg, trainer.world, trainer.learner.model
        train = trainer.inputs.splits.train
        mine = list(range(world.rank, min(cfg.co_guard_samples, len(train)), world.size))
        model.eval()
        generator = torch.Generator(world.device).manual_seed(seed_for(cfg.seed, world.rank, 1_000_033))
        correct, _ = pgd_correct(
            model,
            batches(train, mine, max(len(mine), 1), world.device, 0),
            eps=cfg.eps,
            steps=cfg.eval_steps,
            norm=cfg.norm,
            generator=generator,
        )
        correct, total = world.allreduce_sum([correct, len(mine)])
        return correct / max(total, 1)

    def after_epoch(self, trainer: Trainer) -> Dict[str, Any]:
        """Check the epoch just trained; on collapse roll back and switch the attack. Returns the keys to record."""
        accuracy = self.check_accuracy(trainer)
        collapsed = (
            self.best >= MIN_BEST and accuracy < self.cfg.co_guard_ratio * self.best and self.rollbacks < MAX_ROLLBACKS
        )
        attack = trainer.attack
        record = {
            "co_guard_acc": accuracy,
            "co_guard_best": self.best,
            "co_guard_collapsed": collapsed,
            "attack": attack.name,
            "attack_alpha": attack.params.alpha,
            "attack_steps": attack.params.steps,
        }
        if not collapsed:
            self.best = max(self.best, accuracy)
            self.keep(trainer.state_dict(), trainer.rank_state_dict())  # with this epoch's EF residuals
            return record
        rollbacks = self.rollbacks + 1
        trainer.load_state_dict(copy.deepcopy(self.snapshot))  # also restores this guard's state of that time
        trainer.load_rank_state(copy.deepcopy(self.rank_snapshot))
        self.rollbacks = rollbacks
        trainer.attack = self.fallback(attack)
        record.update(
            co_guard_rolled_back_to_epoch=trainer.position.epoch,
            co_guard_switched_to=trainer.attack.name,
            co_guard_new_alpha=trainer.attack.params.alpha,
            co_guard_new_steps=trainer.attack.params.steps,
        )
        return record

    def fallback(self, current: TrainingAttack) -> TrainingAttack:
        cfg = self.cfg
        if cfg.co_guard_fallback == current.name:
            return current.with_alpha(current.params.alpha / 2)
        return TrainingAttack.from_config(cfg, name=cfg.co_guard_fallback, steps=cfg.co_guard_steps)

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if state:
            self.best, self.rollbacks = state["best"], state["rollbacks"]
