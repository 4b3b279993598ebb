"""Confidence intervals of proportions from counts alone (no torch: the typed results use it)."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (from counts alone, so no per-query data is kept)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def shown(value: float | None, digits: int = 3) -> str:
    """A number as text reports print it: fixed ``digits``, never "-0.000" (a value that rounds to zero is 0),
    "n/a" for None."""
    if value is None:
        return "n/a"
    return f"{round(float(value), digits) + 0.0:.{digits}f}"
