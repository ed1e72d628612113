"""The frozen training configuration: the single contract from the CLI to the workers, saved as `config.json`.

Every field that is a command-line option is declared here once (`option(...)`: help, panel, flags, parsing);
`hvdat.cli` builds `hvdat train`'s options from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from ..attacks import ATTACKS
from ..attacks.budget import parse_eps
from ..compression import COMPRESSORS
from ..data import DATASETS
from ..errors import UsageError, require_at_least
from ..frozen_config import FrozenConfig
from ..models import MODELS
from ..optim import OPTIMIZERS
from ..options import (
    ATTACK,
    BUCKET_MB,
    CLUSTER,
    DATA,
    DATA_DIR,
    FAST,
    NORM,
    OPTIM,
    OUTPUT,
    SEED,
    TENSORBOARD,
    THREADS,
    option,
)
from ..registry import Registry
from ..schedule import SCHEDULES


def _eps(value: Any, values: Dict[str, Any]) -> float:
    return parse_eps(value, norm=values["norm"])


def _alpha(value: Any, values: Dict[str, Any]) -> Optional[float]:
    return None if value is None else parse_eps(value, "alpha", values["norm"])


def _names(prefix: str, registry: Registry, suffix: str = "") -> Callable[[], str]:
    """Help that lists a registry's names (asked when the CLI is built)."""
    return lambda: f"{prefix}: {', '.join(registry.names())}{suffix}."


def _documented(prefix: str, registry: Registry) -> Callable[[], str]:
    """Help that lists a registry's names with each entry's own doc line."""
    return lambda: f"{prefix}: " + "; ".join(f"{name}: {registry.get(name).doc}" for name in registry.names())


