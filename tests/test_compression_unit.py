"""Compressor math without a cluster: statistics, packing, votes, EF bookkeeping and every edge case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hvdat.compression import COMPRESSORS, packing, wire_bytes
from hvdat.compression.natural import NaturalCompressor
from hvdat.runtime.horovod_compression import Compression, build_compressor

PACKED = ["sign", "ef_sign", "natural", "qsgd"]


def gathered(*payloads: torch.Tensor) -> torch.Tensor:
    """What hvd.allgather returns: the ranks' payloads back to back."""
    return torch.cat(payloads)


def test_registry_and_mirror_cover_the_same_compressors():
    assert COMPRESSORS.names() == ["none", "fp16", "sign", "ef-sign", "natural", "qsgd"]
    for name in COMPRESSORS.names():
        member = getattr(Compression, name.replace("-", "_"))
        x = torch.randn(10)
        payload, ctx = (
            member().compress(x) if isinstance(member, type) and getattr(member, "packed", 0) else member.compress(x)
        )
        assert member.decompress(payload, ctx).shape == x.shape


# --- natural ------------------------------------------------------------------------------------------------------
def test_natural_is_unbiased_and_its_second_moment_is_at_most_9_8():
    x = torch.tensor([1.0, 1.5, 1.25, -3.0, 0.7, -1e-3, 5e-8, 1.999], dtype=torch.float32)
    draws = 20000
    comp = NaturalCompressor(seed=1)
    # one tensor of `draws` copies: every element gets its own independent draw
    samples = comp.decompress(*comp.compress(x.repeat(draws, 1))).double()
    xd = x.double()
    # each sample lies on one of the two neighbouring powers of two, so its std is at most |x|/2 (f(1-f) <= 1/4);
    # 6 standard errors makes a false failure practically impossible
    tolerance = 6 * xd.abs() / 2 / math.sqrt(draws)
    assert torch.all((samples.mean(0) - xd).abs() <= tolerance), (samples.mean(0), xd)
    second = (samples**2).mean(0)
    assert torch.all(second <= 9 / 8 * xd**2 * (1 + 6 / math.sqrt(draws))), second / xd**2


def test_natural_gives_neighbouring_powers_of_two_and_keeps_exact_ones():
    comp = NaturalCompressor(seed=0)
    x = torch.randn(10000) * 10
    y = comp.decompress(*comp.compress(x))
    exponent = torch.floor(torch.log2(x.abs()))
    assert torch.all((y.abs() == 2.0**exponent) | (y.abs() == 2.0 ** (exponent + 1)))
    assert torch.equal(torch.sign(y), torch.sign(x))
    powers = torch.tensor([1.0, -2.0, 0.5, 2.0**-20, -(2.0**30), 0.0])
    assert torch.equal(comp.decompress(*comp.compress(powers)), powers)


def test_natural_subnormals_are_rounded_without_bias_to_zero_or_the_smallest_normal():
    comp = NaturalCompressor(seed=3)
    tiny = torch.full((200000,), 2.0**-130)  # subnormal in fp32, alone in its tensor
    y = comp.decompress(*comp.compress(tiny))
    assert set(y.unique().tolist()) <= {0.0, 2.0**-126}
    assert abs(y.double().mean().item() / 2.0**-130 - 1) < 0.05  # p = 1/16, 200k draws: std of mean ~ 2%


def test_natural_saturates_at_the_dtypes_largest_power_and_flushes_below_the_window():
    comp = NaturalCompressor(seed=0)
    big = torch.full((1000,), 3.0e38)  # rounds up to 2^128 = inf half the time without saturation
    assert torch.all(comp.decompress(*comp.compress(big)) == 2.0**127)
    half = torch.full((1000,), 60000.0, dtype=torch.float16)
    out = comp.decompress(*comp.compress(half))
    assert out.dtype == torch.float16 and torch.all(out == 2.0**15)
    window = torch.tensor([1.0, 2.0**-126, -(2.0**-125)])  # 2^125 below the top: under the window
    assert comp.decompress(*comp.compress(window)).tolist() == [1.0, 0.0, 0.0]


def test_natural_payload_is_one_byte_per_element_plus_a_header():
    comp = NaturalCompressor(seed=0)
    payload, _ = comp.compress(torch.randn(1001))
    assert payload.dtype == torch.uint8 and payload.numel() == 1002 == COMPRESSORS.get("natural").wire_bytes(1001)


def test_natural_aggregate_is_the_mean_of_the_workers_decoded_values():
    a, b = NaturalCompressor(seed=1), NaturalCompressor(seed=2)
    x, y = torch.randn(333), torch.randn(333)
    (pa, ctx), (pb, _) = a.compress(x), b.compress(y)
    mean = (a.decompress(pa, ctx) + b.decompress(pb, ctx)) / 2
    assert torch.equal(a.decompress(gathered(pa, pb), ctx), mean)


