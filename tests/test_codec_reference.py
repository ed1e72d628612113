"""The torch codecs against the numpy codecs they replaced (`tests/reference_codecs`, a frozen copy).

sign and ef-sign must encode the same bytes; natural the same bytes when both draw the same 23-bit random integers;
every codec must decode any gathered payload to the same floats (bit for bit; NaNs compared as NaNs). Each test runs
twice on the CPU: with the host kernels (numpy, what CPU tensors use) and with the torch kernels that every other
device (CUDA) runs, and once more with tiny pieces so that the cache-sized chunking of large tensors is exercised on
small ones.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_codecs as ref
import torch

from hvdat.compression import packing
from hvdat.compression.ef_sign import EFSignCompressor, blocks
from hvdat.compression.natural import PAIR_TABLE_MIN, NaturalCompressor, _hash_bits23_numpy, hash_bits23
from hvdat.compression.sign import SignCompressor

SHAPES = [
    (0,),
    (1,),
    (7,),
    (8,),
    (9,),
    (63,),
    (129,),
    (1001,),
    (4099,),
    (2, 1),
    (3, 5),
    (5, 4),
    (6, 3),
    (4, 9),
    (16, 12),
    (33, 129),
    (64, 3, 7, 7),
    (7, 2, 3, 3),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CASES = ["normal", "wide", "zeros", "specials", "tiny", "huge"]


@pytest.fixture(params=["host", "torch", "pieces"])
def kernels(request, monkeypatch):
    """host: the numpy kernels CPU tensors use; torch: the kernels of every other device, on the CPU; pieces: the
    host kernels with tiny cache-sized pieces."""
    monkeypatch.setattr(packing, "NUMPY_ON_CPU", request.param != "torch")
    if request.param == "pieces":
        monkeypatch.setattr(packing, "CPU_CHUNK", 64)
        monkeypatch.setattr(packing, "SUM_CHUNK", 64)
    return request.param


def make(shape, dtype, case: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if case == "wide":  # exponents over a wide range, both signs
        x = x * torch.exp2(torch.randint(-60, 60, shape, generator=g).float())
    elif case == "zeros":
        x = torch.where(torch.rand(shape, generator=g) < 0.5, torch.zeros(shape), -torch.zeros(shape))
    elif case == "specials":
        specials = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 2.0**-130, -(2.0**-140), 3e38, -1e38, 1.0])
        pick = torch.randint(0, len(specials), shape, generator=g)
        x = torch.where(torch.rand(shape, generator=g) < 0.3, specials[pick], x)
    elif case == "tiny":  # subnormals and the smallest normals
        x = x * 2.0**-128
    elif case == "huge":
        x = x.clamp(-1, 1) * 3.4e38
    return x.to(dtype)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bits (NaN matches any NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.reshape(-1), b.reshape(-1)
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[a.dtype]
    return bool(((a.view(bits) == b.view(bits)) | (torch.isnan(a) & torch.isnan(b))).all())


def same_payload(got: torch.Tensor, expected: torch.Tensor, kernels: str, scales: int = 0) -> bool:
    """The same bytes. The torch kernels (those of the GPU) may write another NaN as a scale (which NaN an addition
    of two different NaNs keeps is up to the hardware and compiler; CUDA has one NaN): the `scales` fp32 headers are
    then compared as floats, NaN matching NaN; the bits and all else byte for byte."""
    if kernels != "torch":
        return got.dtype == torch.uint8 and torch.equal(got, expected)
    head = 4 * scales
    return same(got[:head].view(torch.float32), expected[:head].view(torch.float32)) and torch.equal(
        got[head:], expected[head:]
    )


def payloads(codec_class, shape, dtype, k: int, seed: int):
    """k reference payloads of one tensor shape (the first with special values), back to back, and their ctx."""
    parts = []
    for i in range(k):
        x = make(shape, dtype, "specials" if i == 0 else "wide", seed + i)
        payload, ctx = (codec_class(i) if codec_class is ref.NaturalCompressor else codec_class()).compress(x, name="t")
        parts.append(payload)
    return torch.cat(parts), ctx


# --- sign -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sign_encodes_the_reference_bytes(kernels, dtype, case):
    for i, shape in enumerate(SHAPES):
        x = make(shape, dtype, case, i)
        expected, _ = ref.SignCompressor.compress(x)
        got, ctx = SignCompressor.compress(x)
        assert same_payload(got, expected, kernels, scales=1), (shape, dtype, case)
        assert ctx == (x.shape, x.dtype, x.device)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sign_decodes_k_payloads_to_the_reference_floats(kernels, k, dtype):
    for i, shape in enumerate(SHAPES):
        gathered, ctx = payloads(ref.SignCompressor, shape, dtype, k, 10 * i)
        assert same(SignCompressor.decompress(gathered, ctx), ref.SignCompressor.decompress(gathered, ctx)), shape


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sign_decodes_arbitrary_bytes_like_the_reference(kernels, k):
    rng = np.random.default_rng(k)
    for shape in [(1,), (9,), (333,), (4, 17), (2048,)]:
        row = SignCompressor.wire_bytes(int(np.prod(shape)))
        for _ in range(8):  # random scales: negative, zero, subnormal, inf and NaN included
            gathered = torch.from_numpy(rng.integers(0, 256, k * row, dtype=np.uint8))
            ctx = (torch.Size(shape), torch.float32, torch.device("cpu"))
            assert same(SignCompressor.decompress(gathered, ctx), ref.SignCompressor.decompress(gathered, ctx))


# --- ef-sign --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ef_sign_encodes_the_reference_bytes_and_keeps_the_same_residuals(kernels, dtype, case):
    for i, shape in enumerate(SHAPES):
        old, new = ref.EFSignCompressor(), EFSignCompressor()
        for step in range(3):  # the residual carries over: later steps encode p = u + e
            x = make(shape, dtype, case if step != 1 else "normal", 100 * i + step)
            expected, _ = old.compress(x, name="w")
            got, _ = new.compress(x, name="w")
            assert same_payload(got, expected, kernels, scales=blocks(shape)), (shape, dtype, case, step)
            assert same(new.residuals["w"], old.residuals["w"]), (shape, dtype, case, step)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ef_sign_decodes_k_payloads_to_the_reference_floats(kernels, k, dtype):
    for i, shape in enumerate(SHAPES):
        gathered, ctx = payloads(ref.EFSignCompressor, shape, dtype, k, 10 * i)
        assert same(EFSignCompressor.decompress(gathered, ctx), ref.EFSignCompressor.decompress(gathered, ctx)), shape


@pytest.mark.parametrize("k", [1, 2, 3])
def test_ef_sign_decodes_arbitrary_bytes_like_the_reference(kernels, k):
    rng = np.random.default_rng(k)
    for shape in [(1,), (9,), (333,), (4, 17), (6, 3), (16, 12), (2048,)]:
        row = EFSignCompressor.wire_bytes(shape)
        for _ in range(8):
            gathered = torch.from_numpy(rng.integers(0, 256, k * row, dtype=np.uint8))
            ctx = (torch.Size(shape), torch.float32, torch.device("cpu"))
            assert same(EFSignCompressor.decompress(gathered, ctx), ref.EFSignCompressor.decompress(gathered, ctx))


# --- natural --------------------------------------------------------------------------------------------------------
def same_draws(old: ref.NaturalCompressor, new: NaturalCompressor, numel: int, seed: int) -> None:
    """Make both encoders round with the same 23-bit integers."""
    draws = np.random.default_rng(seed).integers(0, 1 << 23, numel, dtype=np.uint32)
    old.random_bits23 = lambda n: draws[:n].copy()
    new.random_bits23 = lambda key, start, stop, device: torch.from_numpy(draws[start:stop].view(np.int32).copy())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_natural_encodes_the_reference_bytes_with_the_same_random_integers(kernels, dtype, case):
    for i, shape in enumerate(SHAPES):
        x = make(shape, dtype, case, i)
        old, new = ref.NaturalCompressor(0), NaturalCompressor(0)
        same_draws(old, new, x.numel(), i)
        expected, _ = old.compress(x)
        got, _ = new.compress(x)
        assert torch.equal(got, expected), (shape, dtype, case)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_natural_decodes_k_payloads_to_the_reference_floats(kernels, k, dtype):
    for i, shape in enumerate([*SHAPES, (PAIR_TABLE_MIN + 5,)]):
        gathered, ctx = payloads(ref.NaturalCompressor, shape, dtype, k, 10 * i)
        assert same(NaturalCompressor.decompress(gathered, ctx), ref.NaturalCompressor.decompress(gathered, ctx)), shape


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_natural_decodes_arbitrary_bytes_like_the_reference(kernels, k):
    rng = np.random.default_rng(k)
    for numel in [1, 7, 300, PAIR_TABLE_MIN + 3]:  # any header byte, any code (NaN, inf, -0.0, beyond the window)
        gathered = torch.from_numpy(rng.integers(0, 256, k * NaturalCompressor.wire_bytes(numel), dtype=np.uint8))
        for dtype in DTYPES:
            ctx = (torch.Size([numel]), dtype, torch.device("cpu"))
            assert same(NaturalCompressor.decompress(gathered, ctx), ref.NaturalCompressor.decompress(gathered, ctx))


def test_natural_random_integers_are_the_same_on_the_host_and_in_torch(monkeypatch):
    for key, start, stop in [(0, 0, 1), (2**64 - 1, 5, 1000), (0x0123456789ABCDEF, 1 << 16, (1 << 16) + 4097)]:
        host = _hash_bits23_numpy(key, start, stop).view(np.int32).copy()
        monkeypatch.setattr(packing, "NUMPY_ON_CPU", False)
        device = hash_bits23(key, start, stop, torch.device("cpu")).numpy().copy()
        monkeypatch.setattr(packing, "NUMPY_ON_CPU", True)
        assert np.array_equal(host, device) and host.min() >= 0 and host.max() < 1 << 23


# --- the exact sums the formats rest on -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_torch_pairwise_sum_is_numpys_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    sizes = [*range(0, 300), 511, 1000, 1001, 4097, 10007, 65536, 100003]
    for n in sizes:
        rows = 3 if n < 5000 else 1
        values = (rng.standard_normal((rows, n)) * np.exp2(rng.integers(-40, 40, (rows, n)))).astype(dtype)
        if n % 3 == 0:
            values = np.abs(values)
        expected = np.add.reduce(values, axis=1)
        got = packing.pairwise_sum_rows_torch(torch.from_numpy(values)).numpy()
        assert np.array_equal(got.view(np.uint8), expected.view(np.uint8)), n


def test_the_host_sums_in_pieces_are_numpys_bit_for_bit(monkeypatch):
    rng = np.random.default_rng(1)
    monkeypatch.setattr(packing, "SUM_CHUNK", 200)
    for shape in [(1, 5000), (1, 4097), (1, 129), (40, 300), (3, 1000)]:
        values = (rng.standard_normal(shape) * np.exp2(rng.integers(-40, 40, shape))).astype(np.float32)
        bits = np.empty(packing.packed_len(values.size), np.uint8)
        scales = packing.l1_scales_and_signs_numpy(values, bits)
        expected = np.add.reduce(np.abs(values), axis=1) / np.float32(shape[1])
        assert np.array_equal(scales.view(np.uint8), expected.view(np.uint8))
        assert np.array_equal(bits, np.packbits(values.reshape(-1) < 0, bitorder="little"))


def test_the_mean_of_scales_is_numpys_float64_mean():
    rng = np.random.default_rng(2)
    for k in [*range(1, 20), 130, 300]:
        scales = (rng.standard_normal(k) * np.exp2(rng.integers(-100, 100, k))).astype(np.float32)
        if k % 5 == 0:
            scales[k // 2] = np.inf
        expected = np.float32(scales.astype(np.float64).mean())
        host = packing.mean_as_float64([float(v) for v in scales])
        device = packing.mean_as_float64(torch.from_numpy(scales)).numpy()[0]
        assert (np.isnan(expected) and np.isnan(host) and np.isnan(device)) or expected == host == device


# --- decoding into the gradient's memory (what the exchange does) --------------------------------------------------
@pytest.mark.parametrize(
    "new, old",
    [
        (SignCompressor, ref.SignCompressor),
        (EFSignCompressor, ref.EFSignCompressor),
        (NaturalCompressor, ref.NaturalCompressor),
    ],
    ids=["sign", "ef-sign", "natural"],
)
def test_decoding_into_the_gradient_gives_the_reference_floats_and_reuses_its_memory(kernels, new, old):
    """`packing.with_destination(ctx, grad)`: the aggregate is written over grad (garbage there must not leak in)
    when grad is a contiguous float32 tensor that holds whole bytes of elements; otherwise a fresh tensor, and grad
    is left alone. Either way the floats are the reference's."""
    for k in (1, 2, 3):
        for i, shape in enumerate([(7,), (8,), (4, 17), (16, 12), (64, 3, 7, 7), (PAIR_TABLE_MIN + 8,)]):
            for dtype in (torch.float32, torch.float16):
                gathered, ctx = payloads(old, shape, dtype, k, 10 * i + k)
                expected = old.decompress(gathered, ctx)
                grads = {
                    "fits": torch.full(shape, float("nan"), dtype=dtype),
                    "strided": torch.full(tuple(shape) + (2,), float("nan"), dtype=dtype)[..., 0],
                    "unaligned": torch.full((math.prod(shape) + 1,), float("nan"), dtype=dtype)[1:].view(shape),
                }
                for how, grad in grads.items():
                    before = grad.clone()
                    got = new.decompress(gathered, packing.with_destination(ctx, grad))
                    assert same(got, expected), (new, k, shape, dtype, how)
                    numel = grad.numel()
                    whole = new is NaturalCompressor or numel % 8 == 0
                    reused = how == "fits" and dtype == torch.float32 and whole
                    assert (got.data_ptr() == grad.data_ptr()) == reused, (new, k, shape, dtype, how)
                    if not reused:
                        assert same(grad, before), (new, k, shape, dtype, how)
