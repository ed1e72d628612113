"""Datasets, one registry. Images are in [0,1]; normalisation lives inside the model (see models.Normalized).

Small-image datasets (digits, CIFAR, small ImageFolders) are held in memory as uint8 tensors and augmented per
batch with an explicit generator, so runs are reproducible and resume exactly. Large ImageFolders (ImageNet)
stream through a DataLoader with torchvision transforms.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import UsageError
from .registry import Registry

log = logging.getLogger(__name__)

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SMALL_IMAGE_MAX_SIDE = 64  # ImageFolders with images up to this size are decoded once into memory


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


# --- helpers ---------------------------------------------------------------------------------------------------
class UInt8Images(Dataset):
    """In-memory uint8 NCHW images; items come back as float in [0,1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index].float().div_(255), self.labels[index]


def _take(n: int, total: int, seed: int) -> Optional[torch.Tensor]:
    """A fixed random subset of n indices (None: keep all)."""
    if n <= 0 or n >= total:
        return None
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _subset(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int):
    index = _take(n, len(labels), seed)
    return (images, labels) if index is None else (images[index], labels[index])


def crop_flip(padding: int = 4) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Random crop with zero padding and horizontal flip, on a whole batch, drawn from `generator`."""

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # n x h
        cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)  # n x w
        cols = torch.where(flip.to(x.device)[:, None], cols.flip(1), cols)
        batch = torch.arange(n, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # n x h x w x c
        return out.permute(0, 3, 1, 2).contiguous()

    return augment


def cache_dir() -> Path:
    root = Path(os.environ.get("HVDAT_CACHE", Path.home() / ".cache" / "hvdat"))
    root.mkdir(parents=True, exist_ok=True)
    return root


# --- digits: real data shipped inside scikit-learn ---------------------------------------------------------------
DIGITS_SIDE = 16


@dataset("digits", needs_dir=False, doc="scikit-learn's 8x8 handwritten digits, upscaled to 16x16; ships embedded")
def _digits(data_dir, train_samples, test_samples) -> Splits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8 in [0,1]
    images = torch.nn.functional.interpolate(images, size=(DIGITS_SIDE, DIGITS_SIDE), mode="bilinear",
                                             align_corners=False).clamp_(0, 1)
    images = (images * 255).round().to(torch.uint8)
    labels = torch.tensor(bunch.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = 360  # the usual 80/20 split of 1797 images
    test_idx, train_idx = order[:n_test].sort().values, order[n_test:].sort().values
    train = _subset(images[train_idx], labels[train_idx], train_samples, 1)
    test = _subset(images[test_idx], labels[test_idx], test_samples, 2)
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


# --- ImageFolder layouts ----------------------------------------------------------------------------------------
def _split_dir(root: Path, names: Sequence[str]) -> Optional[Path]:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _folder_files(folder: Path) -> Tuple[List[Tuple[str, int]], List[str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise UsageError(f"{folder} has no class sub-folders", "expected the ImageFolder layout: split/class/image")
    index = {name: i for i, name in enumerate(classes)}
    return make_dataset(str(folder), index, IMG_EXTENSIONS), classes


def _cache_key(files: List[Tuple[str, int]]) -> str:
    """Names, labels, sizes and mtimes of exactly these files, in this order: a changed, added or replaced image
    (or another subset) is a new cache entry (one stat per file: about 0.2 s for CIFAR-10's 50,000)."""
    digest = hashlib.sha1(b"v3")
    for path, label in files:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode_small(files: List[Tuple[str, int]]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Decode small, equal-sized images once into a uint8 tensor (cached on disk); None if they are large."""
    from PIL import Image

    with Image.open(files[0][0]) as first:
        side = max(first.size)
        mode = "L" if first.mode in ("L", "1") else "RGB"
    if side > SMALL_IMAGE_MAX_SIDE:
        return None
    cache = cache_dir() / f"folder-{_cache_key(files)}.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return blob["images"], blob["labels"]

    def read(path: str) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        arrays = list(pool.map(read, [path for path, _ in files], chunksize=256))
    if any(a.shape != arrays[0].shape for a in arrays):
        return None
    images = torch.from_numpy(np.stack(arrays))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in files])
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"images": images, "labels": labels}, tmp)
    tmp.replace(cache)
    return images, labels


class _Files(Dataset):
    """Streaming ImageFolder over a fixed file list (for large images)."""

    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        from PIL import Image

        path, label = self.files[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def _image_folder(root: str, train_samples: int, test_samples: int, test_names=("val", "test")) -> Splits:
    base = Path(root)
    train_dir, test_dir = _split_dir(base, ("train",)), _split_dir(base, test_names)
    if train_dir is None or test_dir is None:
        raise UsageError(f"{root} is not an ImageFolder dataset",
                         f"expected {root}/train/<class>/* and {root}/{'|'.join(test_names)}/<class>/*")
    splits = []
    for folder, n, seed in ((train_dir, train_samples, 1), (test_dir, test_samples, 2)):
        files, classes = _folder_files(folder)
        index = _take(n, len(files), seed)
        if index is not None:
            files = [files[i] for i in index.tolist()]
        # ImageFolder lists files class by class; a fixed shuffle makes "the first N test images" (per-epoch
        # robust accuracy, hvdat eval --n-examples) a sample of every class rather than of the first few.
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed + 10)).tolist()
        splits.append(([files[i] for i in order], classes))
    (train_files, classes), (test_files, _) = splits
    small = _decode_small(train_files)
    if small is not None:
        test = _decode_small(test_files)
        channels, height, width = small[0].shape[1:]
        mean, std = (CIFAR_MEAN, CIFAR_STD) if channels == 3 else ((0.5,), (0.25,))
        return Splits(UInt8Images(*small), UInt8Images(*test), len(classes), (channels, height, width), mean, std,
                      crop_flip(padding=max(1, height // 8)))
    from torchvision import transforms

    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor()])
    test_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    return Splits(_Files(train_files, train_tf), _Files(test_files, test_tf), len(classes), (3, 224, 224),
                  IMAGENET_MEAN, IMAGENET_STD)


@dataset("imagefolder", needs_dir=True, doc="an ImageFolder layout: DIR/train/<class>/*, DIR/val|test/<class>/*")
def _imagefolder(data_dir, train_samples, test_samples) -> Splits:
    return _image_folder(data_dir, train_samples, test_samples)


@dataset("imagenet", needs_dir=True, doc="ImageNet in ImageFolder layout: DIR/train/<wnid>/*, DIR/val/<wnid>/*")
def _imagenet(data_dir, train_samples, test_samples) -> Splits:
    return _image_folder(data_dir, train_samples, test_samples, test_names=("val",))


# --- CIFAR: torchvision's release format, or an ImageFolder of its images ----------------------------------------
def _cifar(kind: str, data_dir: str, train_samples: int, test_samples: int) -> Splits:
    if (Path(data_dir) / "train").is_dir():
        return _image_folder(data_dir, train_samples, test_samples)
    from torchvision import datasets

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    try:
        train, test = cls(data_dir, train=True, download=False), cls(data_dir, train=False, download=False)
    except RuntimeError:
        try:
            train = cls(data_dir, train=True, download=True)
            test = cls(data_dir, train=False, download=True)
        except Exception as exc:  # offline, proxy, disk full: all end the same way for the user
            raise UsageError(f"{kind} not found in {data_dir} and the download failed ({type(exc).__name__})",
                             f"offline? put torchvision's {kind} files (e.g. cifar-10-batches-py/) or an "
                             "ImageFolder layout (train/, test/) there") from None

    def tensors(split, n, seed):
        images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
        return _subset(images, torch.tensor(split.targets), n, seed)

    return Splits(UInt8Images(*tensors(train, train_samples, 1)), UInt8Images(*tensors(test, test_samples, 2)),
                  len(train.classes), (3, 32, 32), CIFAR_MEAN, CIFAR_STD, crop_flip())


_CIFAR_DOC = "torchvision's {} files in DIR (downloaded there when online), or DIR/train and DIR/test ImageFolders"


@dataset("cifar10", needs_dir=True, doc=_CIFAR_DOC.format("CIFAR-10"))
def _cifar10(data_dir, train_samples, test_samples) -> Splits:
    return _cifar("cifar10", data_dir, train_samples, test_samples)


@dataset("cifar100", needs_dir=True, doc=_CIFAR_DOC.format("CIFAR-100"))
def _cifar100(data_dir, train_samples, test_samples) -> Splits:
    return _cifar("cifar100", data_dir, train_samples, test_samples)
