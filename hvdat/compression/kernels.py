"""Compiled host kernels (numba): codec steps that numpy can only do in many passes over memory, fused into one.

Each kernel computes, bit for bit, what the numpy host kernels of `hvdat.compression.packing` and the codecs
compute (`tests/test_codec_kernels.py` compares them), in one loop per cache-sized piece instead of one numpy call
(and one trip through memory) per operation. They release the GIL. `ENABLED = False` (tests) falls back to numpy.

numba compiles each kernel on its first call in a process and caches the machine code next to this file (a few
hundred ms once; later processes load it). Import this module where a kernel is about to run, not at module level:
importing numba costs about as much as importing numpy.
"""

from __future__ import annotations

import numpy as np
from numba import njit

ENABLED = True

_M32 = 0xFFFFFFFF


BLOCK = 1 << 14  # elements per block: the block's random bits stay in L1 between the two loops


@njit(cache=True, nogil=True, boundscheck=False)
def _natural_codes(raw, key_lo, key_hi, start, lut, out):  # pragma: no cover (compiled)
    # uint32 arithmetic, every result truncated back to uint32 (numba widens), so LLVM vectorises the first loop
    bits = np.empty(BLOCK, np.uint32)
    for first in range(0, raw.size, BLOCK):
        count = min(BLOCK, raw.size - first)
        weyl = np.uint32(np.uint32(start + first) * np.uint32(0x9E3779B9))  # the block's first Weyl term
        values = raw[first : first + count]
        codes = out[first : first + count]
        for j in range(count):
            h = np.uint32(np.uint32(weyl + np.uint32(np.uint32(j) * np.uint32(0x9E3779B9))) + key_lo)
            h = np.uint32(h ^ (h >> np.uint32(16)))
            h = np.uint32(np.uint32(h * np.uint32(0x21F0AAAD)) ^ key_hi)
            h = np.uint32(h ^ (h >> np.uint32(15)))
            h = np.uint32(h * np.uint32(0x735A2D97))
            bits[j] = np.uint32(values[j] + (h >> np.uint32(9))) >> np.uint32(23)
        for j in range(count):
            codes[j] = lut[bits[j]]


def natural_codes(raw: np.ndarray, key: int, start: int, lut: np.ndarray, out: np.ndarray) -> None:
    """natural's encode of elements [start, start + raw.size) in one pass: the 23 hashed random bits of each element
    (`natural.hash_bits23` of `key`) added to its float bits (`raw`, their uint32 view), the carried 9 bits of sign
    and exponent looked up in `lut` (512 codes), written to `out` (uint8)."""
    _natural_codes(raw, np.uint32(key & _M32), np.uint32((key >> 32) & _M32), start, lut, out)
