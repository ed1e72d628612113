"""signSGD with majority vote (Bernstein et al., ICLR 2019), 1 bit per element on the wire.

Wire, per tensor of d elements: the fp32 scale ‖g‖₁/d (4 bytes), then sign(g) packed 8 per byte (ceil(d/8) bytes).
A set bit means g < 0; zero and -0.0 count as positive (one bit cannot say "zero"), so an all-zero tensor sends
scale 0 and decodes to zeros.

Aggregate of k payloads: the majority vote sign(Σ_w sign(g_w)), ties (even k) going to 0, times the mean of the
workers' scales, so the update has the size of an average gradient element and ordinary learning rates still work.
With k = 1, decompress(compress(g)) = ‖g‖₁/d · sign(g).

Non-finite gradients are never hidden: ±inf or NaN anywhere in g makes the scale non-finite, and the whole
aggregate of that tensor becomes non-finite (ties become NaN).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import packing


def l1_scale(values: np.ndarray) -> np.float32:
    """‖x‖₁ / d in float32 (0 for an empty tensor)."""
    if values.size == 0:
        return np.float32(0.0)
    return np.float32(np.add.reduce(np.abs(values)) / values.size)  # numpy's pairwise float32 sum: accurate, fast


def encode_signs(values: np.ndarray, scale: np.float32) -> torch.Tensor:
    return packing.to_payload(packing.scale_header(scale), packing.pack_bits(values < 0))


def majority_vote(rows: np.ndarray, numel: int) -> np.ndarray:
    """Decode k sign payloads into mean_scale · sign(Σ signs) as float32, ties -> 0."""
    scales, bits = packing.split_scale(rows)
    k = rows.shape[0]
    if k == 1:
        negative, positive = bits[0], ~bits[0]
    elif k == 2:  # bytewise: both negative, both positive, else a tie
        negative, positive = bits[0] & bits[1], ~(bits[0] | bits[1])
    else:
        counts = packing.count_set_bits(bits, numel)
        negative, positive = (
            packing.pack_bits(2 * counts.astype(np.int32) > k),
            packing.pack_bits(2 * counts.astype(np.int32) < k),
        )
    index = (negative.astype(np.uint16) << 8) | positive
    out = packing.expand(packing.VOTE_TABLE, index, numel)
    with np.errstate(invalid="ignore"):  # a non-finite scale makes ties NaN, on purpose
        out *= np.float32(scales.astype(np.float64).mean())
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
        values = packing.as_float32(tensor)
        return encode_signs(values, l1_scale(values)), packing.ctx_of(tensor)

    @staticmethod
    def decompress(payload: torch.Tensor, ctx) -> torch.Tensor:
        numel = int(np.prod(ctx[0], dtype=np.int64))
        rows = packing.rows(payload, SignCompressor.wire_bytes(numel))
        return packing.to_tensor(majority_vote(rows, numel), ctx)
