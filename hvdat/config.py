"""The frozen run configuration: the single contract from the CLI to the workers, saved as `config.json`."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

from .errors import UsageError
from .frozen_config import FrozenConfig

CONFIG_FILE = "config.json"


def parse_eps(text: str | float, what: str = "eps", norm: str = "linf") -> float:
    """Parse an epsilon given as a fraction (`8/255`) or a decimal (`0.031`). An L-inf budget lies in (0, 1]
    (pixels are in [0,1]); an L2 or L1 one is a norm of the whole image and may exceed 1 (ImageNet's L2 3.0)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(?:/\s*([0-9]*\.?[0-9]+))?\s*", text)
        if not match:
            raise UsageError(f"invalid {what} {text!r}", "write it as a fraction like 8/255 or a decimal like 0.031")
        value = float(match.group(1))
        if match.group(2) is not None:
            denominator = float(match.group(2))
            if denominator == 0:
                raise UsageError(f"invalid {what} {text!r}", "the denominator is zero")
            value /= denominator
    if norm != "linf":
        if not (0.0 < value < math.inf):
            raise UsageError(f"{what} {text} must be positive and finite")
    elif not (0.0 < value <= 1.0) or math.isnan(value):
        raise UsageError(f"{what} {text} is outside (0, 1]", "pixels are in [0,1], so use e.g. 8/255 for L-inf")
    return value


@dataclass(frozen=True)
class TrainConfig(FrozenConfig):
    """Everything a worker needs to train. Field names match the CLI options."""

    MISSING_HINT = "point at a run directory made by `hvdat train`"

    # data
    dataset: str = "digits"
    data_dir: Optional[str] = None
    train_samples: int = 0  # 0: the whole split
    test_samples: int = 0
    augment: bool = True  # dataset-appropriate augmentation (crop+flip for CIFAR-like data)
    # model
    arch: str = "small-cnn"
    # adversarial training
    attack: str = "pgd"
    eps: float = 8 / 255
    alpha: Optional[float] = None  # None: the attack's documented default
    steps: int = 10
    norm: str = "linf"
    random_start: bool = True
    trades_beta: float = 6.0
    clean_weight: float = 0.0  # DAT's mixed loss: clean_weight * CE(clean) + CE(adv)
    attack_bn: str = "train"  # BN during the attack: batch stats without updating running stats, or eval
    # evaluation each epoch (PGD on a test subset)
    eval_samples: int = 512
    eval_steps: int = 10
    # optimisation
    epochs: int = 10
    batch_size: int = 128  # per worker
    lr: float = 0.1  # for a global batch of lr_base_batch, scaled by --lr-scaling
    lr_base_batch: int = 128
    lr_scaling: str = "linear"
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: Tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of training where lr drops 10x
    # system
    compression: str = "none"
    seed: int = 0
    threads: int = 0  # torch threads per worker; 0: cores / local ranks
    out: str = "runs/latest"
    resume: bool = False
    np: int = 1  # for the record; the launcher decides the real world size
    commit_every: int = 10  # elastic: batches between commits (what a lost worker can cost)
    # unlabeled data (Carmon et al. 2019; DAT's CIFAR-10 + 500K): pseudo-labelled images mixed into each batch
    extra_data: Optional[str] = None  # .npz written by `hvdat pseudo-label`
    extra_fraction: float = 0.5  # share of each batch drawn from extra_data
    # catastrophic-overfitting guard: a PGD check each epoch; on collapse roll back and change the attack
    co_guard: bool = False
    co_guard_samples: int = 256  # fixed training images the check attacks (PGD-eval_steps)
    co_guard_ratio: float = 0.5  # collapse: check accuracy below this fraction of its best so far
    co_guard_fallback: str = "pgd"  # attack after a collapse; the same attack as --attack halves its step
    co_guard_steps: int = 3  # steps of the fallback attack
    # fast path (GPU; correct on CPU)
    amp: str = "none"  # none, bf16, fp16 (fp16 with a GradScaler)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model

    @property
    def resolved_alpha(self) -> float:
        if self.alpha is not None:
            return self.alpha
        from .attacks import ATTACKS

        return ATTACKS.get(self.attack).default_alpha(self.eps, self.steps)

    def validate(self) -> "TrainConfig":
        """Check every choice against its registry and every number against its range (UsageError on failure)."""
        from . import data, models, optim
        from .attacks import ATTACKS
        from .compression import COMPRESSORS
        from .fast_path import AMP_DTYPES
        from .schedule import SCHEDULES

        data.DATASETS.get(self.dataset)
        models.MODELS.get(self.arch)
        spec = ATTACKS.get(self.attack)
        optim.OPTIMIZERS.get(self.optimizer)
        COMPRESSORS.get(self.compression)
        if self.compression == "ef-sign" and self.optimizer != "sgd":  # it sends each worker's SGD update
            raise UsageError(f"--compression ef-sign needs --optimizer sgd, not {self.optimizer}",
                             "use --optimizer sgd, or --compression sign/natural")
        if self.compression == "ef-sign" and self.amp == "fp16":  # its residuals would hold loss-scaled values
            raise UsageError("--compression ef-sign cannot run under --amp fp16: it folds gradients into its "
                             "error feedback before the GradScaler unscales them",
                             "use --amp bf16 (no loss scaling), or --compression sign/natural")
        SCHEDULES.get(self.schedule)
        if self.norm not in spec.norms:
            raise UsageError(f"attack {self.attack!r} does not support norm {self.norm!r}",
                             f"use --norm {' or '.join(spec.norms)}")
        parse_eps(self.eps, norm=self.norm)
        if self.alpha is not None and not self.alpha > 0:
            raise UsageError(f"--alpha must be positive, got {self.alpha}")
        _positive("--steps", self.steps)
        _positive("--epochs", self.epochs)
        _positive("--commit-every", self.commit_every)
        _positive("--batch-size", self.batch_size)
        _positive("--lr-base-batch", self.lr_base_batch)
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if self.lr_scaling not in ("linear", "sqrt", "none"):
            raise UsageError(f"unknown --lr-scaling {self.lr_scaling!r}", "choose from: linear, sqrt, none")
        if self.attack_bn not in ("train", "eval"):
            raise UsageError(f"unknown --attack-bn {self.attack_bn!r}", "choose from: train, eval")
        if self.clean_weight < 0 or self.trades_beta < 0 or self.warmup_epochs < 0:
            raise UsageError("--clean-weight, --trades-beta and --warmup-epochs must be >= 0")
        for count, name in ((self.train_samples, "--train-samples"), (self.test_samples, "--test-samples"),
                            (self.eval_samples, "--eval-samples"), (self.threads, "--threads")):
            if count < 0:
                raise UsageError(f"{name} must be >= 0, got {count}")
        if self.amp not in AMP_DTYPES:
            raise UsageError(f"unknown --amp {self.amp!r}", f"choose from: {', '.join(AMP_DTYPES)}")
        if self.extra_data is not None:
            if not Path(self.extra_data).is_file():
                raise UsageError(f"--extra-data {self.extra_data} does not exist",
                                 "write it with `hvdat pseudo-label --model RUN --data-dir DIR --out extra.npz`")
            if not 0.0 < self.extra_fraction < 1.0:
                raise UsageError(f"--extra-fraction must lie in (0, 1), got {self.extra_fraction}")
            if round(self.extra_fraction * self.batch_size) in (0, self.batch_size):
                raise UsageError(f"--extra-fraction {self.extra_fraction} of --batch-size {self.batch_size} leaves "
                                 "no labeled or no extra images per batch", "raise --batch-size")
        if self.co_guard:
            ATTACKS.get(self.co_guard_fallback)
            _positive("--co-guard-samples", self.co_guard_samples)
            _positive("--co-guard-steps", self.co_guard_steps)
            if not 0.0 < self.co_guard_ratio < 1.0:
                raise UsageError(f"--co-guard-ratio must lie in (0, 1), got {self.co_guard_ratio}")
        data.DATASETS.get(self.dataset).check_dir(self.data_dir)
        if self.extra_data is not None:  # last: it needs the dataset's image shape and classes
            from .extra import check_file

            splits = data.load_splits(self.dataset, self.data_dir, train_samples=1, test_samples=1)
            check_file(self.extra_data, splits.shape, splits.num_classes)
        return self


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UsageError(f"{name} must be >= 1, got {value}")


def config_fields() -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


__all__ = ["TrainConfig", "parse_eps", "CONFIG_FILE", "config_fields", "field"]