@dataclass(frozen=True)
class TrainConfig(FrozenConfig):
    """Everything a worker needs to train. Field names match the CLI options."""

    MISSING_HINT = "point at a run directory made by `hvdat train`"

    # elastic (the launch options themselves are a LaunchSpec)
    commit_every: int = option(
        10, "Elastic: batches between state commits (a lost worker costs at most this many).", CLUSTER
    )
    # data
    dataset: str = option("digits", _names("Dataset", DATASETS), DATA)
    data_dir: Optional[str] = option(None, DATA_DIR, cli_type=Path)
    train_samples: int = option(0, "Use a fixed random subset of the training set (0: all).", DATA)
    test_samples: int = option(0, "Use a fixed random subset of the test set (0: all).", DATA)
    augment: bool = option(True, "Dataset-appropriate augmentation (crop and flip for CIFAR).", DATA)
    # model
    arch: str = option("small-cnn", _names("Model", MODELS, ", or any torchvision classifier (resnet50, ...)"), DATA)
    # adversarial training
    attack: str = option("pgd", _documented("Training attack", ATTACKS), ATTACK)
    eps: float = option(
        8 / 255,
        "Perturbation budget in [0,1] pixels: 8/255 or 0.031.",
        ATTACK,
        cli_type=str,
        parse=_eps,
        cli_default="8/255",
    )
    alpha: Optional[float] = option(
        None,
        "Attack step size (default: the attack's own, e.g. 2.5*eps/steps for PGD, 1.25*eps for FGSM-RS).",
        ATTACK,
        cli_type=str,
        parse=_alpha,
    )
    steps: int = option(10, "PGD/TRADES attack steps.", ATTACK)
    norm: str = option("linf", NORM)
    random_start: bool = option(True, "Start PGD from a random point in the eps-ball.", ATTACK)
    trades_beta: float = option(6.0, "TRADES' robustness weight.", ATTACK)
    clean_weight: float = option(0.0, "DAT's mixed loss: λ·CE(clean) + CE(adv).", ATTACK)
    replays: int = option(
        8, "Free-AT: replays of each minibatch (m); --epochs counts passes, the LR runs over epochs x m steps.", ATTACK
    )
    deat_max_k: int = option(0, "DEAT: most replays per minibatch (0: deat 8, deat-d 5, deat-p 4).", ATTACK)
    deat_gamma: float = option(
        1.0, "M+DEAT: K grows when an epoch's gradient magnitude exceeds gamma x the last.", ATTACK
    )
    deat_delay: int = option(3, "DEAT-d: epochs per extra replay.", ATTACK)
    deat_acc: float = option(0.4, "DEAT-p: train accuracy above which K grows.", ATTACK)
    attack_bn: str = option(
        "train", "BatchNorm during the attack: train (batch stats, running stats frozen) or eval.", ATTACK
    )
    # evaluation each epoch (PGD on a test subset)
    eval_samples: int = option(512, "Test images attacked with PGD after each epoch.", ATTACK)
    eval_steps: int = option(10, "PGD steps for that per-epoch robust accuracy.", ATTACK)
    # optimisation
    epochs: int = option(10, "Training epochs.", OPTIM)
    batch_size: int = option(128, "Batch size per worker.", OPTIM)
    lr: float = option(0.1, "Peak LR for a global batch of --lr-base-batch.", OPTIM)
    lr_base_batch: int = option(128, "Global batch that --lr is meant for.", OPTIM)
    lr_scaling: str = option("linear", "Scale LR with global batch: linear, sqrt or none.", OPTIM)
    optimizer: str = option("sgd", _names("Optimizer", OPTIMIZERS), OPTIM)
    momentum: float = option(0.9, "SGD/LARS momentum.", OPTIM)
    nesterov: bool = option(False, "Nesterov momentum (SGD/LARS).", OPTIM)
    weight_decay: float = option(5e-4, "Weight decay (not on BN or biases, except with dat-lamb: every tensor).", OPTIM)
    schedule: str = option("cosine", _names("LR schedule after warm-up", SCHEDULES), OPTIM)
    warmup_epochs: float = option(0.0, "Linear LR warm-up epochs.", OPTIM)
    accelat_window: int = option(5, "--schedule accelat: epochs of robust accuracy averaged.", OPTIM)
    accelat_cooldown: int = option(5, "--schedule accelat: epochs after a cut before the next.", OPTIM)
    accelat_min_gain: float = option(0.005, "--schedule accelat: a mean gain below this cuts the LR.", OPTIM)
    accelat_factor: float = option(0.8, "--schedule accelat: LR multiplier at each cut.", OPTIM)
    accelat_min_lr: float = option(1e-6, "--schedule accelat: the LR's floor.", OPTIM)
    milestones: Tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of training where lr drops 10x
    # system
    compression: str = option("none", _documented("Gradient compression", COMPRESSORS), CLUSTER)
    bucket_mb: float = option(0.0, BUCKET_MB)
    threads: int = option(0, THREADS)
    out: str = option(
        "runs/latest",
        "Run directory: config.json, metrics.jsonl, last.pt, best.pt, logs/.",
        OUTPUT,
        flags=("--out",),
        cli_type=Path,
    )
    seed: int = option(0, SEED)
    resume: bool = option(False, "Continue from --out/last.pt.", OUTPUT, flags=("--resume",))
    tensorboard: bool = option(True, TENSORBOARD)  # written by the launcher, from the job's events
    np: int = 1  # for the record (from the launch options); the launcher decides the real world size
    # unlabeled data (Carmon et al. 2019; DAT's CIFAR-10 + 500K): pseudo-labelled images mixed into each batch
    extra_data: Optional[str] = option(
        None, "Pseudo-labelled images (.npz from `hvdat pseudo-label`) mixed into every batch.", DATA, cli_type=Path
    )
    extra_fraction: float = option(0.5, "Share of each batch taken from --extra-data.", DATA)
    # catastrophic-overfitting guard: a PGD check each epoch; on collapse roll back and change the attack
    co_guard: bool = option(
        False,
        "Catastrophic-overfitting guard: a PGD check on fixed training images each epoch; "
        "on collapse roll back and switch attack.",
        ATTACK,
        flags=("--co-guard",),
    )
    co_guard_samples: int = option(256, "Training images the guard attacks.", ATTACK)
    co_guard_ratio: float = option(0.5, "Collapse: check accuracy below this fraction of its best.", ATTACK)
    co_guard_fallback: str = option("pgd", "Attack after a collapse (the same as --attack: half its step).", ATTACK)
    co_guard_steps: int = option(3, "Steps of the fallback attack.", ATTACK)
    # fast path (GPU; correct on CPU)
    amp: str = option("none", "Mixed precision for the training step: none, bf16 or fp16 (with a GradScaler).", FAST)
    channels_last: bool = option(False, "channels_last memory format.", FAST, flags=("--channels-last",))
    compile: bool = option(False, "torch.compile the model for the training step.", FAST, flags=("--compile",))

    def validate(self) -> TrainConfig:
        """Check every choice against its registry and every number against its range (UsageError on failure)."""
        from ..data import load_splits
        from .fast_path import AMP_DTYPES

        DATASETS.get(self.dataset)
        MODELS.get(self.arch)
        spec = ATTACKS.get(self.attack)
        OPTIMIZERS.get(self.optimizer)
        compressor = COMPRESSORS.get(self.compression)
        if compressor.needs_sgd and self.optimizer != "sgd":  # it sends each worker's SGD update
            raise UsageError(
                f"--compression {self.compression} needs --optimizer sgd, not {self.optimizer}",
                "use --optimizer sgd, or --compression sign/natural",
            )
        if not compressor.allows_fp16_amp and self.amp == "fp16":  # its state would hold loss-scaled values
            raise UsageError(
                f"--compression {self.compression} cannot run under --amp fp16: it folds gradients into "
                "its error feedback before the GradScaler unscales them",
                "use --amp bf16 (no loss scaling), or --compression sign/natural",
            )
        SCHEDULES.get(self.schedule)
        self._validate_methods(spec)
        if self.norm not in spec.norms:
            raise UsageError(
                f"attack {self.attack!r} does not support norm {self.norm!r}", f"use --norm {' or '.join(spec.norms)}"
            )
        parse_eps(self.eps, norm=self.norm)
        if self.alpha is not None and not self.alpha > 0:
            raise UsageError(f"--alpha must be positive, got {self.alpha}")
        require_at_least("--steps", self.steps)
        require_at_least("--epochs", self.epochs)
        require_at_least("--commit-every", self.commit_every)
        require_at_least("--batch-size", self.batch_size)
        require_at_least("--lr-base-batch", self.lr_base_batch)
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if self.lr_scaling not in ("linear", "sqrt", "none"):
            raise UsageError(f"unknown --lr-scaling {self.lr_scaling!r}", "choose from: linear, sqrt, none")
        if self.attack_bn not in ("train", "eval"):
            raise UsageError(f"unknown --attack-bn {self.attack_bn!r}", "choose from: train, eval")
        if self.clean_weight < 0 or self.trades_beta < 0 or self.warmup_epochs < 0:
            raise UsageError("--clean-weight, --trades-beta and --warmup-epochs must be >= 0")
        for count, name in (
            (self.train_samples, "--train-samples"),
            (self.test_samples, "--test-samples"),
            (self.eval_samples, "--eval-samples"),
            (self.threads, "--threads"),
            (self.bucket_mb, "--bucket-mb"),
        ):
            require_at_least(name, count, least=0)
        if self.amp not in AMP_DTYPES:
            raise UsageError(f"unknown --amp {self.amp!r}", f"choose from: {', '.join(AMP_DTYPES)}")
        if self.extra_data is not None:
            if not Path(self.extra_data).is_file():
                raise UsageError(
                    f"--extra-data {self.extra_data} does not exist",
                    "write it with `hvdat pseudo-label --model RUN --data-dir DIR --out extra.npz`",
                )
            if not 0.0 < self.extra_fraction < 1.0:
                raise UsageError(f"--extra-fraction must lie in (0, 1), got {self.extra_fraction}")
            if round(self.extra_fraction * self.batch_size) in (0, self.batch_size):
                raise UsageError(
                    f"--extra-fraction {self.extra_fraction} of --batch-size {self.batch_size} leaves "
                    "no labeled or no extra images per batch",
                    "raise --batch-size",
                )
        if self.co_guard:
            replayed = [name for name in (self.attack, self.co_guard_fallback) if ATTACKS.get(name).replayed]
            if replayed:  # the guard swaps the attack between minibatches; these replay each minibatch themselves
                raise UsageError(
                    f"--co-guard cannot switch to or from {replayed[0]!r}: it replays each minibatch with its own "
                    "perturbation",
                    "use --co-guard with fgsm, fgsm-rs, pgd or trades, and one of them as --co-guard-fallback",
                )
            require_at_least("--co-guard-samples", self.co_guard_samples)
            require_at_least("--co-guard-steps", self.co_guard_steps)
            if not 0.0 < self.co_guard_ratio < 1.0:
                raise UsageError(f"--co-guard-ratio must lie in (0, 1), got {self.co_guard_ratio}")
        DATASETS.get(self.dataset).check_dir(self.data_dir)
        if self.extra_data is not None:  # last: it needs the dataset's image shape and classes
            from ..data.extra import check_file

            splits = load_splits(self.dataset, self.data_dir, train_samples=1, test_samples=1)
            check_file(self.extra_data, splits.shape, splits.num_classes)
        return self

    def _validate_methods(self, spec) -> None:
        """Free-AT, DEAT and AccelAT's own settings."""
        if spec.replayed:
            require_at_least("--replays", self.replays)
            if self.deat_max_k < 0 or self.deat_gamma <= 0:
                raise UsageError("--deat-max-k must be >= 0 and --deat-gamma positive")
            require_at_least("--deat-delay", self.deat_delay)
            if self.amp == "fp16":  # the input gradient would come loss-scaled out of the weights' backward
                raise UsageError(f"--attack {self.attack} cannot run under --amp fp16", "use --amp bf16 or none")
        if self.schedule == "accelat":
            if not self.eval_samples:
                raise UsageError(
                    "--schedule accelat cuts the LR from the per-epoch robust accuracy", "set --eval-samples above 0"
                )
            require_at_least("--accelat-window", self.accelat_window)
            if self.accelat_cooldown < 0 or not 0 < self.accelat_factor <= 1 or self.accelat_min_lr < 0:
                raise UsageError("--accelat-cooldown must be >= 0, --accelat-factor in (0, 1], --accelat-min-lr >= 0")
