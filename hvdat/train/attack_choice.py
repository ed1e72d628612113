"""The training attack in force: the registry's spec and its parameters. The collapse guard may switch it, so it is
part of the checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..attacks import ATTACKS, AttackParams, AttackSpec
from .config import TrainConfig


@dataclass(frozen=True)
class TrainingAttack:
    name: str
    params: AttackParams

    @property
    def spec(self) -> AttackSpec:
        return ATTACKS.get(self.name)

    @classmethod
    def from_config(cls, cfg: TrainConfig, name: Optional[str] = None, steps: Optional[int] = None) -> TrainingAttack:
        """`--attack` with its options, or another attack at the run's budget (`name`, e.g. the guard's fallback,
        with its default step and a random start)."""
        if name is None:
            params = ATTACKS.get(cfg.attack).params(
                cfg.eps, cfg.alpha, cfg.steps, cfg.norm, cfg.random_start, cfg.clean_weight, cfg.trades_beta
            )
            return cls(cfg.attack, params)
        params = ATTACKS.get(name).params(
            cfg.eps, None, steps or cfg.steps, cfg.norm, True, cfg.clean_weight, cfg.trades_beta
        )
        return cls(name, params)

    def with_alpha(self, alpha: float) -> TrainingAttack:
        return TrainingAttack(self.name, dataclasses.replace(self.params, alpha=alpha))

    def state_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "params": dict(self.params.__dict__)}

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> TrainingAttack:
        return cls(state["name"], AttackParams(**state["params"]))
