"""Small datasets held in memory as uint8 tensors, their fixed random subsets, and batch-level augmentation."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.data import Dataset


class UInt8Images(Dataset):
    """In-memory uint8 NCHW images; items come back as float in [0,1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index].float().div_(255), self.labels[index]


def take(n: int, total: int, seed: int) -> Optional[torch.Tensor]:
    """A fixed random subset of n indices (None: keep all)."""
    if n <= 0 or n >= total:
        return None
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def subset(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int):
    index = take(n, len(labels), seed)
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
