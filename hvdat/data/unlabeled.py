"""Folders of unlabeled images (any depth, sub-folder names ignored), decoded to uint8 arrays for pseudo-labelling."""

from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np


def image_files(root: str) -> List[str]:
    """Every image under root (any depth, sub-folder names ignored), sorted for a stable order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    found = [
        os.path.join(d, f)
        for d, _, names in os.walk(root, followlinks=True)
        for f in names
        if f.lower().endswith(IMG_EXTENSIONS)
    ]
    return sorted(found)


def decode(files: List[str], shape: Tuple[int, int, int]) -> np.ndarray:
    """uint8 images (N, C, H, W); a rank with no files gets an empty array of the model's shape, so the
    allgather of images still matches."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    mode = "L" if shape[0] == 1 else "RGB"

    def read(path: str) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))

    with ThreadPoolExecutor(max_workers=2) as pool:
        arrays = list(pool.map(read, files, chunksize=64))
    if not arrays:
        return np.zeros((0, *shape), dtype=np.uint8)
    images = np.stack(arrays)
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2).copy()
