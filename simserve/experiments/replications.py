"""Statistics over replication seeds: one number's value and 95% interval, and a paired ratio's.

Latencies, throughputs and capacities are positive, and their seed-to-seed spread is
multiplicative (a seed with longer prompts stretches every latency), so intervals are taken on
the log scale: a Student-t interval of the mean logarithm, exponentiated. It can never leave
(0, inf), and its centre is the geometric mean over seeds. Two systems run on the same seeds see
the same requests (common random numbers), so their comparison is paired: a t-interval of the
per-seed log ratios, whose centre is exactly the ratio of the two geometric means. The ratio a
verdict states is therefore always the centre of the interval shown with it.

A quantity that is 0 on some seed (a scheduling delay, a deadline-miss rate) has no logarithm;
it gets the arithmetic mean and a t-interval cut at the quantity's bounds (0, and 1 for a
fraction). Cutting keeps the coverage: the true mean lies inside the bounds, so an interval that
held it still does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["CONFIDENCE", "SeedEstimate", "paired_log_interval", "seed_estimate"]

CONFIDENCE = 0.95

Estimator = Literal["geometric mean", "mean"]


@dataclass(frozen=True)
class SeedEstimate:
    """A value over seeds: its centre (`estimator`), and the `confidence` interval around it
    (None with a single seed, or when every seed gave the same value: then low = high)."""

    value: float
    low: float | None
    high: float | None
    estimator: Estimator

    @property
    def interval(self) -> tuple[float, float] | None:
        """(low, high), or None without an interval."""
        return None if self.low is None or self.high is None else (self.low, self.high)


def _t_half(values: np.ndarray, confidence: float) -> float:
    """Half-width of the Student-t interval of the mean of `values`."""
    # Imported here: commands that only run a scenario load the catalog, not scipy.
    from scipy import stats

    quantile = stats.t.ppf(0.5 + confidence / 2.0, values.size - 1)
    return float(quantile * np.std(values, ddof=1) / math.sqrt(values.size))


def seed_estimate(values: Sequence[float | None], *, upper: float | None = None,
                  confidence: float = CONFIDENCE) -> SeedEstimate | None:
    """The value over seeds of a non-negative quantity, with its interval (see the module).

    None when a seed has no value (a missing or non-finite number): a value from only some
    seeds would compare systems on different requests. `upper` is the quantity's largest
    possible value (1 for a fraction); intervals never cross it, nor 0.
    """
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    arr = np.asarray(values, dtype=np.float64)
    if np.any(arr < 0):
        raise ValueError(f"seed_estimate is for non-negative quantities, got {values}")
    if np.all(arr > 0):
        logs = np.log(arr)
        centre = float(np.mean(logs))
        value = math.exp(centre)
        if arr.size < 2:
            return SeedEstimate(value, None, None, "geometric mean")
        half = _t_half(logs, confidence)
        low, high = math.exp(centre - half), math.exp(centre + half)
        if upper is not None:
            value, low, high = min(value, upper), min(low, upper), min(high, upper)
        return SeedEstimate(value, low, high, "geometric mean")
    value = float(np.mean(arr))
    if arr.size < 2:
        return SeedEstimate(value, None, None, "mean")
    half = _t_half(arr, confidence)
    low, high = max(value - half, 0.0), value + half
    if upper is not None:
        high = min(high, upper)
    return SeedEstimate(value, low, high, "mean")


def paired_log_interval(ratios: Sequence[float | None], *, confidence: float = CONFIDENCE
                        ) -> tuple[float, float, float] | None:
    """(centre, low, high) of per-seed ratios on the log scale: the geometric mean of the
    ratios and the t-interval of their logarithms, exponentiated. None with fewer than two
    seeds or when a ratio is missing, not finite or not positive."""
    if len(ratios) < 2 or any(r is None or not math.isfinite(r) or r <= 0 for r in ratios):
        return None
    logs = np.log(np.asarray(ratios, dtype=np.float64))
    centre = float(np.mean(logs))
    half = _t_half(logs, confidence)
    return math.exp(centre), math.exp(centre - half), math.exp(centre + half)
