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

Encoding and decoding run on the gradient's device, as torch operations (CPU tensors: partly numpy kernels, see
`hvdat.compression.packing`, and the encode's hash, rounding and look-up fused in one compiled numba pass,
`hvdat.compression.kernels`), without synchronising with it. The random bits come from a counter-based hash of
(seed, parameter name, how many times that name was encoded, element index): no generator state lives on any
device, the draws do not depend on the order in which gradients arrive, the same bits come out on a CPU and a GPU,
and the state to checkpoint is the seed and one counter per name. The format and the decoding are those of the numpy
codec this replaced (whose PCG64 drew other bits; with the same 23-bit integers both encode the same bytes).
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from functools import lru_cache
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from . import packing

HEADER_BYTES = 1
LEVELS = 125  # m = 1..LEVELS are powers of two
NAN_CODE, INF_CODE = 126, 127
_ABS_MASK, _FINITE_LIMIT = 0x7FFFFFFF, 0x7F800000
_MAX_BIASED = {torch.float32: 254, torch.float64: 254, torch.float16: 127 + 15, torch.bfloat16: 254}
_M64 = (1 << 64) - 1
PAIR_TABLE_MIN = 1 << 14  # from this many elements, k >= 2 rows are decoded two at a time through a 65536-entry table


def _int32(value: int) -> int:
    """A 32-bit pattern as the signed int32 torch's scalar arguments need."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _splitmix64(value: int) -> int:
    z = (value + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


_WEYL, _MIX1, _MIX2 = 0x9E3779B9, 0x21F0AAAD, 0x735A2D97  # odd constants (golden ratio; Wellons' lowbias32)


def _weyl(numel: int, device: torch.device) -> torch.Tensor:
    """i * 0x9E3779B9 mod 2^32 for i < numel, as int32 (cached per device, grown to the largest tensor)."""
    cache = _WEYL_CACHE.get(device)
    if cache is None or cache.numel() < numel:
        cache = torch.arange(max(numel, 1 << 16), dtype=torch.int64, device=device)
        cache = _WEYL_CACHE[device] = ((cache * _WEYL) & 0xFFFFFFFF).to(torch.int32)  # wraps like uint32
    return cache[:numel]


_WEYL_CACHE: Dict[torch.device, torch.Tensor] = {}


def hash_bits23(key: int, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """23 uniform random bits for each element index in [start, stop), int32 in [0, 2^23), from a 64-bit key: a
    Weyl sequence through two xorshift-multiply rounds (the key's halves added and xored in), of which the top 23
    bits are taken (logical right shifts are arithmetic shifts, masked). For a uniformly random key every element's
    value is uniform (each round is a bijection of 32 bits). Returns a scratch buffer (the caller may overwrite)."""
    numel = stop - start
    if packing.NUMPY_ON_CPU and device.type == "cpu":  # the same function in numpy's uint32 (faster there)
        return torch.from_numpy(_hash_bits23_numpy(key, start, stop).view(np.int32))
    h = packing.scratch("hash", numel, torch.int32, device)
    t = packing.scratch("hash_tmp", numel, torch.int32, device)
    torch.add(_weyl(stop, device)[start:], _int32(key), out=h)
    torch.bitwise_right_shift(h, 16, out=t).bitwise_and_(0xFFFF)
    h.bitwise_xor_(t).mul_(_int32(_MIX1)).bitwise_xor_(_int32(key >> 32))
    torch.bitwise_right_shift(h, 15, out=t).bitwise_and_(0x1FFFF)
    h.bitwise_xor_(t).mul_(_int32(_MIX2))
    return h.bitwise_right_shift_(9).bitwise_and_(0x7FFFFF)


_WEYL_HOST: List[np.ndarray] = [np.zeros(0, dtype=np.uint32)]


def _hash_bits23_numpy(key: int, start: int, stop: int) -> np.ndarray:
    """hash_bits23 on the host, in numpy's uint32 (logical shifts, wrapping multiplies): bit for bit the same."""
    weyl = _WEYL_HOST[0]
    if weyl.size < stop:
        weyl = _WEYL_HOST[0] = ((np.arange(max(stop, 1 << 16), dtype=np.uint64) * _WEYL) & 0xFFFFFFFF).astype(np.uint32)
    numel = stop - start
    h = packing.host_scratch("hash", numel, np.uint32)
    t = packing.host_scratch("hash_tmp", numel, np.uint32)
    np.add(weyl[start:stop], np.uint32(key & 0xFFFFFFFF), out=h)
    np.bitwise_xor(h, np.right_shift(h, 16, out=t), out=h)
    np.multiply(h, np.uint32(_MIX1), out=h)
    np.bitwise_xor(h, np.uint32((key >> 32) & 0xFFFFFFFF), out=h)
    np.bitwise_xor(h, np.right_shift(h, 15, out=t), out=h)
    np.multiply(h, np.uint32(_MIX2), out=h)
    return np.right_shift(h, 9, out=h)


def code_table(bases: torch.Tensor, k: int) -> torch.Tensor:
    """(rows, 256) float32 on the bases' device: the value of every code for each row's header byte, divided by k
    (2^e and 1/k multiply in float64, then one rounding to float32, as the numpy codec did)."""
    device = bases.device
    m = torch.arange(128, dtype=torch.int64, device=device)
    exponent = bases.to(torch.int64).view(-1, 1) + m - 127  # in [-126, 253]: a normal float64
    magnitude = ((exponent + 1023) << 52).view(torch.float64)
    levels = (m >= 1) & (m <= LEVELS)
    magnitude = torch.where(levels, magnitude, torch.zeros((), dtype=torch.float64, device=device)) * (1.0 / k)
    magnitude[:, NAN_CODE] = float("nan")
    magnitude[:, INF_CODE] = float("inf")
    return torch.cat([magnitude, -magnitude], dim=1).to(torch.float32)


@lru_cache(maxsize=1024)
def host_code_table(base: int, k: int) -> torch.Tensor:
    """code_table for one header byte, on the host (cached)."""
    return code_table(torch.tensor([base], dtype=torch.uint8), k)[0]


@lru_cache(maxsize=64)
def host_pair_table(first: int, second: int, k: int) -> torch.Tensor:
    """(65536,) float32: v0 + v1 (in float32) for the codes (c0 << 8 | c1) of two rows with these headers."""
    return (host_code_table(first, k).view(256, 1) + host_code_table(second, k).view(1, 256)).view(-1)


@lru_cache(maxsize=4096)
def host_code_lut(base: int, top: int) -> torch.Tensor:
    """The code of every (sign, biased exponent after rounding), 9 bits: clip(e - base, 0, top - base) | sign << 7."""
    codes = (torch.arange(256, dtype=torch.int32) - base).clamp_(0, top - base)
    return torch.cat([codes, codes | 0x80]).to(torch.uint8)


class NaturalCompressor:
    """Natural compression, 8-bit codes with a per-tensor exponent window (see the module docstring).

    `seed` seeds this instance's own random stream (use a different one per rank); no global RNG is touched."""

    packed = True

    def __init__(self, seed: Optional[int] = None):
        self.seed = secrets.randbits(64) if seed is None else int(seed) & _M64
        self.draws: Dict[str, int] = {}  # per parameter name: how many tensors it has encoded

    # --- checkpoints: the seed and the counters, per rank, so a resumed run draws the bits an uninterrupted one does
    def state_dict(self) -> Dict[str, Any]:
        return {"seed": self.seed, "draws": dict(self.draws)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "seed" in state:  # (the numpy codec's {"rng": PCG64 state} cannot be continued: keep this stream)
            self.seed = int(state["seed"])
            self.draws = {str(name): int(count) for name, count in state.get("draws", {}).items()}

    def load_rank_states(self, states: List[Dict[str, Any]], rank: int, size: int) -> None:
        """Same world size: each rank continues its own stream. Otherwise the ranks' streams cannot be mapped onto
        the new ones, so each keeps the stream seeded for its new rank (still independent, still unbiased)."""
        if len(states) == size:
            self.load_state_dict(states[rank])

    @staticmethod
    def wire_bytes(numel: int) -> int:
        return HEADER_BYTES + numel

    def key(self, name: str = "") -> int:
        """The 64-bit key of this tensor's draw: (seed, name, how many times the name was encoded); advances."""
        count = self.draws.get(name, 0)
        self.draws[name] = count + 1
        return _splitmix64(_splitmix64(self.seed ^ _name_key(name)) + count)

    def random_bits23(self, key: int, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """The 23-bit random integers (int32) of elements [start, stop) of the draw `key`; the encoder overwrites
        the returned tensor. (Tests replace this to feed chosen integers.)"""
        return hash_bits23(key, start, stop, device)

    def _hashed_bits(self) -> bool:
        """Whether the random integers are `hash_bits23`'s (not a test's replacement of `random_bits23`)."""
        return getattr(self.random_bits23, "__func__", None) is NaturalCompressor.random_bits23

    def encode(self, values: torch.Tensor, dtype: torch.dtype, name: str = "") -> torch.Tensor:
        """float32 values (contiguous, 1-D) -> the payload, on their device."""
        numel, device = values.numel(), values.device
        payload = packing.empty(HEADER_BYTES + numel, torch.uint8, device)
        max_biased = _MAX_BIASED.get(dtype, 254)
        bits = values.view(torch.int32)
        special = None
        if numel == 0:
            top = 1
        elif device.type == "cpu":  # the window from min and max; the rare non-finite case on the general path
            low, high = (float(v) for v in torch.aminmax(values))
            if -low < float("inf") and high < float("inf"):  # (NaN compares False)
                largest = struct.unpack("<I", struct.pack("<f", max(abs(low), abs(high))))[0]
                top = min((largest >> 23) + 1, max_biased)
            else:
                special = self._specials(bits)
        else:  # no host synchronisation: the header stays a device tensor
            special = self._specials(bits)
        if special is None:
            base = max(top - LEVELS, 0)
            payload[0] = base
            if numel == 0:
                return payload
            lut = host_code_lut(base, top)
        else:  # on the device: the window of the finite elements, and the code of every (sign, exponent)
            magnitude, finite = special
            largest = torch.where(finite, magnitude, torch.zeros((), dtype=torch.int32, device=device)).amax()
            top = torch.clamp((largest >> 23) + 1, max=max_biased)
            base = torch.clamp(top - LEVELS, min=0)
            payload[:1].copy_(base.view(1))
            codes = (torch.arange(256, dtype=torch.int32, device=device) - base).clamp_(min=0)
            codes = torch.minimum(codes, top - base)
            lut = torch.cat([codes, codes | 0x80]).to(torch.uint8)
        key = self.key(name)
        out = payload[HEADER_BYTES:]
        host = packing.use_numpy(values)
        kernels = packing.compiled(numel) if host and special is None and self._hashed_bits() else None
        if kernels is not None:  # hash, rounding and look-up in one compiled pass
            kernels.natural_codes(bits.numpy().view(np.uint32), key, 0, lut.numpy(), out.numpy())
            return payload
        if host:
            raw = bits.numpy()
        for start, stop in packing.chunks(numel, device):
            # stochastic rounding: 23 random bits added to the mantissa field carry into the exponent with
            # probability f; on the raw bits the sign stays in bit 31, so (bits + r) >> 23 is (sign, exponent)
            rounded = self.random_bits23(key, start, stop, device)
            if host:  # the same steps in numpy (faster there)
                r = rounded.numpy()
                np.add(raw[start:stop], r, out=r)
                np.bitwise_and(np.right_shift(r, 23, out=r), 0x1FF, out=r)
            else:
                torch.add(bits[start:stop], rounded, out=rounded)
                rounded.bitwise_right_shift_(23).bitwise_and_(0x1FF)
            packing.gather(lut, rounded, out[start:stop])
        if special is not None:
            magnitude, finite = special
            nan = torch.full((), NAN_CODE, dtype=torch.uint8, device=device)
            inf = torch.where(bits < 0, 0x80 | INF_CODE, INF_CODE).to(torch.uint8)
            out.copy_(torch.where(finite, out, torch.where(magnitude > _FINITE_LIMIT, nan, inf)))
        return payload

    @staticmethod
    def _specials(bits: torch.Tensor):
        magnitude = torch.bitwise_and(bits, _ABS_MASK)
        return magnitude, magnitude < _FINITE_LIMIT

    def compress(self, tensor: torch.Tensor, name: str = ""):
        return self.encode(packing.as_float32(tensor), tensor.dtype, name), packing.ctx_of(tensor)

    @staticmethod
    def decode(rows: torch.Tensor, numel: int, ctx=()) -> torch.Tensor:
        """The mean of the rows' decoded values (row 0, then + row 1, ... in float32) through per-row code tables;
        on large tensors rows 0 and 1 together, through a table of their sums for every pair of codes. Written into
        the gradient ctx carries when it fits (`packing.destination`)."""
        k, device = rows.shape[0], rows.device
        if packing.on_host(rows):
            bases = [int(b) for b in rows.numpy()[:, 0]]
            tables = [host_code_table(base, k) for base in bases]
        else:
            tables = code_table(rows[:, 0], k)
        codes = rows[:, HEADER_BYTES:]
        out = packing.destination(ctx, numel, device)
        kernels = packing.compiled(numel) if packing.on_host(rows) else None
        if kernels is not None:  # every row's look-up and the sum in one compiled pass
            kernels.natural_mean(codes.numpy(), np.stack([table.numpy() for table in tables]), out.numpy())
            return out
        paired = k >= 2 and numel >= PAIR_TABLE_MIN
        if paired:  # v0 + v1 for every pair of codes
            if packing.on_host(rows):
                pair = host_pair_table(bases[0], bases[1], k)
            else:
                pair = (tables[0].view(256, 1) + tables[1].view(1, 256)).view(-1)
        for start, stop in packing.chunks(numel, device, 1):
            piece = out[start:stop]
            if paired:
                packing.gather(pair, packing.pair_index(codes[0, start:stop], codes[1, start:stop]), piece)
            else:
                packing.gather(tables[0], packing.byte_index(codes[0, start:stop]), piece)
            for i in range(1 + paired, k):
                piece += packing.look_up(tables[i], packing.byte_index(codes[i, start:stop]), "natural_values")
        return out

    @staticmethod
    def decompress(payload: torch.Tensor, ctx) -> torch.Tensor:
        numel = packing.numel_of(ctx[0])
        rows = packing.rows(payload, NaturalCompressor.wire_bytes(numel))
        return packing.to_tensor(NaturalCompressor.decode(rows, numel, ctx), ctx)
