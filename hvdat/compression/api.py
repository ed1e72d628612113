"""`hvdat.compression.Compression`, mirroring `horovod.torch.Compression` (imports Horovod)."""

from __future__ import annotations

from horovod.torch.compression import Compression as _Horovod

from .ef_sign import EFSignCompressor
from .natural import NaturalCompressor
from .sign import SignCompressor


class Compression:
    """Gradient compressors with Horovod's signatures: `compress(tensor) -> (payload, ctx)` and
    `decompress(payload, ctx) -> tensor` (original shape, dtype and device).

    `none` and `fp16` are Horovod's own and travel by allreduce. `sign`, `ef_sign` and `natural` send packed uint8
    payloads through allgather; their `decompress` accepts k payloads back to back (what allgather returns) and
    yields the aggregate their docstrings define. `natural` (its RNG) and `ef_sign` (its residuals) hold state:
    instantiate them, e.g. `Compression.ef_sign()`, once per training run; `hvdat.compression.DistributedOptimizer`
    does that when given the class.
    """

    none = _Horovod.none
    fp16 = _Horovod.fp16
    sign = SignCompressor
    ef_sign = EFSignCompressor
    natural = NaturalCompressor
