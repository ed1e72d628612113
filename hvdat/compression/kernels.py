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


@njit(cache=True, nogil=True, boundscheck=False)
def _natural_mean(codes, tables, out):  # pragma: no cover (compiled)
    k = codes.shape[0]
    first, second = codes[0], tables[0]
    if k == 1:
        for j in range(out.size):
            out[j] = second[first[j]]
        return
    other, other_table = codes[1], tables[1]
    for j in range(out.size):
        out[j] = second[first[j]] + other_table[other[j]]
    for i in range(2, k):
        row, table = codes[i], tables[i]
        for j in range(out.size):
            out[j] += table[row[j]]


def natural_mean(codes: np.ndarray, tables: np.ndarray, out: np.ndarray) -> None:
    """natural's decode of k rows of codes ((k, n) uint8) through their code tables ((k, 256) float32, 1/k
    applied): out[j] = (t_0[c_0j] + t_1[c_1j]) + t_2[c_2j] + ..., in float32 and in this order, as the look-ups of
    the numpy path add them."""
    _natural_mean(codes, tables, out)


@njit(cache=True, nogil=True, boundscheck=False)
def _sign_vote2(first, second, scale, out):  # pragma: no cover (compiled)
    for j in range(first.size):
        a, b = first[j], second[j]
        negative = a & b
        positive = ~(a | b)
        for bit in range(8):
            vote = np.float32((positive >> bit) & 1) - np.float32((negative >> bit) & 1)
            out[8 * j + bit] = vote * scale


def sign_vote2(first: np.ndarray, second: np.ndarray, scale: np.float32, out: np.ndarray) -> None:
    """sign's majority vote of two rows of packed signs (uint8, set = negative): 8 floats per byte, each the vote
    (+1 both positive, -1 both negative, 0 a tie) times `scale` in float32, as the vote tables hold it."""
    _sign_vote2(first, second, np.float32(scale), out)
