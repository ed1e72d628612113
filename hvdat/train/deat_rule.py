"""DEAT's rules for K, the replays per minibatch (Wang & Ruan, "Dynamic Efficient Adversarial Training Guided by
Gradient Magnitude"; wangaxe/DEAT FAST training/cifar10), as a pure state machine fed once per epoch.

- `deat` (M+DEAT, mdeat_cifar10.py): K = 1; after epoch 0 K = 2; after epoch 1 the threshold is gamma * MG; after
  each later epoch, if MG > threshold and K < Kmax, the threshold becomes gamma * MG and K += 1. MG is the epoch's
  sum of |d loss / d delta| at each minibatch's last replay.
- `deat-d` (deat-d_cifar10.py): K = min(epoch // delay + 1, Kmax).
- `deat-p` (deat-p_cifar10.py): K += 1 after an epoch whose train accuracy exceeds p, while K < Kmax.

Under Horovod MG and the accuracy are summed over ranks before they come here, so every rank decides the same K.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional


@dataclass
class DeatRule:
    variant: str  # deat, deat-d or deat-p (the attack's name)
    max_k: int
    gamma: float = 1.0
    delay: int = 3
    accuracy: float = 0.4
    k: int = 1  # the replays of the coming epoch (deat, deat-p)
    threshold: Optional[float] = None  # deat: MG an epoch must exceed to raise K

    def k_for(self, epoch: int) -> int:
        """The replays per minibatch in `epoch` (0-based)."""
        if self.variant == "deat-d":
            return min(epoch // self.delay + 1, self.max_k)
        return self.k

    def after_epoch(self, epoch: int, mg: float, train_acc: float) -> None:
        """Feed `epoch`'s results (MG and train accuracy summed over every rank)."""
        if self.variant == "deat":
            if epoch == 0:
                self.k = min(self.k + 1, self.max_k)
            elif epoch == 1:
                self.threshold = self.gamma * mg
            elif self.threshold is not None and mg > self.threshold and self.k < self.max_k:
                self.threshold = self.gamma * mg
                self.k += 1
        elif self.variant == "deat-p" and train_acc > self.accuracy and self.k < self.max_k:
            self.k += 1

    def state_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> DeatRule:
        return cls(**state)
