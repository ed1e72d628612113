"""signSGD with majority vote (Bernstein et al., ICLR 2019), 1 bit per element on the wire.

Wire, per tensor of d elements: the fp32 scale ‖g‖₁/d (4 bytes), then sign(g) packed 8 per byte (ceil(d/8) bytes).
A set bit means g < 0; zero and -0.0 count as positive (one bit cannot say "zero"), so an all-zero tensor sends
scale 0 and decodes to zeros.

Aggregate of k payloads: the majority vote sign(Σ_w sign(g_w)), ties (even k) going to 0, times the mean of the
workers' scales, so the update has the size of an average gradient element and ordinary learning rates still work.
With k = 1, decompress(compress(g)) = ‖g‖₁/d · sign(g).

Non-finite gradients are never hidden: ±inf or NaN anywhere in g makes the scale non-finite, and the whole
aggregate of that tensor becomes non-finite (ties become NaN).

Encoding and decoding run on the gradient's device, as torch operations (CPU tensors: numpy kernels where those are
faster, see `hvdat.compression.packing`), with the bytes and floats of the numpy codec this replaced: ‖g‖₁ is
float32 in numpy's pairwise summation order, the mean scale is taken in float64 as numpy's mean, and every decoded
value is vote × scale in float32.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import packing


def encode_signs(values: torch.Tensor) -> torch.Tensor:
    """The payload of a float32 tensor: the fp32 scale ‖g‖₁/d, then the packed sign bits (a fresh uint8 tensor on
    the values' device)."""
    numel = values.numel()
    payload = packing.empty(packing.SCALE_BYTES + packing.packed_len(numel), torch.uint8, values.device)
    if packing.use_numpy(values):
        data = payload.numpy()
        scale = packing.l1_scales_and_signs_numpy(values.numpy().reshape(1, -1), data[packing.SCALE_BYTES :])
        data[: packing.SCALE_BYTES] = scale.view(np.uint8)
    else:
        scale = packing.l1_scales_and_signs(values.view(1, -1), payload[packing.SCALE_BYTES :])
        payload[: packing.SCALE_BYTES].copy_(scale.view(torch.uint8))
    return payload


def vote_nibbles(bits) -> torch.Tensor:
    """The majority vote of k rows of packed signs ((k, bytes): a tensor, or a numpy array of host bytes) as
    vote-table indices: two int32 per byte (its low and high nibble), each (negative nibble << 4 | positive
    nibble); ties are in neither."""
    k = bits.shape[0]
    device = torch.device("cpu") if isinstance(bits, np.ndarray) else bits.device
    if k == 1:  # negative where the bit is set, positive elsewhere
        return packing.look_up(packing.table("vote_nibbles_1", device), packing.byte_index(bits[0]), "nibbles")
    if k == 2:  # bytewise: both negative, both positive, else a tie, through one look-up of the byte pair
        return packing.look_up(packing.table("vote_nibbles_2", device), packing.pair_index(bits[0], bits[1]), "nibbles")
    if isinstance(bits, np.ndarray):
        bits = torch.from_numpy(bits)
    counts = packing.count_set_bits(bits)  # per element, how many rows say negative
    flags = packing.scratch("vote_flags", counts.numel(), torch.bool, device)
    negative = packing.pack_bits(torch.gt(counts, k // 2, out=flags))  # 2c > k
    positive = packing.pack_bits(torch.lt(counts, (k + 1) // 2, out=flags))  # 2c < k
    return packing.look_up(packing.table("vote_nibbles", device), packing.pair_index(negative, positive), "nibbles")


def majority_vote(rows: torch.Tensor, ctx=()) -> torch.Tensor:
    """Decode k sign payloads into mean_scale · sign(Σ signs) as float32, ties -> 0 (vote × scale in float32, so a
    non-finite scale makes ties NaN, on purpose). Returns 8 values per byte (the tail is padding), in the gradient
    ctx carries when it fits (`packing.destination`)."""
    device, nbytes = rows.device, rows.shape[1] - packing.SCALE_BYTES
    out = packing.destination(ctx, 8 * nbytes, device)
    if packing.on_host(rows):  # scales and look-up keys from the bytes in place, the k scales averaged in Python
        data = rows.numpy()
        scale = packing.mean_as_float64(packing.row_floats(rows, rows.shape[1]))
        bits = data[:, packing.SCALE_BYTES :]
        kernels = packing.compiled(8 * nbytes) if rows.shape[0] == 2 else None
        if kernels is not None:  # the vote of two rows and its floats in one compiled pass
            kernels.sign_vote2(bits[0], bits[1], scale, out.numpy())
            return out
        votes = packing.quads(packing.host_table("vote_nibble", scale))  # every nibble's 4 values, scaled
    else:
        scale = packing.mean_as_float64(packing.header_floats(rows, 1).view(-1))
        votes = packing.quads(packing.table("vote_nibble", device) * scale)
        bits = rows[:, packing.SCALE_BYTES :]
    for start, stop in packing.chunks(nbytes, device, 1, 8):
        whole = stop - start == nbytes
        packing.expand4(
            votes, vote_nibbles(bits if whole else bits[:, start:stop]), out if whole else out[8 * start : 8 * stop]
        )
    return out


class SignCompressor:
    """signSGD with majority vote: 1 bit per element plus one fp32 scale per tensor (see the module docstring)."""

    packed = True  # travels through hvd.allgather as uint8 and is decoded by every rank

    def __init__(self, seed: Optional[int] = None):  # stateless; the seed is accepted for a uniform constructor
        pass

    @staticmethod
    def wire_bytes(numel: int) -> int:
        return packing.SCALE_BYTES + packing.packed_len(numel)

    @staticmethod
    def compress(tensor: torch.Tensor, name: str = ""):
        return encode_signs(packing.as_float32(tensor)), packing.ctx_of(tensor)

    @staticmethod
    def decompress(payload: torch.Tensor, ctx) -> torch.Tensor:
        rows = packing.rows(payload, SignCompressor.wire_bytes(packing.numel_of(ctx[0])))
        return packing.to_tensor(majority_vote(rows, ctx), ctx)
