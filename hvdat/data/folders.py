"""ImageFolder layouts (`DIR/train/<class>/*`, `DIR/val|test/<class>/*`): small images decoded once into memory
(cached on disk, keyed on the files), large ones streamed through a DataLoader with torchvision transforms."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UsageError
from .in_memory import UInt8Images, crop_flip, take
from .registry import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, Splits

SMALL_IMAGE_MAX_SIDE = 64  # ImageFolders with images up to this size are decoded once into memory


def cache_dir() -> Path:
    root = Path(os.environ.get("HVDAT_CACHE", Path.home() / ".cache" / "hvdat"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _split_dir(root: Path, names: Sequence[str]) -> Optional[Path]:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def folder_files(folder: Path) -> Tuple[List[Tuple[str, int]], List[str]]:
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


def image_folder(root: str, train_samples: int, test_samples: int, test_names=("val", "test")) -> Splits:
    base = Path(root)
    train_dir, test_dir = _split_dir(base, ("train",)), _split_dir(base, test_names)
    if train_dir is None or test_dir is None:
        raise UsageError(
            f"{root} is not an ImageFolder dataset",
            f"expected {root}/train/<class>/* and {root}/{'|'.join(test_names)}/<class>/*",
        )
    splits = []
    for folder, n, seed in ((train_dir, train_samples, 1), (test_dir, test_samples, 2)):
        files, classes = folder_files(folder)
        index = take(n, len(files), seed)
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
        return Splits(
            UInt8Images(*small),
            UInt8Images(*test),
            len(classes),
            (channels, height, width),
            mean,
            std,
            crop_flip(padding=max(1, height // 8)),
        )
    from torchvision import transforms

    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )
    test_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    return Splits(
        _Files(train_files, train_tf),
        _Files(test_files, test_tf),
        len(classes),
        (3, 224, 224),
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
