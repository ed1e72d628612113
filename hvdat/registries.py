"""Every registry by the plural name `hvdat list` shows."""

from __future__ import annotations

from typing import Dict

from .registry import Registry


def all_registries() -> Dict[str, Registry]:
    from .attacks import ATTACKS
    from .compression import COMPRESSORS
    from .data import DATASETS
    from .models import MODELS
    from .optim import OPTIMIZERS
    from .schedule import SCHEDULES

    return {"models": MODELS, "datasets": DATASETS, "attacks": ATTACKS, "optimizers": OPTIMIZERS,
            "schedules": SCHEDULES, "compressors": COMPRESSORS}
