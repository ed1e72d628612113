"""Datasets (one registry: digits, synthetic, CIFAR, ImageFolder, ImageNet), batching, pseudo-labelled extra images
and unlabeled folders. The maths side: imports no horovod, typer or rich."""

from . import builtin  # noqa: F401  (registers the datasets)
from .batches import batches
from .in_memory import UInt8Images, crop_flip
from .registry import DATASETS, DatasetSpec, Splits, load_splits

__all__ = ["DATASETS", "DatasetSpec", "Splits", "UInt8Images", "batches", "crop_flip", "load_splits"]
