"""Batches of a dataset's examples on a device, in a given order: the one input path of training and evaluation."""

from __future__ import annotations

from typing import Iterator, List, Tuple

import torch

from .in_memory import UInt8Images


def batches(
    dataset, indices: List[int], batch_size: int, device: torch.device, num_workers: int, full_only: bool = True
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Batches of the given indices: only full ones for training (every rank takes the same number of steps),
    all of them for evaluation (`full_only=False`). In-memory data is sliced directly, each batch pinned on CUDA
    (a slice of a pinned tensor is not pinned) so its copy is asynchronous; folders go through a DataLoader with
    pinned memory on CUDA."""
    if full_only and len(indices) >= batch_size:
        indices = indices[: len(indices) - len(indices) % batch_size]
    if isinstance(dataset, UInt8Images):
        order = torch.tensor(indices, dtype=torch.long)
        pin = device.type == "cuda"
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            images, labels = dataset.images[chunk], dataset.labels[chunk]
            if pin:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield (images.to(device, non_blocking=True).float().div_(255), labels.to(device, non_blocking=True))
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
