"""Gradient compressors, one registry: `hvdat train --compression NAME`.

Each entry builds a Horovod-style compressor (`compress(t) -> (payload, ctx)`, `decompress(payload, ctx) -> t`).
Horovod is imported only when a compressor is built, so the CLI can list and validate names without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..registry import Registry


@dataclass(frozen=True)
class CompressorSpec:
    name: str
    build: Callable[[], Any]
    bits_per_element: float  # what one fp32 gradient element costs on the wire
    doc: str


COMPRESSORS: Registry[CompressorSpec] = Registry("compression")


def _horovod(member: str) -> Callable[[], Any]:
    def build():
        from horovod.torch import Compression

        return getattr(Compression, member)

    return build


COMPRESSORS.add("none", CompressorSpec("none", _horovod("none"), 32, "fp32 allreduce (Horovod's own)"))
COMPRESSORS.add("fp16", CompressorSpec("fp16", _horovod("fp16"), 16, "fp16 allreduce (Horovod's own)"))
