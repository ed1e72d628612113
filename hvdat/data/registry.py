"""The dataset registry: what a dataset is (`Splits`: train and test sets, classes, shape, normalisation,
augmentation), how one is declared (`@dataset`), and `load_splits(name, ...)`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from torch.utils.data import Dataset

from ..errors import UsageError
from ..registry import Registry

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Splits:
    train: Dataset  # yields (image float [0,1] CxHxW or uint8, label)
    test: Dataset
    num_classes: int
    shape: Tuple[int, int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None  # batch-level, train only


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[[Optional[str], int, int], Splits]  # (data_dir, train_samples, test_samples)
    needs_dir: bool
    doc: str

    def check_dir(self, data_dir: Optional[str]) -> None:
        if not self.needs_dir:
            return
        if not data_dir:
            raise UsageError(f"dataset {self.name!r} needs --data-dir", self.doc)
        if not Path(data_dir).is_dir():
            raise UsageError(f"data dir {data_dir} does not exist", f"create it or fix --data-dir ({self.doc})")


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def dataset(name: str, needs_dir: bool, doc: str):
    def add(load):
        DATASETS.add(name, DatasetSpec(name, load, needs_dir, doc))
        return load

    return add


def load_splits(name: str, data_dir: Optional[str], train_samples: int = 0, test_samples: int = 0) -> Splits:
    spec = DATASETS.get(name)
    spec.check_dir(data_dir)
    return spec.load(data_dir, train_samples, test_samples)
