"""The registered datasets: digits (embedded), synthetic, CIFAR-10/100, ImageFolder and ImageNet."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError
from .folders import image_folder
from .in_memory import UInt8Images, crop_flip, subset
from .registry import CIFAR_MEAN, CIFAR_STD, Splits, dataset

# --- digits: real data shipped inside scikit-learn ---------------------------------------------------------------
DIGITS_SIDE = 16


@dataset("digits", needs_dir=False, doc="scikit-learn's 8x8 handwritten digits, upscaled to 16x16; ships embedded")
def _digits(data_dir, train_samples, test_samples) -> Splits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8 in [0,1]
    images = torch.nn.functional.interpolate(
        images, size=(DIGITS_SIDE, DIGITS_SIDE), mode="bilinear", align_corners=False
    ).clamp_(0, 1)
    images = (images * 255).round().to(torch.uint8)
    labels = torch.tensor(bunch.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = 360  # the usual 80/20 split of 1797 images
    test_idx, train_idx = order[:n_test].sort().values, order[n_test:].sort().values
    train = subset(images[train_idx], labels[train_idx], train_samples, 1)
    test = subset(images[test_idx], labels[test_idx], test_samples, 2)
    return Splits(UInt8Images(*train), UInt8Images(*test), 10, (1, DIGITS_SIDE, DIGITS_SIDE), (0.30,), (0.40,))


# --- synthetic: for benchmarks ------------------------------------------------------------------------------------
@dataset("synthetic", needs_dir=False, doc="random 3x32x32 images in 10 classes, for benchmarks")
def _synthetic(data_dir, train_samples, test_samples) -> Splits:
    n_train, n_test = train_samples or 4096, test_samples or 512

    def make(n, seed):  # one generator per split: the test split does not depend on --train-samples
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
        return UInt8Images(images, torch.randint(0, 10, (n,), generator=generator))

    return Splits(make(n_train, 0), make(n_test, 1), 10, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, crop_flip())


@dataset("imagefolder", needs_dir=True, doc="an ImageFolder layout: DIR/train/<class>/*, DIR/val|test/<class>/*")
def _imagefolder(data_dir, train_samples, test_samples) -> Splits:
    return image_folder(data_dir, train_samples, test_samples)


@dataset("imagenet", needs_dir=True, doc="ImageNet in ImageFolder layout: DIR/train/<wnid>/*, DIR/val/<wnid>/*")
def _imagenet(data_dir, train_samples, test_samples) -> Splits:
    return image_folder(data_dir, train_samples, test_samples, test_names=("val",))


# --- CIFAR: torchvision's release format, or an ImageFolder of its images ----------------------------------------
def _cifar(kind: str, data_dir: str, train_samples: int, test_samples: int) -> Splits:
    if (Path(data_dir) / "train").is_dir():
        return image_folder(data_dir, train_samples, test_samples)
    from torchvision import datasets

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    try:
        train, test = cls(data_dir, train=True, download=False), cls(data_dir, train=False, download=False)
    except RuntimeError:
        try:
            train = cls(data_dir, train=True, download=True)
            test = cls(data_dir, train=False, download=True)
        except Exception as exc:  # offline, proxy, disk full: all end the same way for the user
            raise UsageError(
                f"{kind} not found in {data_dir} and the download failed ({type(exc).__name__})",
                f"offline? put torchvision's {kind} files (e.g. cifar-10-batches-py/) or an "
                "ImageFolder layout (train/, test/) there",
            ) from None

    def tensors(split, n, seed):
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
        return subset(images, torch.tensor(split.targets), n, seed)

    return Splits(
        UInt8Images(*tensors(train, train_samples, 1)),
        UInt8Images(*tensors(test, test_samples, 2)),
        len(train.classes),
        (3, 32, 32),
        CIFAR_MEAN,
        CIFAR_STD,
        crop_flip(),
    )


_CIFAR_DOC = "torchvision's {} files in DIR (downloaded there when online), or DIR/train and DIR/test ImageFolders"


@dataset("cifar10", needs_dir=True, doc=_CIFAR_DOC.format("CIFAR-10"))
def _cifar10(data_dir, train_samples, test_samples) -> Splits:
    return _cifar("cifar10", data_dir, train_samples, test_samples)


@dataset("cifar100", needs_dir=True, doc=_CIFAR_DOC.format("CIFAR-100"))
def _cifar100(data_dir, train_samples, test_samples) -> Splits:
    return _cifar("cifar100", data_dir, train_samples, test_samples)
