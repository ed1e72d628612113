"""Bit and byte layouts of packed payloads, and the kernels that encode and decode them.

Packed payloads are 1-D uint8 tensors on the gradient's device, because Horovod's allgather carries uint8 (its
allreduce does not) and, with NCCL, carries CUDA tensors: CUDA gradients are encoded, exchanged and decoded without
leaving the GPU, and nothing waits for the GPU (headers, scales and tables are computed there from device tensors).
`hvd.allgather` concatenates the ranks' payloads, so a gathered payload is `k` equal-length payloads back to back
and `rows()` splits it again.

Layouts (those of the numpy codecs this replaced; `tests/reference_codecs` keeps them as the specification):
  * 8 signs per byte, element i in bit i % 8 of byte i // 8 (little bit order); the tail of the last byte is 0.
  * fp32 headers are the little-endian bytes of the float32 value.
  * ‖x‖₁ scales are float32 sums in numpy's pairwise order (`pairwise_sum_rows_torch` runs that exact tree).

Two sets of kernels compute the same bytes and floats (`tests/test_codec_reference.py` checks both against the numpy
codecs, on the CPU):
  * torch, for gradients on any device (CUDA): packing 8 bools by one int64 multiply (`pack_bits`); decoding through
    small tables whose rows hold the values of 4 elements as one 16-byte complex128, scale already applied, so that
    one `index_select` writes 4 floats per look-up (`expand4`); scratch buffers instead of temporaries.
  * numpy, for CPU tensors (`NUMPY_ON_CPU`), where numpy's loops are faster than torch's: the exact pairwise sum
    (several times slower as torch operations), x < 0 and packbits (torch's compare-to-bool is scalar), the
    ef-sign kernels (numpy's take of 8 floats per byte), and the RNG hash; each on zero-copy views, in cache-sized
    pieces. Decoding tables and look-ups stay torch (`index_select` is as fast as numpy's take there); large
    fresh outputs get numpy's memory, which the kernel backs with transparent huge pages (`empty`).
"""

from __future__ import annotations

import contextlib
import struct
import threading
from functools import lru_cache
from math import gcd
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

SCALE_BYTES = 4  # one fp32 per tensor (or per block)
PACK_MAGIC = 0x0102040810204080  # (8 bytes of 0/1) * PACK_MAGIC >> 56 = those 8 bits, byte j -> bit j
SMALL = 1 << 12  # up to this many bytes of bits (or codes), the variant with the fewest operations

# From this many elements, CPU tensors go through the compiled kernels where there are some (`kernels`, numba):
# smaller ones gain little, and a process that never reaches it never imports numba (~0.5 s, plus loading the cached
# machine code), which keeps small jobs and the test suite's many short runs as fast as before. Once loaded, smaller
# tensors take them too (`compiled`).
COMPILED_MIN = 1 << 16
_loaded = False  # whether `compiled` has imported the kernels in this process

# CPU tensors go through the numpy kernels (see the module docstring). Tests turn this off to run the torch kernels,
# which every other device runs, on the CPU.
NUMPY_ON_CPU = True


def compiled(numel: int):
    """The compiled host kernels (`kernels`) for a CPU tensor of `numel` elements, or None where the numpy/torch path
    runs: from COMPILED_MIN elements, and for any size once a larger tensor has loaded them (numba's start-up cost is
    paid then, and a small tensor's compiled pass costs microseconds less than the table look-ups' many calls)."""
    global _loaded
    if not NUMPY_ON_CPU or (numel < COMPILED_MIN and not _loaded):
        return None
    from . import kernels  # (numba: imported at the first large tensor, not at every CLI start)

    _loaded = True
    return kernels if kernels.ENABLED else None


