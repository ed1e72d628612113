"""Gradient compressors, one registry: `hvdat train --compression NAME`.

Each entry builds a Horovod-style compressor (`compress(t) -> (payload, ctx)`, `decompress(payload, ctx) -> t`).
`none` and `fp16` are Horovod's own (allreduce); `sign`, `ef-sign` and `natural` are packed into uint8 payloads
that travel through `hvd.allgather` (see `optimizer.py`). Horovod is imported only when a compressor is built or
`Compression` is used, so the CLI can list and validate names without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from ..registry import Registry


@dataclass(frozen=True)
class CompressorSpec:
    name: str
    build: Callable[[Optional[int]], Any]  # seed -> a fresh compressor (seed the per-rank RNG; ignored if unused)
    bits_per_element: float  # what one fp32 gradient element costs on the wire
    doc: str
    wire_bytes: Callable[[int], int]  # exact payload bytes per worker for a tensor of that many fp32 elements


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


def _sign_bytes(numel: int) -> int:
    return 4 + (numel + 7) // 8


COMPRESSORS.add("none", CompressorSpec("none", _horovod("none"), 32, "fp32 allreduce (Horovod's own)",
                                       lambda n: 4 * n))
COMPRESSORS.add("fp16", CompressorSpec("fp16", _horovod("fp16"), 16, "fp16 allreduce (Horovod's own)",
                                       lambda n: 2 * n))
COMPRESSORS.add("sign", CompressorSpec("sign", _ours("sign", "SignCompressor"), 1,
                                       "signSGD with majority vote, 1 bit/element (allgather)", _sign_bytes))
COMPRESSORS.add("ef-sign", CompressorSpec("ef-sign", _ours("ef_sign", "EFSignCompressor"), 1,
                                          "scaled sign with error feedback, 1 bit/element (allgather)", _sign_bytes))
COMPRESSORS.add("natural", CompressorSpec("natural", _ours("natural", "NaturalCompressor"), 8,
                                          "natural compression, unbiased power-of-two rounding, 8 bits/element "
                                          "(allgather)", lambda n: 1 + n))


def wire_bytes(name: str, numels: Iterable[int]) -> int:
    """Exact bytes one worker hands to Horovod per step for fp32 gradients of these sizes."""
    spec = COMPRESSORS.get(name)
    return sum(spec.wire_bytes(int(n)) for n in numels)


def __getattr__(name: str) -> Any:  # lazy: these import Horovod
    if name == "Compression":
        from .api import Compression

        return Compression
    if name == "DistributedOptimizer":
        from .optimizer import DistributedOptimizer

        return DistributedOptimizer
    raise AttributeError(name)
