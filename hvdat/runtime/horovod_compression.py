"""`hvdat.runtime.horovod_compression.Compression`, mirroring `horovod.torch.Compression` (imports Horovod)."""

from __future__ import annotations

from typing import Optional

from horovod.torch.compression import Compression as _Horovod

from ..compression import COMPRESSORS
from ..compression.ef_sign import EFSignCompressor
from ..compression.natural import NaturalCompressor
from ..compression.qsgd import QSGD2Compressor, QSGD4Compressor, QSGDCompressor
from ..compression.sign import SignCompressor


class Compression:
    """Gradient compressors with Horovod's signatures: `compress(tensor) -> (payload, ctx)` and
    `decompress(payload, ctx) -> tensor` (original shape, dtype and device).

    `none` and `fp16` are Horovod's own and travel by allreduce. `sign`, `ef_sign`, `natural` and `qsgd` (and
    `qsgd4`, `qsgd2`) send packed uint8 payloads through allgather; their `decompress` accepts k payloads back to
    back (what allgather returns) and yields the aggregate their docstrings define. `natural` and `qsgd` (their RNG)
    and `ef_sign` (its residuals) hold state: instantiate them, e.g. `Compression.ef_sign()`, once per training run;
    `hvdat.compression.DistributedOptimizer` does that when given the class.
    """

    none = _Horovod.none
    fp16 = _Horovod.fp16
    sign = SignCompressor
    ef_sign = EFSignCompressor
    natural = NaturalCompressor
    qsgd = QSGDCompressor
    qsgd4 = QSGD4Compressor
    qsgd2 = QSGD2Compressor


def build_compressor(name: str, seed: Optional[int] = None):
    """The registry's compressor `name` for one rank: a fresh packed codec (its RNG seeded with `seed`), or
    Horovod's own allreduce compressor."""
    spec = COMPRESSORS.get(name)
    return spec.codec(seed) if spec.packed else getattr(_Horovod, spec.horovod_member)
