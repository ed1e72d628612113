"""Perturbation budgets as users write them (`8/255`, `0.031`, a sweep `1/255,2/255`), parsed and shown."""

from __future__ import annotations

import math
import re

from ..errors import UsageError


def parse_eps(text: str | float, what: str = "eps", norm: str = "linf") -> float:
    """Parse an epsilon given as a fraction (`8/255`) or a decimal (`0.031`). An L-inf budget lies in (0, 1]
    (pixels are in [0,1]); an L2 or L1 one is a norm of the whole image and may exceed 1 (ImageNet's L2 3.0)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(?:/\s*([0-9]*\.?[0-9]+))?\s*", text)
        if not match:
            raise UsageError(f"invalid {what} {text!r}", "write it as a fraction like 8/255 or a decimal like 0.031")
        value = float(match.group(1))
        if match.group(2) is not None:
            denominator = float(match.group(2))
            if denominator == 0:
                raise UsageError(f"invalid {what} {text!r}", "the denominator is zero")
            value /= denominator
    if norm != "linf":
        if not (0.0 < value < math.inf):
            raise UsageError(f"{what} {text} must be positive and finite")
    elif not (0.0 < value <= 1.0) or math.isnan(value):
        raise UsageError(f"{what} {text} is outside (0, 1]", "pixels are in [0,1], so use e.g. 8/255 for L-inf")
    return value


def parse_eps_list(text: str, norm: str) -> tuple:
    """`8/255`, or a sweep `1/255,2/255,4/255,8/255`. L-inf budgets lie in (0, 1]; L2/L1 ones may exceed 1."""
    values = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        values.append(parse_eps(part, norm=norm))
    if not values:
        raise UsageError(f"invalid eps {text!r}", "write it like 8/255, or a sweep like 1/255,2/255,4/255,8/255")
    return tuple(dict.fromkeys(values))


def format_eps(eps: float, norm: str) -> str:
    scaled = eps * 255
    if norm == "linf" and abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{eps:.4g}"
