"""Natural compression (Horváth et al., 2019): unbiased stochastic rounding to a power of two, 8 bits per element.

Each element x = ±2^e·(1+f), 0 <= f < 1, becomes ±2^(e+1) with probability f and ±2^e otherwise, so E[C(x)] = x
and E[C(x)²] <= 9/8·x². One random draw per element: 23 random bits are added to the float's mantissa field, and the
carry into the exponent happens with probability f exactly. Sign and exponent survive, the mantissa is dropped.

Wire, per tensor of d elements: one header byte `base` (a biased fp32 exponent) and one code byte per element,
8 bits instead of 9 thanks to a per-tensor exponent window:
    bit 7      sign
    bits 0-6   m = 0: zero;  m = 1..125: ±2^(base + m - 127);  m = 126: NaN;  m = 127: ±inf.
The window's top is the largest finite element's exponent plus one (room to round up), so 125 powers of two sit
below it. Defined edge cases:
  * zeros, exact powers of two: exact (f = 0 never rounds up); -0.0 decodes as -0.0.
  * subnormals: rounded without bias to 0 or 2^-126 (their carry goes into the smallest normal exponent).
  * below the window (more than about 2^123 times smaller than the tensor's largest element): flushed to 0, the
    one biased case.
  * above the window: the top saturates at the largest power of two of the gradient's dtype, so a finite value
    never rounds up to inf (e.g. fp32 values above 2^127, fp16 values above 2^15, become 2^127 / 2^15).
  * ±inf stay ±inf and NaN stays NaN; they do not move the window.
  * fp16/bf16 gradients (AMP) are widened to fp32 exactly, encoded, and decoded back to their dtype.

Aggregate of k payloads: the mean over workers of their decoded C(g_w), an unbiased estimate of the mean gradient
whose variance grows by at most 1/8 of the second moment. With k = 1, decompress(compress(x)) is x rounded to a
neighbouring power of two.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from . import packing

HEADER_BYTES = 1
LEVELS = 125  # m = 1..LEVELS are powers of two
NAN_CODE, INF_CODE = 126, 127
_EXP_MASK, _ABS_MASK, _FINITE_LIMIT = 0x7F800000, 0x7FFFFFFF, 0x7F800000
_MAX_BIASED = {torch.float32: 254, torch.float64: 254, torch.float16: 127 + 15, torch.bfloat16: 254}


def code_table(base: int, scale: float = 1.0) -> np.ndarray:
    """float32 value of every code for this header, times scale (1/k when averaging k workers)."""
    m = np.arange(128)
    magnitude = np.zeros(128, dtype=np.float64)
    levels = (m >= 1) & (m <= LEVELS)
    magnitude[levels] = np.ldexp(1.0, base + m[levels] - 127)
    magnitude *= scale
    magnitude[NAN_CODE] = np.nan
    magnitude[INF_CODE] = np.inf
    return np.concatenate([magnitude, -magnitude]).astype(np.float32)


@functools.lru_cache(maxsize=64)
def pair_table(base: int, k: int) -> np.ndarray:
    """(65536, 2) float32: the two values of a little-endian pair of codes, each divided by k."""
    single = code_table(base, 1.0 / k)
    pairs = np.arange(65536)
    return np.stack([single[pairs & 0xFF], single[pairs >> 8]], axis=1)


class NaturalCompressor:
    """Natural compression, 8-bit codes with a per-tensor exponent window (see the module docstring).

    `seed` seeds this instance's own generator (use a different one per rank); the global RNGs are untouched."""

    packed = True

    def __init__(self, seed: Optional[int] = None):
        self.rng = np.random.default_rng(seed)

    # --- checkpoints: the generator's position, per rank, so a resumed run draws the bits an uninterrupted one does
    def state_dict(self) -> Dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("rng"):
            self.rng.bit_generator.state = state["rng"]

    def load_rank_states(self, states: List[Dict[str, Any]], rank: int, size: int) -> None:
        """Same world size: each rank continues its own stream. Otherwise the ranks' streams cannot be mapped onto
        the new ones, so each keeps the stream seeded for its new rank (still independent, still unbiased)."""
        if len(states) == size:
            self.load_state_dict(states[rank])

    @staticmethod
    def wire_bytes(numel: int) -> int:
        return HEADER_BYTES + numel

    def random_bits23(self, numel: int) -> np.ndarray:
        raw = self.rng.bit_generator.random_raw((numel + 1) // 2).view(np.uint32)[:numel]
        return np.right_shift(raw, 9, out=raw)

    def encode(self, values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        bits = values.view(np.uint32)
        magnitude = np.bitwise_and(bits, _ABS_MASK)
        nonfinite = np.flatnonzero(magnitude >= _FINITE_LIMIT)
        if nonfinite.size:
            finite_max = int(np.max(magnitude, where=magnitude < _FINITE_LIMIT, initial=0))
        else:
            finite_max = int(magnitude.max()) if magnitude.size else 0
        top = min((finite_max >> 23) + 1, _MAX_BIASED.get(dtype, 254))
        base = max(top - LEVELS, 0)
        # stochastic rounding: the carry out of the mantissa happens with probability f
        magnitude += self.random_bits23(values.size)
        exponent = np.right_shift(magnitude, 23, out=magnitude).view(np.int32)
        np.subtract(exponent, base, out=exponent)
        np.clip(exponent, 0, top - base, out=exponent)  # below the window: 0; above: saturate at the top
        codes = exponent.astype(np.uint8)
        codes |= np.left_shift(np.signbit(values).view(np.uint8), 7)  # the sign bit (bytewise, not strided)
        if nonfinite.size:
            special = values[nonfinite]
            codes[nonfinite] = np.where(np.isnan(special), NAN_CODE, np.where(special > 0, INF_CODE, 0x80 | INF_CODE))
        return np.concatenate([np.array([base], dtype=np.uint8), codes])

    def compress(self, tensor: torch.Tensor, name: str = ""):
        return torch.from_numpy(self.encode(packing.as_float32(tensor), tensor.dtype)), packing.ctx_of(tensor)

    @staticmethod
    def decode(rows: np.ndarray, numel: int) -> np.ndarray:
        """The mean of the rows' decoded values; two codes per look-up through a cached 65536-entry table."""
        k = rows.shape[0]
        pairs = numel // 2
        out = np.empty(numel, dtype=np.float32)
        for i, row in enumerate(rows):
            base, codes = int(row[0]), row[1:]
            values = np.take(
                pair_table(base, k), np.ascontiguousarray(codes[: 2 * pairs]).view(np.uint16), axis=0
            ).reshape(-1)
            tail = code_table(base, 1.0 / k)[codes[2 * pairs :]]
            if i == 0:
                out[: 2 * pairs], out[2 * pairs :] = values, tail
            else:
                out[: 2 * pairs] += values
                out[2 * pairs :] += tail
        return out

    @staticmethod
    def decompress(payload: torch.Tensor, ctx) -> torch.Tensor:
        numel = int(np.prod(ctx[0], dtype=np.int64))
        rows = packing.rows(payload, NaturalCompressor.wire_bytes(numel))
        return packing.to_tensor(NaturalCompressor.decode(rows, numel), ctx)
