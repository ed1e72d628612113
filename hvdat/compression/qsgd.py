"""DAT's gradient quantizer (dat-2022/dat, quantization.py `RandomQuantizer`; QSGD, Alistarh et al. 2017), b bits
per element (DAT: 8).

For a tensor g with n = ‖g‖₂ and s = 2^(b-1) - 1 levels (DAT: b = 8, s = 127), element i becomes the level
ℓ_i = floor(s·|g_i|/n) + 1 with probability f_i = s·|g_i|/n - floor(s·|g_i|/n), else floor(s·|g_i|/n), and its
sign. Decoded, n·sign(g_i)·ℓ_i/s has mean g_i (unbiased) and variance (n/s)²·f_i(1 - f_i) <= (n/s)²/4.

Wire, per tensor of d elements: the fp32 norm n (4 bytes), then one b-bit code per element, code = ℓ << 1 | (g > 0),
packed 8/b per byte (element i in bits b·(i mod 8/b) and up of byte i // (8/b); the tail of the last byte is 0),
ceil(d·b/8) bytes. With b = 8 each byte is DAT's: bit 0 the sign (set: positive), bits 1-7 the level.

Aggregate of k payloads: the mean of the workers' decoded values (DAT: the sum of the dequantized tensors over the
all-gather, divided by the world size). With k = 1, decompress(compress(g)) is g quantized once.

Where hvdat departs from DAT's code, on purpose:
  * DAT decodes the level as `xi / 2` of the byte; in today's PyTorch that is true division, which adds half a level
    to every positive element (a bias). We decode the integer level the layout means, `code >> 1`.
  * An all-zero tensor (n = 0) sends level 0 everywhere and decodes to zeros (DAT's code divides 0 by 0).
  * Non-finite gradients are never hidden: ±inf or NaN anywhere makes n non-finite, and every element of that
    tensor's aggregate non-finite.
  * The norm is summed in float64 (then stored as fp32), so large finite gradients do not overflow it.
  * The probability of rounding up is f_i to within 2^-23 (23 random bits per element, compared with f_i exactly).

Random bits: the counter-based hash of `hvdat.compression.natural` (seed, parameter name, how many times that name was
encoded, element index), so no generator state lives on a device and the state to checkpoint is the seed and one
counter per name (per rank, like natural's). Encoding and decoding are torch operations on the gradient's device
without a host synchronisation (the norm stays a device tensor).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from . import packing
from .natural import NaturalCompressor

BITS = (2, 4, 8)  # widths whose codes tile a byte
_TWO_POW_23 = float(1 << 23)


class QSGDCompressor:
    """DAT's quantizer with `bits` bits per element (see the module docstring); subclasses fix other widths."""

    packed = True
    bits = 8

    def __init__(self, seed: Optional[int] = None):
        if self.bits not in BITS:
            raise ValueError(f"qsgd needs bits in {BITS}, got {self.bits}")
        self._stream = NaturalCompressor(seed)  # only its random bits and their counters

    # --- checkpoints: those of the random stream (the seed and one counter per parameter name)
    def state_dict(self) -> Dict[str, Any]:
        return self._stream.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._stream.load_state_dict(state)

    def load_rank_states(self, states: List[Dict[str, Any]], rank: int, size: int) -> None:
        self._stream.load_rank_states(states, rank, size)

    @classmethod
    def levels(cls) -> int:
        return (1 << (cls.bits - 1)) - 1

    @classmethod
    def per_byte(cls) -> int:
        return 8 // cls.bits

    @classmethod
    def wire_bytes(cls, numel: int) -> int:
        return packing.SCALE_BYTES + -(-numel // cls.per_byte())

    @classmethod
    def code_values(cls, device: torch.device) -> torch.Tensor:
        """(2^bits,) float32: every code's sign·level/s."""
        code = torch.arange(1 << cls.bits, device=device)
        sign = torch.where((code & 1) == 1, 1.0, -1.0)
        return sign * (code >> 1).to(torch.float32) / cls.levels() + 0.0  # + 0.0: level 0 is +0.0, not -0.0

    def encode(self, values: torch.Tensor, name: str = "") -> torch.Tensor:
        """float32 values (contiguous, 1-D) -> the payload, on their device."""
        numel, device = values.numel(), values.device
        payload = packing.empty(self.wire_bytes(numel), torch.uint8, device)
        norm = torch.linalg.vector_norm(values, dtype=torch.float64).to(torch.float32).reshape(1)
        payload[: packing.SCALE_BYTES].copy_(norm.view(torch.uint8))
        if numel == 0:
            return payload
        key, per, out = self._stream.key(name), self.per_byte(), payload[packing.SCALE_BYTES :]
        for start, stop in packing.chunks(numel, device):  # starts are multiples of 8, so of `per`
            piece = values[start:stop]
            scaled = piece.abs().div_(norm).mul_(self.levels())  # |g|/n first, as DAT: no overflow for tiny n
            scaled.nan_to_num_(nan=0.0)  # n = 0 (all zero), or a non-finite n (decodes non-finite anyway)
            level = scaled.floor()
            fraction = scaled.sub_(level).mul_(_TWO_POW_23)  # exact: f·2^23
            draws = self._stream.random_bits23(key, start, stop, device).to(torch.float32)  # exact below 2^24
            level.add_(draws < fraction).clamp_(max=self.levels())  # (n rounded down: s|g|/n may pass s)
            code = level.to(torch.int32).bitwise_left_shift_(1).bitwise_or_(piece > 0)
            first, last = start // per, -(-stop // per)
            if per == 1:
                out[first:last].copy_(code)
            else:
                padded = torch.zeros((last - first) * per, dtype=torch.int32, device=device)
                padded[: stop - start] = code
                shifts = torch.arange(0, 8, self.bits, dtype=torch.int32, device=device)
                out[first:last].copy_(padded.view(-1, per).bitwise_left_shift(shifts).sum(1))
        return payload

    def compress(self, tensor: torch.Tensor, name: str = ""):
        return self.encode(packing.as_float32(tensor), name), packing.ctx_of(tensor)

    @classmethod
    def decode(cls, rows: torch.Tensor, numel: int) -> torch.Tensor:
        """The mean of the rows' decoded values (row 0, then + row 1, ... in float32): each row's bytes through a
        table of its 256 byte values, its norm/k already applied."""
        k, device, per = rows.shape[0], rows.device, cls.per_byte()
        scales = packing.header_floats(rows, 1) / k  # (k, 1): n_w / k
        byte = torch.arange(256, device=device).view(256, 1)
        codes = (byte >> torch.arange(0, 8, cls.bits, device=device)) & ((1 << cls.bits) - 1)  # (256, per)
        per_byte = cls.code_values(device)[codes].view(1, 256 * per)
        tables = (per_byte * scales).view(k, 256, per)  # row w: byte -> its `per` values times n_w/k
        data = rows[:, packing.SCALE_BYTES :]
        out = packing.empty(data.shape[1] * per, torch.float32, device)
        for i in range(k):
            values = tables[i].index_select(0, packing.byte_index(data[i])).view(-1)
            if i == 0:
                out.copy_(values)
            else:
                out.add_(values)
        return out[:numel]

    @classmethod
    def decompress(cls, payload: torch.Tensor, ctx) -> torch.Tensor:
        numel = packing.numel_of(ctx[0])
        rows = packing.rows(payload, cls.wire_bytes(numel))
        return packing.to_tensor(cls.decode(rows, numel), ctx)


class QSGD4Compressor(QSGDCompressor):
    """DAT's quantizer with 4 bits per element: 7 levels and a sign, two elements per byte."""

    bits = 4


class QSGD2Compressor(QSGDCompressor):
    """DAT's quantizer with 2 bits per element: levels 0 and 1 (±n or 0, a ternary code), four elements per byte."""

    bits = 2


BY_BITS = {cls.bits: cls for cls in (QSGDCompressor, QSGD4Compressor, QSGD2Compressor)}
