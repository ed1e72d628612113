"""Bit and byte layouts of packed payloads: 8 signs per byte, an fp32 header, tensors <-> numpy.

Packed payloads are 1-D uint8 tensors, because Horovod's allgather carries uint8 (its allreduce does not).
`hvd.allgather` concatenates the ranks' payloads, so a gathered payload is `k` equal-length payloads back to back
and `rows()` splits it again. Encoding and decoding run in numpy on the CPU (packbits, table look-ups and a
counter-based RNG are vectorised there and much faster than the torch equivalents on CPU); GPU tensors are copied.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

SCALE_BYTES = 4  # one fp32 per tensor


def as_float32(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous float32 numpy view (or copy, for fp16/bf16/GPU tensors) of the tensor's elements."""
    flat = tensor.detach().reshape(-1)
    if flat.dtype != torch.float32 or flat.device.type != "cpu":
        flat = flat.to(device="cpu", dtype=torch.float32)
    return flat.contiguous().numpy()


def packed_len(numel: int) -> int:
    return (numel + 7) // 8


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Bools -> uint8, 8 per byte, element i in bit i % 8 of byte i // 8 (little bit order); the tail is 0."""
    return np.packbits(bits, bitorder="little")


def unpack_bits(packed: np.ndarray, numel: int) -> np.ndarray:
    """uint8 -> {0,1} uint8 of length numel (the inverse of pack_bits)."""
    return np.unpackbits(packed, count=numel, bitorder="little")


def count_set_bits(rows: np.ndarray, numel: int) -> np.ndarray:
    """Per element, how many of the k packed rows have its bit set (uint8, so k <= 255)."""
    if rows.shape[0] > 255:
        raise ValueError("count_set_bits counts in uint8: at most 255 rows")
    counts = unpack_bits(rows[0], numel)
    for row in rows[1:]:  # one vectorised pass per worker, not per element
        counts += unpack_bits(row, numel)
    return counts


def _unit_tables():
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(np.float32)
    signs = 1 - 2 * bits  # per byte: the 8 elements' signs, set bit = negative
    # (neg_byte << 8 | pos_byte) -> 8 values in {-1, 0, +1}; a bit in neither mask is a tie
    votes = (bits[None, :, :] - bits[:, None, :]).reshape(65536, 8)
    return signs, votes


SIGN_TABLE, VOTE_TABLE = _unit_tables()  # 8 KiB and 2 MiB, built once


def expand(table: np.ndarray, packed: np.ndarray, numel: int, out: np.ndarray = None) -> np.ndarray:
    """Decode 8 elements per look-up: row `packed[i]` of a (n, 8) float32 table (a byte-wide table look-up is
    far cheaper than one per element)."""
    values = np.take(table, packed, axis=0).reshape(-1)[:numel]
    if out is None:
        return values
    out += values
    return out


def scale_header(scale: float) -> np.ndarray:
    return np.frombuffer(np.float32(scale).tobytes(), dtype=np.uint8)


def rows(payload: torch.Tensor, row_len: int) -> np.ndarray:
    """A gathered payload as a (k, row_len) uint8 array, k = number of ranks that contributed."""
    data = payload.detach().reshape(-1)
    if data.device.type != "cpu":
        data = data.cpu()
    data = data.numpy()
    if row_len == 0 or data.size % row_len:
        raise ValueError(f"payload of {data.size} bytes is not a whole number of {row_len}-byte rows")
    return data.reshape(-1, row_len)


def split_scale(rows_: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(k float32 scales, (k, n) packed bits) from rows that start with an fp32 header."""
    scales = np.ascontiguousarray(rows_[:, :SCALE_BYTES]).view(np.float32).reshape(-1)
    return scales, rows_[:, SCALE_BYTES:]


def to_payload(*parts: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0].copy())


def to_tensor(values: np.ndarray, ctx) -> torch.Tensor:
    """float32 numpy values -> a tensor with the original shape, dtype and device (ctx = (shape, dtype, device))."""
    shape, dtype, device = ctx
    out = torch.from_numpy(values).reshape(shape)
    if out.dtype != dtype or device.type != "cpu":
        out = out.to(device=device, dtype=dtype)
    return out


def ctx_of(tensor: torch.Tensor) -> Tuple[torch.Size, torch.dtype, torch.device]:
    return tensor.shape, tensor.dtype, tensor.device
