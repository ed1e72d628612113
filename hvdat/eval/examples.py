"""The evaluated examples: the first n test images as [0,1] float batches with their labels, the file `hvdat eval`
writes of them for its workers, and the workers' copy in memory."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence, Tuple

import torch

EXAMPLES_FILE = "examples.pt"


def examples(test, start: int, stop: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Test examples [start, stop) as a [0,1] float batch and their labels."""
    from ..data import UInt8Images

    if isinstance(test, UInt8Images):
        return test.images[start:stop].to(device).float().div_(255), test.labels[start:stop].to(device)
    items = [test[i] for i in range(start, stop)]
    return torch.stack([x for x, _ in items]).to(device), torch.tensor([int(y) for _, y in items], device=device)


def save_examples(test, n_examples: int, path: Path) -> None:
    """The first n test examples, as `examples` gives them, in one file of the work folder (written by `hvdat
    eval`): the workers read it instead of loading the dataset (scikit-learn's import, a folder's listing and
    JPEG decoding: seconds of every rank's start-up). Stored as uint8 where that is exact ([0,1] images of k/255)."""
    x, y = examples(test, 0, n_examples, torch.device("cpu"))
    pixels = x.mul(255).round_().to(torch.uint8)
    exact = torch.equal(pixels.float().div_(255), x)
    torch.save({"x": pixels if exact else x, "y": y}, path)


class Examples:
    """The evaluated examples in memory (uint8 where `save_examples` stored them so): any of them by index, as
    `examples` gives them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    @classmethod
    def from_bytes(cls, blob: bytes) -> Examples:
        data = torch.load(io.BytesIO(blob), weights_only=True)
        return cls(data["x"], data["y"])

    @property
    def labels(self) -> list:
        return self.y.tolist()

    def take(self, indices: Sequence[int], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        x = self.x[index].to(device)
        return (x.float().div_(255) if x.dtype == torch.uint8 else x), self.y[index].to(device)
