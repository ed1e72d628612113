"""The compiled host kernels (`hvdat.compression.kernels`, numba) against the numpy steps they fuse: the same bytes."""

from __future__ import annotations

import pytest
import torch

from hvdat.compression import kernels
from hvdat.compression.natural import NaturalCompressor


def natural_payloads(x: torch.Tensor, compiled: bool, monkeypatch) -> list:
    """Three successive encodes of x under two names (the key advances per name), with or without the kernels."""
    monkeypatch.setattr(kernels, "ENABLED", compiled)
    codec = NaturalCompressor(seed=12345)
    return [codec.encode(x, torch.float32, name) for name in ("a", "b", "a", "a")]


@pytest.mark.parametrize(
    "numel",
    [0, 1, 7, 8, 1000, kernels.BLOCK - 1, kernels.BLOCK, kernels.BLOCK + 1, 3 * kernels.BLOCK + 5, 1 << 20 | 3],
)
def test_natural_kernel_encodes_the_numpy_bytes(numel, monkeypatch):
    g = torch.Generator().manual_seed(numel)
    x = torch.randn(numel, generator=g) * torch.logspace(-30, 30, numel).clamp(min=1e-38)[torch.randperm(numel)]
    if numel > 8:  # zeros, -0.0, powers of two, subnormals, fp32's largest values: the rounding's edge cases
        x[:8] = torch.tensor([0.0, -0.0, 1.0, -0.5, 1e-40, -3e-39, 3.4e38, -3.0e38])
    compiled = natural_payloads(x, True, monkeypatch)
    reference = natural_payloads(x, False, monkeypatch)
    for got, expected in zip(compiled, reference):
        assert got.dtype == torch.uint8 and torch.equal(got, expected), numel
