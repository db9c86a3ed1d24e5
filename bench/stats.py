"""Percentiles for benchmark samples."""

from __future__ import annotations

import math


def percentile(samples: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile: the smallest sample >= ``fraction`` of all."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize_ms(samples: list[float]) -> dict[str, float | int | None]:
    """Return count, p50, p99 and max of samples in seconds, as milliseconds."""
    if not samples:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": len(samples),
        "p50_ms": round(percentile(samples, 0.50) * 1000, 3),
        "p99_ms": round(percentile(samples, 0.99) * 1000, 3),
        "max_ms": round(max(samples) * 1000, 3),
    }
