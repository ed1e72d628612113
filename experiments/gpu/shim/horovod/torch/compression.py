"""`horovod.torch.Compression`'s two members, as Horovod defines them: none (identity) and fp16 (cast floating
tensors to half for the exchange, back after)."""

from __future__ import annotations

import torch


class NoneCompressor:
    @staticmethod
    def compress(tensor, *args, **kwargs):
        return tensor, None

    @staticmethod
    def decompress(tensor, ctx, *args, **kwargs):
        return tensor


class FP16Compressor:
    @staticmethod
    def compress(tensor, *args, **kwargs):
        if tensor.dtype.is_floating_point:
            return tensor.type(torch.float16), tensor.dtype
        return tensor, tensor.dtype

    @staticmethod
    def decompress(tensor, ctx, *args, **kwargs):
        return tensor.type(ctx) if ctx is not None and ctx.is_floating_point else tensor


class Compression:
    none = NoneCompressor
    fp16 = FP16Compressor
