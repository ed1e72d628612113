"""Per-purpose seeds, so every random draw in a run is reproducible and independent of the rank count's history."""

from __future__ import annotations


def seed_for(*parts: int) -> int:
    """A stable 63-bit seed from integers (seed, rank, epoch, purpose), independent of Python's hash salt."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & 0x7FFFFFFFFFFFFFFF
    return value