def test_natural_state_is_the_seed_and_counters_resumes_exactly_and_does_not_depend_on_order():
    x, y = torch.randn(1000) * 3, torch.randn(77)
    a = NaturalCompressor(seed=5)
    a.compress(x, name="x")
    a.compress(y, name="y")
    state = a.state_dict()
    assert state == {"seed": 5, "draws": {"x": 1, "y": 1}}  # plain ints: a checkpoint holds no device tensor
    b = NaturalCompressor(seed=99)
    b.load_state_dict(state)
    assert torch.equal(a.compress(x, name="x")[0], b.compress(x, name="x")[0])  # a resumed run draws the same bits
    first, second = NaturalCompressor(seed=1), NaturalCompressor(seed=1)
    y1, x1 = second.compress(y, name="y")[0], second.compress(x, name="x")[0]
    assert torch.equal(first.compress(x, name="x")[0], x1) and torch.equal(first.compress(y, name="y")[0], y1)
    assert not torch.equal(first.compress(x, name="x")[0], x1)  # the next step draws anew
    assert not torch.equal(NaturalCompressor(seed=2).compress(x, name="x")[0], x1)  # another rank, another stream
    old = NaturalCompressor(seed=3)
    old.load_state_dict({"rng": {"bit_generator": "PCG64"}})  # the numpy codec's checkpoint: keeps its own stream
    assert old.state_dict()["seed"] == 3


def test_ef_sign_state_dict_holds_host_copies():
    ef = Compression.ef_sign()
    ef.compress(torch.randn(4, 3), name="w")
    ef.momentum["w"] = torch.ones(12)
    state = ef.state_dict()
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in state.values())
    state["w"] += 1  # a copy, not the live residual
    assert not torch.equal(state["w"], ef.residuals["w"])


# --- sign and packing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("numel", [1, 7, 8, 9, 63, 1001])
def test_sign_packing_round_trips_odd_lengths(numel):
    bits = torch.from_numpy(np.random.default_rng(numel).random(numel) < 0.5)
    packed = packing.pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packing.packed_len(numel)
    assert torch.equal(packed, torch.from_numpy(np.packbits(bits.numpy(), bitorder="little")))
    assert torch.equal(packing.unpack_bits(packed, numel).bool(), bits)


def test_sign_round_trip_is_scaled_sign_with_one_bit_per_element():
    x = torch.tensor([3.0, -1.0, 0.0, -0.0, 2.0, -6.0, 1.0])
    payload, ctx = Compression.sign.compress(x)
    assert payload.numel() == 4 + 1 == wire_bytes("sign", [7])
    scale = x.abs().mean().item()
    assert torch.allclose(Compression.sign.decompress(payload, ctx), torch.tensor([1, -1, 1, 1, 1, -1, 1.0]) * scale)


def test_majority_vote_and_ties_go_to_zero():
    sign = Compression.sign
    w1 = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    w2 = torch.tensor([1.0, -1.0, 1.0, -1.0, -2.0])
    w3 = torch.tensor([-1.0, -1.0, -1.0, -1.0, 2.0])
    payloads = [sign.compress(w)[0] for w in (w1, w2, w3)]
    ctx = sign.compress(w1)[1]
    mean_scale = np.mean([w.abs().mean().item() for w in (w1, w2, w3)])
    three = sign.decompress(gathered(*payloads), ctx)
    assert torch.allclose(three, torch.tensor([1.0, -1, -1, -1, 1]) * mean_scale)
    two = sign.decompress(gathered(*payloads[:2]), ctx)
    scale2 = np.mean([w1.abs().mean().item(), w2.abs().mean().item()])
    assert torch.allclose(two, torch.tensor([1.0, 0, 0, -1, 0]) * scale2)


# --- EF-sign ------------------------------------------------------------------------------------------------------
def test_ef_bookkeeping_sent_plus_residual_equals_the_sum_of_gradients():
    ef = Compression.ef_sign()
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(101, generator=generator) for _ in range(20)]
    sent = torch.zeros(101, dtype=torch.float64)
    for g in grads:
        payload, ctx = ef.compress(g, name="w")
        sent += ef.decompress(payload, ctx).double()
    total = torch.stack(grads).double().sum(0)
    assert torch.allclose(sent + ef.residuals["w"].double(), total, atol=1e-4)
    assert ef.residuals["w"].abs().max() > 0  # there is something to feed back


