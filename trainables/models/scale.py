"""Width multipliers (`model.width`): every hidden layer's units or channels scaled alike."""

from __future__ import annotations


def scaled(units: int, width: float) -> int:
    """`units` times `width`, rounded, at least one (width 1 leaves every paper network as it is)."""
    return max(1, round(units * width))
