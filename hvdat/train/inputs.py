"""What a training step eats: the dataset's splits, this rank's batches, pseudo-labelled extra images mixed in,
augmentation and the memory format, each drawn from a per-batch generator so a resumed run repeats exactly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch

from ..data import Splits, UInt8Images, batches, load_splits
from ..data.extra import ExtraImages, extra_per_batch
from ..runtime.seeds import seed_for
from . import fast_path
from .config import TrainConfig


@dataclass
class TrainInputs:
    cfg: TrainConfig
    splits: Splits
    extra: Optional[ExtraImages]  # pseudo-labelled images (--extra-data)
    extra_per_batch: int
    labeled_batch: int  # labeled images per batch: --batch-size less the extra ones
    loader_workers: int  # DataLoader processes for folders streamed from disk (0: in memory)

    @classmethod
    def load(cls, cfg: TrainConfig) -> TrainInputs:
        splits = load_splits(cfg.dataset, cfg.data_dir, cfg.train_samples, cfg.test_samples)
        extra = ExtraImages.load(cfg.extra_data, splits.shape, splits.num_classes) if cfg.extra_data else None
        per_batch = extra_per_batch(cfg.extra_fraction, cfg.batch_size) if extra else 0
        workers = 0 if isinstance(splits.train, UInt8Images) else min(4, os.cpu_count() or 1)
        return cls(cfg, splits, extra, per_batch, cfg.batch_size - per_batch, workers)

    def batches(self, indices: List[int], device: torch.device) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Full labeled batches of these training indices, in order."""
        return batches(self.splits.train, indices, self.labeled_batch, device, self.loader_workers)

    def complete(
        self, x: torch.Tensor, y: torch.Tensor, rank: int, epoch: int, batch: int, device: torch.device
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Batch `batch` of `epoch` as the step sees it: extra images appended, augmented, in the memory format."""
        cfg = self.cfg
        if self.extra is not None:
            generator = torch.Generator().manual_seed(seed_for(cfg.seed, rank, epoch, 3, batch))
            x_extra, y_extra = self.extra.sample(self.extra_per_batch, generator, device)
            x, y = torch.cat([x, x_extra]), torch.cat([y, y_extra])
        if cfg.augment and self.splits.augment is not None:
            x = self.splits.augment(x, torch.Generator().manual_seed(seed_for(cfg.seed, rank, epoch, 2, batch)))
        return x.contiguous(memory_format=fast_path.memory_format(cfg.channels_last)), y