def test_ef_residuals_are_per_name_and_survive_a_state_dict_round_trip():
    ef = Compression.ef_sign()
    ef.compress(torch.randn(5), name="a")
    ef.compress(torch.randn(3), name="b")
    restored = Compression.ef_sign()
    restored.load_state_dict(ef.state_dict())
    x = torch.randn(5)
    assert torch.equal(ef.compress(x, name="a")[0], restored.compress(x, name="a")[0])
    other = Compression.ef_sign()
    other.load_rank_states([{"a": torch.ones(2)}, {"a": 3 * torch.ones(2)}], rank=0, size=3)
    assert other.residuals["a"].tolist() == [2.0, 2.0]  # world size changed: the mean keeps (1/n)Σe
    ef.momentum["a"] = torch.full((5,), 7.0)
    restored.load_state_dict(ef.state_dict())
    assert restored.momentum["a"].tolist() == [7.0] * 5 and "momentum:a" not in restored.residuals


def test_ef_sign_aggregate_is_the_mean_of_scaled_signs():
    a, b = Compression.ef_sign(), Compression.ef_sign()
    x, y = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([-4.0, -4.0, 4.0])
    (pa, ctx), (pb, _) = a.compress(x), b.compress(y)
    assert torch.allclose(a.decompress(gathered(pa, pb), ctx), torch.tensor([-1.0, -3.0, 3.0]))


def test_ef_sign_scales_each_row_of_a_weight_on_its_own():
    ef = Compression.ef_sign()
    w = torch.tensor([[1.0, -3.0], [100.0, 300.0], [0.0, -0.5]])  # rows three orders of magnitude apart
    payload, ctx = ef.compress(w, name="w")
    assert payload.numel() == 4 * 3 + 1 == wire_bytes("ef-sign", [(3, 2)])
    assert torch.equal(ef.decompress(payload, ctx), torch.tensor([[2.0, -2.0], [200.0, 200.0], [0.25, -0.25]]))
    assert torch.equal(ef.residuals["w"], torch.tensor([-1.0, -1.0, -100.0, 100.0, -0.25, -0.25]))
    bias, _ = ef.compress(torch.randn(7), name="b")
    assert bias.numel() == 4 + 1  # 1-D tensors: one scale


def test_ef_sign_optimizer_sends_the_local_sgd_update_with_momentum_and_weight_decay():
    from hvdat.compression.local_update import local_sgd_update

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    group = {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.1, "dampening": 0, "nesterov": False}
    reference = torch.optim.SGD([torch.nn.Parameter(p.detach().clone())], **group)
    buffers = {}
    for grad in (torch.tensor([0.3, 0.4]), torch.tensor([-1.0, 2.0])):
        p.grad = grad
        update = local_sgd_update(p, group, buffers, "p")
        ref = reference.param_groups[0]["params"][0]
        before = ref.detach().clone()
        ref.grad = grad.clone()
        reference.step()
        assert torch.allclose(update, before - ref.detach())
        p.data.sub_(update)  # keep p where SGD is, as an uncompressed run would


# --- edge cases shared by every packed compressor -----------------------------------------------------------------
@pytest.mark.parametrize("name", PACKED)
def test_all_zero_and_empty_tensors(name):
    comp = getattr(Compression, name)()
    zeros = torch.zeros(3, 5)
    out = comp.decompress(*comp.compress(zeros, name="z"))
    assert out.shape == (3, 5) and torch.equal(out, zeros)
    empty = torch.zeros(0, 4)
    payload, ctx = comp.compress(empty, name="e")
    assert payload.numel() == COMPRESSORS.get(name.replace("_", "-")).wire_bytes(0)
    assert comp.decompress(payload, ctx).shape == (0, 4)


@pytest.mark.parametrize("name", PACKED)
@pytest.mark.parametrize("special", [math.inf, -math.inf, math.nan])
def test_inf_and_nan_never_become_finite(name, special):
    comp = getattr(Compression, name)()
    x = torch.tensor([1.0, -2.0, special, 0.5])
    out = comp.decompress(*comp.compress(x, name="x"))
    assert not torch.isfinite(out[2])
    if name == "natural":  # elementwise: the special itself survives, the rest is untouched
        assert (math.isnan(special) and math.isnan(out[2])) or out[2].item() == special
        assert torch.isfinite(out[[0, 1, 3]]).all()


@pytest.mark.parametrize("name", PACKED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradients_keep_their_dtype(name, dtype):
    comp = getattr(Compression, name)()
    x = torch.randn(4, 9).to(dtype)
    out = comp.decompress(*comp.compress(x, name="h"))
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(torch.sign(out[x != 0]), torch.sign(x[x != 0])) or name != "natural"


@pytest.mark.parametrize("name", ["sign", "ef-sign", "natural", "qsgd"])
def test_payload_is_uint8_and_its_size_matches_wire_bytes(name):
    comp = build_compressor(name, 0)
    for numel in (1, 17, 4096):
        payload, _ = comp.compress(torch.randn(numel), name=str(numel))
        assert payload.dtype == torch.uint8 and payload.dim() == 1
        assert payload.numel() == wire_bytes(name, [numel])
