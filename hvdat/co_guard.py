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
import dataclasses
from typing import Dict, Optional

import torch

from .attacks import ATTACKS, pgd

MAX_ROLLBACKS = 3  # after that, training goes on unguarded rather than looping
MIN_BEST = 0.05  # a best check accuracy below this carries no signal (the model has not learnt robustness yet)


class CollapseGuard:
    def __init__(self, trainer):
        self.trainer = trainer
        self.best = 0.0
        self.rollbacks = 0
        self.snapshot = copy.deepcopy(trainer.state_dict())  # the start counts as good

    def check_accuracy(self) -> float:
        """PGD accuracy on the fixed training images (collective: every rank calls it)."""
        from .worker import batches, seed_for

        t, cfg = self.trainer, self.trainer.cfg
        n = min(cfg.co_guard_samples, len(t.splits.train))
        mine = list(range(t.rank, n, t.size))
        t.model.eval()
        generator = torch.Generator(t.device).manual_seed(seed_for(cfg.seed, t.rank, 1_000_033))
        correct = 0
        for x, y in batches(t.splits.train, mine, max(len(mine), 1), t.device, 0):
            x_adv = pgd(t.model, x, y, eps=cfg.eps, alpha=2.5 * cfg.eps / cfg.eval_steps, steps=cfg.eval_steps,
                        norm=cfg.norm, generator=generator)
            with torch.no_grad():
                correct += (t.model(x_adv).argmax(1) == y).sum().item()
        correct, total = t.ctx.allreduce_sum([correct, len(mine)])
        return correct / max(total, 1)

    def after_epoch(self, metrics: Dict) -> Dict:
        """Check the epoch just trained; on collapse roll back and switch the attack. Returns the keys to record."""
        t = self.trainer
        accuracy = self.check_accuracy()
        collapsed = (self.best >= MIN_BEST and accuracy < t.cfg.co_guard_ratio * self.best
                     and self.rollbacks < MAX_ROLLBACKS)
        record = {"co_guard_acc": accuracy, "co_guard_best": self.best, "co_guard_collapsed": collapsed,
                  "attack": t.attack_name, "attack_alpha": t.params.alpha, "attack_steps": t.params.steps}
        if not collapsed:
            self.best = max(self.best, accuracy)
            t.gather_compression_state()  # collective: the snapshot holds this epoch's EF residuals, not the last's
            self.snapshot = copy.deepcopy(t.state_dict())
            return record
        rollbacks = self.rollbacks + 1
        t.load_state_dict(copy.deepcopy(self.snapshot))  # also restores this guard's state of that time
        self.rollbacks = rollbacks
        name, params = self.fallback(t.attack_name, t.params)
        t.set_attack(name, params)
        record.update(co_guard_rolled_back_to_epoch=t.epoch, co_guard_switched_to=name,
                      co_guard_new_alpha=params.alpha, co_guard_new_steps=params.steps)
        return record

    def fallback(self, current: str, params):
        cfg = self.trainer.cfg
        if cfg.co_guard_fallback == current:
            return current, dataclasses.replace(params, alpha=params.alpha / 2)
        spec = ATTACKS.get(cfg.co_guard_fallback)
        return cfg.co_guard_fallback, spec.params(cfg.eps, None, cfg.co_guard_steps, cfg.norm, True,
                                                  cfg.clean_weight, cfg.trades_beta)

    def state_dict(self) -> Dict:
        return {"best": self.best, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: Optional[Dict]) -> None:
        if state:
            self.best, self.rollbacks = state["best"], state["rollbacks"]
