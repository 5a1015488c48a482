"""Percentiles and run summaries (median with spread)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize(values: Sequence[float]) -> dict[str, float | int | list[float]]:
    """Median, min, max and relative spread ((max-min)/median) of the runs' values."""
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {
            "median": math.nan,
            "min": math.nan,
            "max": math.nan,
            "spread": math.nan,
            "n": 0,
            "runs": [],
        }
    med = statistics.median(clean)
    lo, hi = min(clean), max(clean)
    spread = (hi - lo) / abs(med) if med else 0.0
    return {"median": med, "min": lo, "max": hi, "spread": spread, "n": len(clean), "runs": clean}


def ratio(ours: float, peer: float) -> float:
    if peer == 0 or math.isnan(ours) or math.isnan(peer):
        return math.nan
    return ours / peer
