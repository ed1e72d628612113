"""Pseudo-labelled extra images mixed into every training batch (`hvdat train --extra-data extra.npz`).

As in Carmon et al. 2019 ("Unlabeled Data Improves Adversarial Robustness") and DAT's CIFAR-10 + 500K setup: a
standard model labels unlabeled images (`hvdat pseudo-label`), and each batch of B images then holds
round(F*B) of them next to B - round(F*B) labeled ones. An epoch is one pass over the labeled images; the extra
images are drawn with replacement from a per-batch generator, so a resumed run repeats an uninterrupted one.

The file is an `.npz` with `images` (uint8, N x C x H x W), `labels` (int64, N) and optionally `confidence`
(float32, N) and `files` (the source paths).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from ..errors import UsageError

_HINT = "write it with `hvdat pseudo-label`; it needs `images` and `labels` arrays"
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _not_pseudo_labels(path: str, exc: Exception) -> UsageError:
    return UsageError(f"--extra-data {path} is not a pseudo-label file ({type(exc).__name__}: {exc})", _HINT)


def _check(
    path: str,
    dtype: np.dtype,
    image_shape: Tuple[int, ...],
    labels: np.ndarray,
    shape: Tuple[int, int, int],
    num_classes: int,
) -> None:
    """The file fits the training data: uint8 images of its shape, one label each, in its classes."""
    if dtype != np.uint8 or len(image_shape) != 4 or tuple(image_shape[1:]) != tuple(shape):
        raise UsageError(
            f"--extra-data {path} holds {dtype} images of shape {tuple(image_shape[1:])}",
            f"the training data is uint8 {tuple(shape)}; pseudo-label images of that size",
        )
    if len(labels) != image_shape[0] or image_shape[0] == 0:
        raise UsageError(f"--extra-data {path} has {image_shape[0]} images and {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UsageError(
            f"--extra-data {path} has labels outside 0..{num_classes - 1}",
            "was it labelled by a model of another dataset?",
        )


def check_file(path: str, shape: Tuple[int, int, int], num_classes: int) -> None:
    """`ExtraImages.load`'s checks, for the launcher: the images' dtype and shape come from their .npy header, so
    no image is read (only the labels, one number an image)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("images.npy") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            image_shape, _, dtype = read_header(handle)
        with np.load(path, allow_pickle=False) as blob:
            labels = blob["labels"]
    except _READ_ERRORS as exc:
        raise _not_pseudo_labels(path, exc) from None
    _check(path, dtype, image_shape, labels, shape, num_classes)


@dataclass
class ExtraImages:
    images: torch.Tensor  # uint8 N x C x H x W
    labels: torch.Tensor  # int64 N

    @classmethod
    def load(cls, path: str, shape: Tuple[int, int, int], num_classes: int) -> ExtraImages:
        try:
            with np.load(path, allow_pickle=False) as blob:
                images, labels = blob["images"], blob["labels"]
        except _READ_ERRORS as exc:
            raise _not_pseudo_labels(path, exc) from None
        _check(path, images.dtype, images.shape, labels, shape, num_classes)
        return cls(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """n images (float in [0,1]) and their pseudo-labels, drawn with replacement."""
        index = torch.randint(0, len(self.labels), (n,), generator=generator)
        return self.images[index].to(device).float().div_(255), self.labels[index].to(device)


def extra_per_batch(fraction: float, batch_size: int) -> int:
    return int(round(fraction * batch_size))


def save(path: Path, images: np.ndarray, labels: np.ndarray, confidence: np.ndarray, files) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(
        tmp,
        images=images,
        labels=labels.astype(np.int64),
        confidence=confidence.astype(np.float32),
        files=np.asarray(files, dtype=str),
    )
    tmp.replace(path)
