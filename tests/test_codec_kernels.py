"""The compiled host kernels (`hvdat.compression.kernels`, numba) against the numpy steps they fuse: the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvdat.compression import kernels, packing
from hvdat.compression.natural import NaturalCompressor
from hvdat.compression.sign import SignCompressor


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    """The kernels on every tensor size, not only from packing.COMPILED_MIN elements."""
    monkeypatch.setattr(packing, "COMPILED_MIN", 0)


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


def same_floats(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same float32 bits, NaN matching any NaN."""
    return a.shape == b.shape and bool(((a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("codec", [SignCompressor, NaturalCompressor], ids=["sign", "natural"])
def test_decode_kernels_give_the_numpy_floats(codec, monkeypatch):
    """Arbitrary gathered bytes (every code, and scales/headers that are negative, zero, subnormal, inf or NaN), k
    rows (sign's kernel: k = 2; other k take the numpy path either way)."""
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 4):
        for numel in (8, 1000, 8 * packing.SMALL + 8, 1 << 16):
            row = codec.wire_bytes(numel)
            for _ in range(3):
                gathered = torch.from_numpy(rng.integers(0, 256, k * row, dtype=np.uint8))
                if codec is SignCompressor and rng.random() < 0.5:  # mostly ordinary scales
                    for r in range(k):
                        gathered[r * row : r * row + 4] = torch.tensor([rng.random()], dtype=torch.float32).view(
                            torch.uint8
                        )
                ctx = (torch.Size([numel]), torch.float32, torch.device("cpu"))
                results = []
                for compiled in (True, False):
                    monkeypatch.setattr(kernels, "ENABLED", compiled)
                    results.append(codec.decompress(gathered, ctx))
                assert same_floats(*results), (codec, k, numel)


def test_small_tensors_use_the_kernels_once_a_large_one_loaded_them(monkeypatch):
    """Below COMPILED_MIN the kernels run only when already imported (numba's start-up is then paid)."""
    monkeypatch.setattr(packing, "COMPILED_MIN", 1 << 16)
    monkeypatch.setattr(packing, "_loaded", False)
    assert packing.compiled(1000) is None
    assert packing.compiled(1 << 16) is kernels  # imports them
    assert packing.compiled(1000) is kernels
    monkeypatch.setattr(kernels, "ENABLED", False)
    assert packing.compiled(1 << 20) is None
    monkeypatch.setattr(packing, "NUMPY_ON_CPU", False)
    monkeypatch.setattr(kernels, "ENABLED", True)
    assert packing.compiled(1 << 20) is None
