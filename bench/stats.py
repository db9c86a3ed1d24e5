"""Percentiles for benchmark samples, and the median and spread of repeated runs."""

from __future__ import annotations

import math
import statistics


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


def spread(values: list[float | None], digits: int = 3) -> dict[str, float | int | None]:
    """Return the median, min and max of one figure over repeated runs, skipping missing runs."""
    present = [value for value in values if value is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "runs": 0}
    return {
        "median": round(statistics.median(present), digits),
        "min": round(min(present), digits),
        "max": round(max(present), digits),
        "runs": len(present),
    }


def ratio(numerator: float | None, denominator: float | None, digits: int = 2) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)