def on_host(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu"


def use_numpy(tensor: torch.Tensor) -> bool:
    return NUMPY_ON_CPU and tensor.device.type == "cpu"


def packed_len(numel: int) -> int:
    return (numel + 7) // 8


def numel_of(shape: Sequence[int]) -> int:
    numel = 1
    for size in shape:
        numel *= size
    return numel


# --- per-thread scratch buffers, and cache-sized pieces -----------------------------------------------------------
class _Scratch(threading.local):
    def __init__(self):
        self.buffers: Dict[Tuple[str, torch.dtype, torch.device], torch.Tensor] = {}


_SCRATCH = _Scratch()


def scratch(key: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable 1-D work buffer of `numel` elements (grown to the largest request, per thread, per device), so
    the codecs do not allocate (and fault in) temporaries the size of a gradient on every call. Never hand one out
    of a codec: the next call overwrites it."""
    buffers = _SCRATCH.buffers
    slot = (key, dtype, device)
    buffer = buffers.get(slot)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[slot] = torch.empty(max(numel, 1 << 12), dtype=dtype, device=device)
    return buffer[:numel]


# CPU tensors are processed in pieces of this many elements, so that the temporaries of a piece stay in the caches;
# elsewhere in one piece.
CPU_CHUNK = 1 << 20


def chunks(numel: int, device: torch.device, align: int = 8, per_item: int = 1) -> List[Tuple[int, int]]:
    """[start, stop) ranges covering numel items (of `per_item` elements each), in pieces of about CPU_CHUNK
    elements on CPU (one piece elsewhere), every start a multiple of `align`."""
    size = CPU_CHUNK // per_item
    if device.type != "cpu" or numel <= size:
        return [(0, numel)]
    step = max(align, size // align * align)
    return [(start, min(start + step, numel)) for start in range(0, numel, step)]


# --- constant tables, one copy per device ---------------------------------------------------------------------------
def _pairs(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Two int32 indices per entry as one int64 (little-endian: lo first), so one look-up yields both."""
    return (lo.astype(np.int64) & 0xFFFFFFFF) | (hi.astype(np.int64) << 32)


def _build_tables() -> Dict[str, np.ndarray]:
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")  # (256, 8)
    nibble_bits = bits[:16, :4].astype(np.float32)  # (16, 4): the 4 elements of a nibble, set bit = 1
    t: Dict[str, np.ndarray] = {}
    t["sign_nibble"] = 1 - 2 * nibble_bits  # the 4 signs of a nibble of sign bits: set bit = negative
    # the 4 votes of (negative nibble << 4 | positive nibble): +1, -1, or 0 where neither (a tie)
    t["vote_nibble"] = (nibble_bits[None, :, :] - nibble_bits[:, None, :]).reshape(256, 4)
    byte = np.arange(256)
    t["sign_nibbles"] = _pairs(byte & 15, byte >> 4)  # a byte of sign bits -> its two nibbles
    negative, positive = np.divmod(np.arange(65536), 256)  # (negative byte << 8 | positive byte) -> vote nibbles
    t["vote_nibbles"] = _pairs(((negative & 15) << 4) | (positive & 15), (negative & 0xF0) | (positive >> 4))
    t["vote_nibbles_1"] = t["vote_nibbles"][(byte << 8) | (~byte & 0xFF)]  # one payload: its own signs
    first, second = negative, positive  # two payloads, (first byte << 8 | second byte): both -, both +, else tie
    t["vote_nibbles_2"] = t["vote_nibbles"][((first & second) << 8) | (~(first | second) & 0xFF)]
    t["unpack"] = np.ascontiguousarray(bits).view(np.int64).reshape(256)  # a byte -> 8 bytes of 0/1
    t["sign_byte"] = 1 - 2 * bits.astype(np.float32)  # the 8 signs of a byte of sign bits (host kernels)
    # two rows of sign bits, (first byte << 8 | second byte) -> the nibble pairs (first nibble << 4 | second nibble)
    t["nibble_pairs"] = _pairs(((first & 15) << 4) | (second & 15), (first & 0xF0) | (second >> 4))
    return t


TABLES = _build_tables()
_DEVICE_TABLES: Dict[Tuple[str, torch.device], torch.Tensor] = {}


def table(name: str, device: torch.device) -> torch.Tensor:
    tensor = _DEVICE_TABLES.get((name, device))
    if tensor is None:
        tensor = _DEVICE_TABLES[name, device] = torch.from_numpy(TABLES[name]).to(device)
    return tensor


# --- tensors in and out -------------------------------------------------------------------------------------------
def as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """The elements as a contiguous 1-D float32 tensor on the tensor's own device (a view when it already is one;
    fp16/bf16 are widened exactly)."""
    flat = tensor.detach().reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.to(torch.float32)
    return flat.contiguous()


def ctx_of(tensor: torch.Tensor) -> Tuple[torch.Size, torch.dtype, torch.device]:
    return tensor.shape, tensor.dtype, tensor.device


def with_destination(ctx, grad: Optional[torch.Tensor]):
    """ctx plus the gradient tensor whose memory the decoder may overwrite with the aggregate (see `destination`).
    The exchange passes the gradient it just encoded: backward already faulted its pages in, so decoding there
    instead of into fresh memory saves a gradient-sized allocation and its page faults every step."""
    return tuple(ctx[:3]) + (grad,)


def destination(ctx, numel: int, device: torch.device) -> torch.Tensor:
    """Where a decoder writes its `numel` float32 values (padding included): the gradient ctx carries (4th item)
    when it is a plain contiguous float32 tensor of exactly `numel` elements on `device` (so bit codecs use it for
    whole bytes only), 16-byte aligned, else a fresh tensor."""
    into = ctx[3] if len(ctx) > 3 else None
    if (
        isinstance(into, torch.Tensor)
        and into.dtype == torch.float32
        and into.device == device
        and into.numel() == numel
        and into.is_contiguous()
        and into.storage_offset() % 4 == 0  # the decoders view 4 floats as one complex128
        and not into.requires_grad
        and not into.is_sparse
    ):
        return into.view(-1)
    return empty(numel, torch.float32, device)


def to_tensor(values: torch.Tensor, ctx) -> torch.Tensor:
    """float32 values (at least the shape's numel, then padding) -> the tensor of the original shape and dtype."""
    shape, dtype, device = ctx[:3]
    numel = numel_of(shape)
    out = (values if values.numel() == numel else values[:numel]).view(shape)
    if out.device != device:  # only when a payload is decoded on another device than the gradient's
        out = out.to(device)
    return out if out.dtype == dtype else out.to(dtype)


def rows(payload: torch.Tensor, row_len: int) -> torch.Tensor:
    """A gathered payload as a (k, row_len) uint8 tensor, k = number of ranks that contributed."""
    if row_len == 0 or payload.numel() % row_len:
        raise ValueError(f"payload of {payload.numel()} bytes is not a whole number of {row_len}-byte rows")
    return (payload.detach() if payload.requires_grad else payload).view(-1, row_len)


def row_floats(payload: torch.Tensor, row_len: int) -> List[float]:
    """The first fp32 value of every row of a gathered payload on the host, as Python floats."""
    data = payload.numpy()
    return [struct.unpack_from("<f", data, offset)[0] for offset in range(0, data.size, row_len)]


def header_floats(rows_: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` fp32 values of every row, (k, count) float32 on the rows' device."""
    header = rows_[:, : SCALE_BYTES * count]
    return torch.empty(header.shape, dtype=torch.uint8, device=header.device).copy_(header).view(torch.float32)


_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.uint8: np.uint8,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.complex128: np.complex128,
}
HUGE = 1 << 18  # elements from which host tensors are allocated by numpy


def empty(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A fresh 1-D tensor for a payload or a decoded gradient. On the host its memory comes from numpy, which asks
    the kernel for transparent huge pages on large arrays: the first touch of a fresh gradient-sized tensor is then
    several times cheaper than torch.empty's 4 KiB pages (the numpy codecs this replaced had that for free)."""
    if device.type == "cpu" and numel >= HUGE:
        return torch.from_numpy(np.empty(numel, dtype=_NUMPY_DTYPES[dtype]))
    return torch.empty(numel, dtype=dtype, device=device)


# --- 8 signs per byte ---------------------------------------------------------------------------------------------
def pack_bits(bits: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """bool (or 0/1 uint8) -> packed_len(len) uint8 bytes (into `out` if given), element i in bit i % 8 of byte
    i // 8; the tail of the last byte is 0."""
    numel = bits.numel()
    padded = 8 * packed_len(numel)
    if out is None:
        out = torch.empty(padded // 8, dtype=torch.uint8, device=bits.device)
    if padded != numel or bits.storage_offset() % 8 or not bits.is_contiguous():
        flags = scratch("pack_pad", padded, torch.uint8, bits.device)
        flags[:numel].copy_(bits.reshape(-1))
        flags[numel:].zero_()
        bits = flags
    words = bits.view(torch.uint8).view(torch.int64)  # 8 elements per word, byte j = element j
    product = scratch("pack", words.numel(), torch.int64, words.device)
    torch.mul(words, PACK_MAGIC, out=product)  # bit 0 of byte j lands on bit 56 + j; nothing collides or carries
    product.bitwise_right_shift_(56)
    return out.copy_(product)  # the low byte: the 8 bits


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """uint8 bytes -> {0,1} uint8 of length numel (the inverse of pack_bits; a fresh tensor)."""
    return gather(table("unpack", packed.device), byte_index(packed, "unpack")).view(torch.uint8)[:numel]


def count_set_bits(packed_rows: torch.Tensor) -> torch.Tensor:
    """Per element of k packed rows, how many rows have its bit set (uint8 up to 255 rows, int32 beyond); 8 per
    byte, padding included."""
    k, length = packed_rows.shape
    counts = unpack_bits(packed_rows[0], 8 * length)
    if k > 255:
        counts = counts.to(torch.int32)
    for row in packed_rows[1:]:  # one vectorised pass per worker, not per element
        counts += unpack_bits(row, 8 * length)
    return counts


# --- table look-ups -----------------------------------------------------------------------------------------------
def gather(values: torch.Tensor, index: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[i] = values[index[i]] for a 1-D table (into `out` if given, else a fresh tensor)."""
    if index.dtype not in (torch.int32, torch.int64):
        index = index.to(torch.int32)
    if out is None:
        return values.index_select(0, index)
    return torch.index_select(values, 0, index, out=out)


def byte_index(packed, key: str = "byte_index") -> torch.Tensor:
    """uint8 bytes (a tensor, or a numpy array of host bytes) as int32 look-up indices (a scratch buffer when
    large)."""
    if isinstance(packed, np.ndarray):  # host bytes: numpy's calls cost less than torch's
        index = np.empty(packed.size, np.int32) if packed.size <= SMALL else host_scratch(key, packed.size, np.int32)
        index[:] = packed
        return torch.from_numpy(index)
    if packed.numel() <= SMALL:
        return packed.to(torch.int32)
    return scratch(key, packed.numel(), torch.int32, packed.device).copy_(packed)


def pair_index(first, second, key: str = "pair_index") -> torch.Tensor:
    """(first << 8) | second as int32, for the look-ups keyed by two bytes (tensors, or numpy arrays of host
    bytes)."""
    if isinstance(first, np.ndarray):
        index = np.empty(first.size, np.int32) if first.size <= SMALL else host_scratch(key, first.size, np.int32)
        index[:] = first
        np.left_shift(index, 8, out=index)
        np.bitwise_or(index, second, out=index)
        return torch.from_numpy(index)
    if first.numel() <= SMALL:
        index = first.to(torch.int32)
        index.bitwise_left_shift_(8)
        return index.bitwise_or_(second.to(torch.int32))
    index = byte_index(first, key)
    index.bitwise_left_shift_(8)
    return index.bitwise_or_(byte_index(second, key + "_low"))


def quads(values4) -> torch.Tensor:
    """A (m, 4) float32 table (a tensor, or a numpy array on the host) as m 16-byte elements, so that one look-up
    copies 4 floats."""
    if isinstance(values4, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(values4, dtype=np.float32).view(np.complex128).reshape(-1))
    return values4.contiguous().view(torch.complex128).view(-1)


def expand4(table4: torch.Tensor, nibble_pairs: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Decode through `quads(table)`: every int32 of `nibble_pairs` (the int64 pairs of the tables above) selects
    4 floats. Writes 8 * len(nibble_pairs) floats into `out` (float32; a fresh tensor if None) and returns it."""
    index = nibble_pairs.view(torch.int32)
    if out is None:
        out = empty(4 * index.numel(), torch.float32, index.device)
    gather(table4, index, out.view(torch.complex128))
    return out


def look_up(lut: torch.Tensor, index: torch.Tensor, key: str) -> torch.Tensor:
    """lut[index] (a scratch buffer when large)."""
    if index.numel() <= SMALL:
        return gather(lut, index)
    return gather(lut, index, scratch(key, index.numel(), lut.dtype, index.device))


# --- numpy's float32 pairwise summation, exactly ------------------------------------------------------------------
@lru_cache(maxsize=256)
def _pairwise_plan(n: int):
    """numpy's pairwise_sum(n) as a tree: leaves of at most 128 elements (8 accumulators over rows of 8, then a
    fixed combination), halves split at a multiple of 8. Returns (leaves, depth): each leaf (offset, size, slot)
    with slot its position among the 2**depth nodes of the deepest level (a shallower leaf takes the first slot of
    its subtree; the others are zeros, which leave any sum unchanged except the sign of a zero, and numpy's 0 + sum
    at the end makes that +0 as well)."""
    leaves: List[Tuple[int, int, int, int]] = []

    def split(offset: int, size: int, level: int, path: int) -> None:
        if size <= 128:
            leaves.append((offset, size, level, path))
            return
        half = size // 2
        half -= half % 8
        split(offset, half, level + 1, 2 * path)
        split(offset + half, size - half, level + 1, 2 * path + 1)

    split(0, n, 0, 0)
    depth = max(level for _, _, level, _ in leaves)
    return [(offset, size, path << (depth - level)) for offset, size, level, path in leaves], depth


@lru_cache(maxsize=256)
def _gather_plan(n: int):
    """For trees whose leaves are not one regular grid: where each full row of 8 goes in the (slots, rows, 8)
    zero-padded layout."""
    leaves, _ = _pairwise_plan(n)
    most = max(size // 8 for _, size, _ in leaves)
    source, target = [], []
    for offset, size, slot in leaves:
        for r in range(size // 8):
            source.append(offset // 8 + r)
            target.append(slot * most + r)
    return np.asarray(source, dtype=np.int64), np.asarray(target, dtype=np.int64), most


_GATHER_INDEX: Dict[Tuple[int, torch.device], Tuple[torch.Tensor, torch.Tensor, int]] = {}


def _gather_index(n: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """_gather_plan's indices as tensors on the device (copied there once per size, not once per call)."""
    cached = _GATHER_INDEX.get((n, device))
    if cached is None:
        source, target, most = _gather_plan(n)
        cached = _GATHER_INDEX[n, device] = (
            torch.from_numpy(source).to(device),
            torch.from_numpy(target).to(device),
            most,
        )
    return cached


def pairwise_sum_rows_torch(values: torch.Tensor) -> torch.Tensor:
    """`np.add.reduce(values, axis=1)` for a (R, n) float tensor with numpy's exact summation order (0 + the
    pairwise sum of each row), as torch operations on the tensor's device; returns (R,) of values' dtype."""
    count, n = values.shape
    zero = values.new_zeros(count)
    if n < 8:
        total = zero
        for i in range(n):
            total = total + values[:, i]
        return total
    leaves, depth = _pairwise_plan(n)
    most = max(size // 8 for _, size, _ in leaves)
    slots = 1 << depth
    full = 8 * (n // 8)
    regular = len(leaves) == slots and all(size // 8 == most for _, size, _ in leaves)
    if regular:  # every leaf at the deepest level with the same number of rows: the data is the grid already
        grid = values[:, : slots * most * 8].reshape(count, slots, most, 8)
    else:
        source, target, most = _gather_index(n, values.device)
        grid = values.new_zeros(count, slots * most, 8)
        grid[:, target] = values[:, :full].reshape(count, -1, 8)[:, source]
        grid = grid.view(count, slots, most, 8)
    accumulators = grid[:, :, 0, :].clone()  # r[j] = a[j], then r[j] += a[8i + j] row by row, as numpy does
    for r in range(1, most):
        accumulators += grid[:, :, r, :]
    level = accumulators.reshape(count, -1)  # ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)) per leaf
    for _ in range(3):
        pairs = level.view(count, -1, 2)
        level = pairs[:, :, 0] + pairs[:, :, 1]
    if n % 8:  # the last leaf's elements past its rows of 8, added one by one after its accumulators
        last = leaves[-1][2]
        tail = level[:, last]
        for i in range(full, n):
            tail = tail + values[:, i]
        level[:, last] = tail
    for _ in range(depth):  # the halves, bottom-up
        pairs = level.view(count, -1, 2)
        level = pairs[:, :, 0] + pairs[:, :, 1]
    return zero + level[:, 0]


SUM_CHUNK = 1 << 18  # on CPU, |x|, its sums and x < 0 are computed per subtree of at most this many elements


@lru_cache(maxsize=256)
def _subtrees(n: int, limit: int):
    """numpy's pairwise tree over n elements cut into subtrees of at most `limit` elements (each summed by one
    np.add.reduce, which is that subtree's own pairwise sum): their (offset, size) in order, and how to join their
    sums: a list of levels, each the pairs (i, j) of the previous level's values to add (a single i passes)."""
    parts: List[Tuple[int, int]] = []

    def split(offset: int, size: int):
        if size <= max(limit, 128):
            parts.append((offset, size))
            return len(parts) - 1
        half = size // 2
        half -= half % 8
        return (split(offset, half), split(offset + half, size - half))

    return parts, split(0, n)


def _join(tree, sums: List[np.float32]) -> np.float32:
    if isinstance(tree, int):
        return sums[tree]
    return np.float32(_join(tree[0], sums) + _join(tree[1], sums))


class _HostScratch(threading.local):
    def __init__(self):
        self.arrays: Dict[Tuple[str, type], np.ndarray] = {}


_HOST_SCRATCH = _HostScratch()


def host_scratch(key: str, numel: int, dtype) -> np.ndarray:
    """`scratch` for the host kernels, as a numpy array."""
    arrays = _HOST_SCRATCH.arrays
    array = arrays.get((key, dtype))
    if array is None or array.size < numel:
        array = arrays[key, dtype] = np.empty(max(numel, 1 << 12), dtype=dtype)
    return array[:numel]


def l1_scales_and_signs_numpy(values: np.ndarray, bits_out: np.ndarray) -> np.ndarray:
    """The host kernel of `l1_scales_and_signs`: per row of a (R, d) float32 array np.add.reduce(np.abs(row))
    (numpy's pairwise order, bit for bit) / float32(d), and the packed bits of values < 0, computed a cache-sized
    piece at a time so that x is read from memory once."""
    count, numel = values.shape
    size = values.size
    if 0 < size <= SMALL:  # a few elements: the same steps with the fewest calls
        bits_out[:] = np.packbits(values < 0, bitorder="little")
        return np.add.reduce(np.abs(values), axis=1) / np.float32(numel)
    flags = host_scratch("flags", 8 * packed_len(size), np.bool_)
    flags[size:] = False
    work = host_scratch("abs", min(size, max(SUM_CHUNK, numel)), np.float32)
    if size == 0:
        sums = np.zeros(count, dtype=np.float32)
    elif count == 1:
        flat = values.reshape(-1)
        pieces, tree = _subtrees(numel, SUM_CHUNK)
        if len(pieces) == 1:
            np.less(flat, 0, out=flags[:size])
            sums = np.add.reduce(np.abs(flat, out=work), keepdims=True)
        else:
            parts = []
            for offset, length in pieces:
                piece = flat[offset : offset + length]
                parts.append(np.add.reduce(np.abs(piece, out=work[:length])))
                np.less(piece, 0, out=flags[offset : offset + length])
            sums = np.array([_join(tree, parts)], dtype=np.float32)
    else:
        sums = np.empty(count, dtype=np.float32)
        step = max(1, SUM_CHUNK // numel)
        for first in range(0, count, step):
            block = values[first : first + step]
            magnitudes = np.abs(block, out=work[: block.size].reshape(block.shape))
            np.add.reduce(magnitudes, axis=1, out=sums[first : first + len(block)])
            np.less(block, 0, out=flags[first * numel : (first + len(block)) * numel].reshape(block.shape))
    bits_out[:] = np.packbits(flags, bitorder="little")
    return sums / np.float32(max(numel, 1))


def l1_scales_and_signs(values: torch.Tensor, bits_out: torch.Tensor):
    """For a (R, d) float32 tensor: ‖x_r‖₁ / d in float32 per row (numpy's pairwise float32 sum of |x|, then a
    float32 division; 0 for empty rows), as (R,) float32 on the device (a numpy array for CPU tensors); and the bits
    of x < 0 (-0.0 and NaN are not negative) packed into `bits_out` (packed_len(R*d) bytes)."""
    if use_numpy(values):
        return l1_scales_and_signs_numpy(values.numpy(), bits_out.numpy())
    count, numel = values.shape
    magnitudes = scratch("abs", values.numel(), torch.float32, values.device).view(count, numel)
    torch.abs(values, out=magnitudes)
    sums = pairwise_sum_rows_torch(magnitudes)
    pack_bits(
        torch.lt(values.reshape(-1), 0, out=scratch("flags", values.numel(), torch.bool, values.device)), bits_out
    )
    return sums.div_(torch.full((1,), max(numel, 1), dtype=torch.float32, device=values.device))


def subtract_scaled_signs_numpy(values: np.ndarray, bits: np.ndarray, scales: np.ndarray) -> None:
    """values (R, d) -= scales[r] · (±1 from the packed bits), in place: numpy's take of the ±1 rows of each byte,
    times the row's scale, subtracted (float32 throughout, as the numpy codec did), a cache-sized piece at a
    time."""
    count, numel = values.shape
    if values.size == 0:
        return
    signs = TABLES["sign_byte"]
    unit = 8 // gcd(numel, 8)  # rows per piece must end on a byte
    step = max(unit, SUM_CHUNK // numel // unit * unit)
    work = host_scratch("signs", 8 * packed_len(min(step, count) * numel), np.float32)
    finite = bool(np.isfinite(scales).all())  # then no inf - inf below
    with contextlib.nullcontext() if finite else np.errstate(invalid="ignore"):  # non-finite stays so, on purpose
        for first in range(0, count, step):
            block = values[first : first + step]
            start, stop = first * numel // 8, packed_len((first + len(block)) * numel)
            expanded = work[: 8 * (stop - start)].reshape(-1, 8)
            np.take(signs, bits[start:stop], axis=0, out=expanded, mode="clip")
            delta = expanded.reshape(-1)[: block.size].reshape(block.shape)
            delta *= scales[first : first + len(block), None]
            block -= delta


def ef_encode_numpy(update: np.ndarray, residual: np.ndarray, payload: np.ndarray, fresh: bool) -> None:
    """ef-sign's host kernel: residual (R, d) holds e on entry (ignored if `fresh`: p = a copy of the update) and
    e' on exit; payload gets the R scales of p = update + e and the packed bits of p < 0. Per cache-sized piece of
    whole rows: ‖p_r‖₁/d (numpy's pairwise sum), the bits, and e' = p - s_r·sign while the piece is in cache (one
    piece: scales first, then e')."""
    count, numel = residual.shape
    scale_bytes = SCALE_BYTES * count
    if fresh:
        residual[...] = update.reshape(count, numel)
    else:
        np.add(update.reshape(count, numel), residual, out=residual)
    if 0 < residual.size <= SMALL:  # a few elements: the same steps with the fewest calls
        flags = residual < 0
        payload[scale_bytes:] = np.packbits(flags, bitorder="little")
        scales = np.add.reduce(np.abs(residual), axis=1) / np.float32(numel)
        payload[:scale_bytes] = scales.view(np.uint8)
        delta = TABLES["sign_byte"][payload[scale_bytes:]].reshape(-1)[: residual.size].reshape(count, numel)
        delta *= scales[:, None]
        with contextlib.nullcontext() if np.isfinite(scales).all() else np.errstate(invalid="ignore"):
            residual -= delta
        return
    unit = 8 // gcd(max(numel, 1), 8)  # rows per piece must end on a byte
    step = max(unit, SUM_CHUNK // max(numel, 1) // unit * unit)
    if count == 1 or step >= count:  # one piece, or one row: scales first, then the residual
        scales = l1_scales_and_signs_numpy(residual, payload[scale_bytes:])
        payload[:scale_bytes] = scales.view(np.uint8)
        subtract_scaled_signs_numpy(residual, payload[scale_bytes:], scales)
        return
    scales = np.empty(count, dtype=np.float32)
    bits = payload[scale_bytes:]
    signs = TABLES["sign_byte"]
    work = host_scratch("abs", step * numel, np.float32)
    flags = host_scratch("flags", step * numel, np.bool_)
    expanded = host_scratch("signs", step * numel, np.float32)
    divisor = np.float32(numel)
    for first in range(0, count, step):
        block = residual[first : first + step]
        size = block.size
        start = first * numel // 8
        magnitudes = np.abs(block, out=work[:size].reshape(block.shape))
        sums = np.add.reduce(magnitudes, axis=1)
        piece_scales = np.divide(sums, divisor, out=scales[first : first + len(block)])
        np.less(block, 0, out=flags[:size].reshape(block.shape))
        packed = np.packbits(flags[:size], bitorder="little")  # the last piece's tail bits are 0
        bits[start : start + packed.size] = packed
        np.take(signs, packed, axis=0, out=expanded[: 8 * packed.size].reshape(-1, 8), mode="clip")
        delta = expanded[:size].reshape(block.shape)
        delta *= piece_scales[:, None]
        with contextlib.nullcontext() if np.isfinite(piece_scales).all() else np.errstate(invalid="ignore"):
            block -= delta
    payload[:scale_bytes] = scales.view(np.uint8)


def mean_of_scaled_signs_numpy(data: np.ndarray, numel: int, nblocks: int, ctx=()) -> np.ndarray:
    """The host kernel of ef-sign's decode: for k payload rows (k, bytes) the mean of their δ_w = ±1 × (s_w / k),
    accumulated from zero in row order in float32 as the numpy codec did; 8 values per byte of bits."""
    k = data.shape[0]
    scale_bytes = SCALE_BYTES * nblocks
    scales = np.ndarray((k, nblocks), np.dtype("<f4"), data, 0, (data.strides[0], 4)) / np.float32(k)
    bits = data[:, scale_bytes:]
    out = destination(ctx, 8 * bits.shape[1], torch.device("cpu"))
    values = out.numpy()
    if numel == 0:
        return out
    if numel <= SMALL:  # a few elements: the same steps with the fewest calls
        finite = np.isfinite(scales).all()
        with contextlib.nullcontext() if finite else np.errstate(invalid="ignore"):
            for i in range(k):
                delta = TABLES["sign_byte"][bits[i]].reshape(-1)[:numel].reshape(nblocks, -1)
                delta *= scales[i, :, None]
                if i == 0:
                    np.add(np.float32(0), delta.reshape(-1), out=values[:numel])
                else:
                    values[:numel] += delta.reshape(-1)
        return out
    per_block = numel // nblocks
    unit = 8 // gcd(per_block, 8)  # blocks per piece must end on a byte
    step = max(unit, SUM_CHUNK // per_block // unit * unit)
    signs = TABLES["sign_byte"]
    if nblocks == 1:  # one scale per payload: it goes into the (256, 8) table of signs
        tables = [signs * s for s in scales[:, 0]]
        tables[0] = np.float32(0) + tables[0]  # 0 + δ_0
    finite = bool(np.isfinite(scales).all())  # then no inf - inf below
    work = host_scratch("signs", 8 * packed_len(min(step, nblocks) * per_block), np.float32)
    with contextlib.nullcontext() if finite else np.errstate(invalid="ignore"):
        for first in range(0, nblocks, step):
            count = min(step, nblocks - first)
            start, stop = first * per_block // 8, packed_len((first + count) * per_block)
            piece = values[8 * start : 8 * stop]
            for i in range(k):
                expanded = piece if i == 0 else work[: piece.size]
                if nblocks == 1:
                    np.take(tables[i], bits[i, start:stop], axis=0, out=expanded.reshape(-1, 8), mode="clip")
                else:  # ±1, then each block times its scale
                    np.take(signs, bits[i, start:stop], axis=0, out=expanded.reshape(-1, 8), mode="clip")
                    block = expanded[: count * per_block].reshape(count, per_block)
                    block *= scales[i, first : first + count, None]
                    if i == 0:
                        np.add(np.float32(0), block, out=block)  # 0 + δ_0 (-0.0 becomes +0.0)
                if i:
                    piece += expanded
    return out


def _pairwise_sum_floats(values: Sequence[float]) -> float:
    """numpy's pairwise float64 sum (0 + the tree), in Python floats (IEEE doubles, so bit for bit)."""

    def tree(lo: int, n: int) -> float:
        if n < 8:
            total = 0.0
            for v in values[lo : lo + n]:
                total += v
            return total
        if n <= 128:
            r = list(values[lo : lo + 8])
            i = 8
            while i < n - n % 8:
                for j in range(8):
                    r[j] += values[lo + i + j]
                i += 8
            total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
            for v in values[lo + i : lo + n]:
                total += v
            return total
        half = n // 2
        half -= half % 8
        return tree(lo, half) + tree(lo + half, n - half)

    return 0.0 + tree(0, len(values))


def host_table(name: str, factor: float) -> torch.Tensor:
    """TABLES[name] * factor in float32, on the host (a fresh tensor; no warning for a non-finite factor)."""
    values = TABLES[name]
    factor = np.float32(factor)
    if np.isfinite(factor):
        return torch.from_numpy(values * factor)
    with np.errstate(invalid="ignore"):  # ±1 × inf is ±inf and 0 × inf NaN, on purpose
        return torch.from_numpy(values * factor)


def mean_as_float64(scales):
    """`np.float32(scales.astype(np.float64).mean())` of k float32 values (numpy's pairwise float64 sum, then a
    float64 division by k): an np.float32 for a list of floats or a numpy array, a 1-element float32 tensor on the
    device for a tensor."""
    if isinstance(scales, list):  # Python floats (float32 values)
        return np.float32(_pairwise_sum_floats(scales) / len(scales))
    if isinstance(scales, np.ndarray):
        values = struct.unpack(f"<{scales.size}f", scales.astype("<f4").tobytes())
        return np.float32(_pairwise_sum_floats(values) / len(values))
    k = scales.numel()
    total = pairwise_sum_rows_torch(scales.to(torch.float64).view(1, k))
    return total.div_(torch.full((1,), k, dtype=torch.float64, device=scales.device)).to(torch.float32)
