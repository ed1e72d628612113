"""Gradient compressors, one registry: `hvdat train --compression NAME`.

Each entry builds a Horovod-style compressor (`compress(t) -> (payload, ctx)`, `decompress(payload, ctx) -> t`).
`none` and `fp16` are Horovod's own (allreduce); `sign`, `ef-sign`, `natural` and `qsgd` are packed into uint8 payloads
that travel through `hvd.allgather` (see `hvdat.runtime.distributed_optimizer`). The codecs are pure maths (numpy
and torch); Horovod is imported only when `none`/`fp16` are built.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from ..registry import Registry
from .ef_sign import EFSignCompressor
from .natural import NaturalCompressor
from .qsgd import BY_BITS as QSGD_BY_BITS
from .sign import SignCompressor

Shape = Union[int, Sequence[int]]  # a bare int is a 1-D tensor of that many elements


def numel(shape: Shape) -> int:
    return shape if isinstance(shape, int) else prod(shape)


@dataclass(frozen=True)
class CompressorSpec:
    """A compressor and what it demands of the rest of the run (checked by `hvdat train` before launch)."""

    name: str
    bits_per_element: float  # what one fp32 gradient element costs on the wire
    doc: str
    wire_bytes: Callable[[Shape], int]  # exact payload bytes per worker for an fp32 tensor of that shape
    codec: Optional[Callable[[Optional[int]], Any]] = None  # seed -> a packed codec (allgather); None: Horovod's own
    horovod_member: str = ""  # for Horovod's own (allreduce): the `horovod.torch.Compression` member
    needs_sgd: bool = False  # sends each worker's SGD update (`--optimizer sgd` only)
    allows_fp16_amp: bool = True  # False: its state would hold loss-scaled values under --amp fp16

    @property
    def packed(self) -> bool:
        return self.codec is not None


def _qsgd_spec(bits: int) -> CompressorSpec:
    codec = QSGD_BY_BITS[bits]
    name = "qsgd" if bits == 8 else f"qsgd{bits}"
    doc = (
        "DAT's quantizer: unbiased stochastic rounding of |g|/||g||_2 to 127 levels, one byte per element (level "
        "and sign) + one fp32 norm per tensor (allgather); qsgd4 / qsgd2: 4 or 2 bits per element"
        if bits == 8
        else f"DAT's quantizer with {bits} bits per element ({codec.levels()} levels and a sign) + one fp32 norm"
    )
    return CompressorSpec(name, bits, doc, lambda shape: codec.wire_bytes(numel(shape)), codec=codec)


_QSGD_VARIANTS = {f"qsgd{bits}": _qsgd_spec(bits) for bits in QSGD_BY_BITS if bits != 8}


COMPRESSORS: Registry[CompressorSpec] = Registry(
    "compression", fallback=_QSGD_VARIANTS.get, extra_hint=" (or qsgd4, qsgd2: qsgd with 4 or 2 bits)"
)


COMPRESSORS.add(
    "none",
    CompressorSpec("none", 32, "fp32 allreduce (Horovod's own)", lambda shape: 4 * numel(shape), horovod_member="none"),
)
COMPRESSORS.add(
    "fp16",
    CompressorSpec("fp16", 16, "fp16 allreduce (Horovod's own)", lambda shape: 2 * numel(shape), horovod_member="fp16"),
)
COMPRESSORS.add(
    "sign",
    CompressorSpec(
        "sign",
        1,
        "signSGD with majority vote, 1 bit/element (allgather)",
        lambda shape: SignCompressor.wire_bytes(numel(shape)),
        codec=SignCompressor,
    ),
)
COMPRESSORS.add(
    "ef-sign",
    CompressorSpec(
        "ef-sign",
        1,
        "blockwise scaled sign of the local momentum update with error feedback, 1 bit/element + one fp32 "
        "scale per row (allgather)",
        EFSignCompressor.wire_bytes,
        codec=EFSignCompressor,
        needs_sgd=True,
        allows_fp16_amp=False,
    ),
)
COMPRESSORS.add(
    "natural",
    CompressorSpec(
        "natural",
        8,
        "natural compression, unbiased power-of-two rounding, 8 bits/element (allgather)",
        lambda shape: NaturalCompressor.wire_bytes(numel(shape)),
        codec=NaturalCompressor,
    ),
)
COMPRESSORS.add("qsgd", _qsgd_spec(8))  # its other widths (qsgd4, qsgd2) are names outside the registry's list,
# so that suites parametrized over every compressor run the quantizer once


def wire_bytes(name: str, shapes: Iterable[Shape]) -> int:
    """Exact bytes one worker hands to Horovod per step for fp32 gradients of these shapes (or 1-D sizes)."""
    spec = COMPRESSORS.get(name)
    return sum(spec.wire_bytes(shape if isinstance(shape, int) else tuple(shape)) for shape in shapes)
