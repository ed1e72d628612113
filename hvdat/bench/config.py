"""The frozen configuration of `hvdat bench comm`, handed to its workers as a file like every job's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from ..errors import UsageError
from ..frozen_config import FrozenConfig
from ..options import BUCKET_MB, option


def parse_compressions(text: str, values: Dict[str, Any] = None) -> Tuple[str, ...]:
    """`none,fp16,sign` -> the registry's names, checked, without repeats."""
    from ..compression import COMPRESSORS

    names: List[str] = [name.strip() for name in str(text).split(",") if name.strip()]
    if not names:
        raise UsageError("--compression lists no compressors", f"choose from: {', '.join(COMPRESSORS.names())}")
    for name in names:
        COMPRESSORS.get(name)
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class CommBenchConfig(FrozenConfig):
    arch: str = option("resnet50", "Model whose gradient shapes are exchanged (resnet50: 25.6M).")
    compressions: Tuple[str, ...] = option(
        ("none", "fp16", "sign", "ef-sign", "natural"),
        "Comma-separated compressors, e.g. none,fp16,sign,ef-sign,natural.",
        flags=("--compression",),
        cli_type=str,
        parse=parse_compressions,
        cli_default="none,fp16,sign,ef-sign,natural",
    )
    steps: int = option(5, "Timed exchanges per compressor (the median is reported).")
    warmup: int = option(1, "Untimed exchanges first.")
    bucket_mb: float = option(0.0, BUCKET_MB)
    codec_repeats: int = 3  # times compress and decompress are timed alone (the median is reported)
