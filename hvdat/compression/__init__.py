"""Gradient compressors, one registry: `hvdat train --compression NAME`.

Each entry builds a Horovod-style compressor (`compress(t) -> (payload, ctx)`, `decompress(payload, ctx) -> t`).
`none` and `fp16` are Horovod's own (allreduce); `sign`, `ef-sign` and `natural` are packed into uint8 payloads
that travel through `hvd.allgather` (see `optimizer.py`). Horovod is imported only when a compressor is built or
`Compression` is used, so the CLI can list and validate names without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from ..registry import Registry


Shape = Union[int, Sequence[int]]  # a bare int is a 1-D tensor of that many elements


def numel(shape: Shape) -> int:
    return shape if isinstance(shape, int) else prod(shape)


@dataclass(frozen=True)
class CompressorSpec:
    name: str
    build: Callable[[Optional[int]], Any]  # seed -> a fresh compressor (seed the per-rank RNG; ignored if unused)
    bits_per_element: float  # what one fp32 gradient element costs on the wire
    doc: str
    wire_bytes: Callable[[Shape], int]  # exact payload bytes per worker for an fp32 tensor of that shape


COMPRESSORS: Registry[CompressorSpec] = Registry("compression")


def _horovod(member: str) -> Callable[[Optional[int]], Any]:
    def build(seed: Optional[int] = None):
        from horovod.torch import Compression

        return getattr(Compression, member)

    return build


def _ours(module: str, cls: str) -> Callable[[Optional[int]], Any]:
    def build(seed: Optional[int] = None):
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)(seed=seed)

    return build


def _sign_bytes(shape: Shape) -> int:
    return 4 + (numel(shape) + 7) // 8


def _ef_sign_bytes(shape: Shape) -> int:
    from .ef_sign import wire_bytes as ef_wire_bytes  # numpy/torch only, no Horovod

    return ef_wire_bytes(shape)


COMPRESSORS.add("none", CompressorSpec("none", _horovod("none"), 32, "fp32 allreduce (Horovod's own)",
                                       lambda shape: 4 * numel(shape)))
COMPRESSORS.add("fp16", CompressorSpec("fp16", _horovod("fp16"), 16, "fp16 allreduce (Horovod's own)",
                                       lambda shape: 2 * numel(shape)))
COMPRESSORS.add("sign", CompressorSpec("sign", _ours("sign", "SignCompressor"), 1,
                                       "signSGD with majority vote, 1 bit/element (allgather)", _sign_bytes))
COMPRESSORS.add("ef-sign", CompressorSpec("ef-sign", _ours("ef_sign", "EFSignCompressor"), 1,
                                          "blockwise scaled sign of the local momentum update with error feedback, "
                                          "1 bit/element + one fp32 scale per row (allgather)", _ef_sign_bytes))
COMPRESSORS.add("natural", CompressorSpec("natural", _ours("natural", "NaturalCompressor"), 8,
                                          "natural compression, unbiased power-of-two rounding, 8 bits/element "
                                          "(allgather)", lambda shape: 1 + numel(shape)))


def wire_bytes(name: str, shapes: Iterable[Shape]) -> int:
    """Exact bytes one worker hands to Horovod per step for fp32 gradients of these shapes (or 1-D sizes)."""
    spec = COMPRESSORS.get(name)
    return sum(spec.wire_bytes(shape if isinstance(shape, int) else tuple(shape)) for shape in shapes)


def __getattr__(name: str) -> Any:  # lazy: these import Horovod
    if name == "Compression":
        from .api import Compression

        return Compression
    if name == "DistributedOptimizer":
        from .optimizer import DistributedOptimizer

        return DistributedOptimizer
    raise AttributeError(name)
