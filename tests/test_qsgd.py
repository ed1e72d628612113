"""DAT's quantizer (`--compression qsgd`, qsgd4, qsgd2): its statistics, its byte layout, its aggregate, its state,
unit by unit. Real Horovod: every width trains bit-identically on 3 ranks, its bytes counted, in
test_compression_horovod.py's job. Its per-rank state is natural's random stream, whose stop/resume test_signals.py
runs (not again for qsgd)."""

from __future__ import annotations

import math
import struct

import pytest
import torch

from hvdat.compression import COMPRESSORS, packing, wire_bytes
from hvdat.errors import UsageError
from hvdat.runtime.horovod_compression import build_compressor

WIDTHS = {"qsgd": 8, "qsgd4": 4, "qsgd2": 2}


def as_float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


@pytest.mark.parametrize("name", WIDTHS)
def test_qsgd_is_unbiased_with_the_variance_of_stochastic_rounding(name):
    """Every element's draws average to it, and their variance is (n/s)^2 f(1-f), f the fraction of s|x|/n
    (computed here from the formula in float64, not by the codec). One tensor of `draws` copies of x: each copy is
    an independent draw, against the norm n of the whole tensor."""
    x = torch.tensor([0.3, -0.41, 0.0, 1.2, -2.0, 5e-3, 0.77, -0.05])
    draws, s = 2000, 2 ** (WIDTHS[name] - 1) - 1
    n = as_float32(math.sqrt(draws * sum(v * v for v in x.double().tolist())))
    comp = build_compressor(name, 7)
    samples = comp.decompress(*comp.compress(x.repeat(draws, 1))).double()
    for i, value in enumerate(x.double().tolist()):
        scaled = s * abs(value) / n
        f = scaled - math.floor(scaled)
        step = n / s  # the two outcomes are step apart
        variance = step**2 * f * (1 - f)
        mean_error = abs(samples[:, i].mean().item() - value)
        assert mean_error <= 6 * math.sqrt(variance / draws) + 1e-6, (i, mean_error)
        # the sample variance of a two-point variable is step^2 p(1-p), p within 6 standard errors of f
        assert abs(samples[:, i].var(unbiased=False).item() - variance) <= 6 * step**2 * math.sqrt(f * (1 - f) / draws)
        lower = step * math.floor(scaled)  # every draw is one of the two neighbouring levels, with x's sign
        magnitude = samples[:, i].abs() if value else samples[:, i]
        assert torch.all(((magnitude - lower).abs() < 1e-5) | ((magnitude - lower - step).abs() < 1e-5))
        assert value == 0 or torch.all((samples[:, i] == 0) | (samples[:, i].sign() == math.copysign(1, value)))


def test_dat_byte_layout_norm_then_level_and_sign_per_byte():
    """x = [3, -4]: n = 5, s|x|/n = 76.2 and 101.6 at 8 bits (DAT: byte = level*2 + positive), 4.2 and 5.6 at 4
    bits (two codes per byte, element 0 in the low nibble); the random bits decide floor or ceil."""
    x = torch.tensor([3.0, -4.0])
    norm = list(struct.pack("<f", 5.0))
    for name, r, codes in [
        ("qsgd", (1 << 23) - 1, [76 * 2 + 1, 101 * 2]),  # largest draw: never rounds up (f < 1 - 2^-23)
        ("qsgd", 0, [77 * 2 + 1, 102 * 2]),  # zero draw: always rounds up (f > 0)
        ("qsgd4", 0, [(5 * 2 + 1) | (6 * 2) << 4]),
        ("qsgd2", 0, [(1 * 2 + 1) | (1 * 2) << 2]),  # levels 0.6 and 0.8 of 1 both round up
    ]:
        comp = build_compressor(name, 0)
        comp._stream.random_bits23 = lambda key, start, stop, device, r=r: torch.full((stop - start,), r)
        payload, ctx = comp.compress(x)
        assert payload.tolist() == norm + codes, name
        levels = [c >> 1 for c in codes] if name == "qsgd" else None
        if levels:
            assert comp.decompress(payload, ctx).tolist() == pytest.approx([5 * levels[0] / 127, -5 * levels[1] / 127])


def test_qsgd_aggregate_is_the_mean_of_the_workers_decoded_values_and_wire_bytes_count_it():
    for name, bits in WIDTHS.items():
        a, b = build_compressor(name, 1), build_compressor(name, 2)
        x, y = torch.randn(3, 111), torch.randn(3, 111) * 5
        (pa, ctx), (pb, _) = a.compress(x, name="w"), b.compress(y, name="w")
        assert pa.dtype == torch.uint8 and pa.numel() == 4 + math.ceil(333 * bits / 8) == wire_bytes(name, [(3, 111)])
        mean = (a.decompress(pa, ctx) + b.decompress(pb, ctx)) / 2
        assert torch.allclose(a.decompress(torch.cat([pa, pb]), ctx), mean, atol=1e-6)
        assert COMPRESSORS.get(name).bits_per_element == bits


def test_qsgd_state_is_its_random_streams_and_a_resume_draws_the_same_bytes():
    x = torch.randn(500)
    a = build_compressor("qsgd", 5)
    a.compress(x, name="x")
    b = build_compressor("qsgd", 99)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.compress(x, name="x")[0], b.compress(x, name="x")[0])
    assert not torch.equal(a.compress(x, name="x")[0], build_compressor("qsgd", 6).compress(x, name="x")[0])


def test_only_the_8_bit_qsgd_is_listed_and_other_widths_are_one_line_errors():
    assert "qsgd" in COMPRESSORS.names() and "qsgd4" not in COMPRESSORS.names()  # parametrized suites run it once
    assert "qsgd4" in COMPRESSORS and "qsgd2" in COMPRESSORS
    with pytest.raises(UsageError, match="qsgd4, qsgd2"):
        COMPRESSORS.get("qsgd3")


def test_the_torch_kernels_a_gpu_runs_give_the_same_bytes(monkeypatch):
    """On CUDA the random bits come from natural's torch hash, on CPU from its numpy twin: the same payload."""
    x = torch.randn(3000) * 0.1
    host = build_compressor("qsgd", 11).compress(x, name="w")[0]
    monkeypatch.setattr(packing, "NUMPY_ON_CPU", False)
    assert torch.equal(build_compressor("qsgd", 11).compress(x, name="w")[0], host)
