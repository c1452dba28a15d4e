"""Small statistics with vLLM's conventions: percentile key names, ms summaries, concurrency.

Everything returned is plain Python (float/int/None), never numpy scalars or NaN, so a summary
built from these is valid, deterministic JSON.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["describe_ms", "json_float", "max_concurrency", "percentile_label"]


def percentile_label(p: float) -> str:
    """`p99`, `p99.9`: the percentile part of a summary key.

    NOTE: vLLM's `benchmark_serving` writes `str(int(p)) if int(p) == p else str(p)`.
    """
    return f"p{int(p)}" if int(p) == p else f"p{p}"


def json_float(value: float | np.floating | None) -> float | None:
    """A plain float for JSON, or None for missing/NaN/inf (which JSON cannot represent)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def describe_ms(
    name: str, values_s: np.ndarray, percentiles: tuple[float, ...]
) -> dict[str, float | None]:
    """`mean_/median_/std_/p{P}_<name>_ms` of a population given in seconds (None if empty).

    NOTE: as vLLM: population std (ddof=0), `np.median`, and `np.percentile` with linear
    interpolation, each computed in seconds and scaled by 1000.
    """
    values_s = np.asarray(values_s, dtype=np.float64)
    out: dict[str, float | None] = {}
    if values_s.size == 0:
        out[f"mean_{name}_ms"] = None
        out[f"median_{name}_ms"] = None
        out[f"std_{name}_ms"] = None
        for p in percentiles:
            out[f"{percentile_label(p)}_{name}_ms"] = None
        return out
    out[f"mean_{name}_ms"] = json_float(np.mean(values_s) * 1000.0)
    out[f"median_{name}_ms"] = json_float(np.median(values_s) * 1000.0)
    out[f"std_{name}_ms"] = json_float(np.std(values_s) * 1000.0)
    if percentiles:
        values = np.percentile(values_s, list(percentiles))
        for p, v in zip(percentiles, values, strict=True):
            out[f"{percentile_label(p)}_{name}_ms"] = json_float(v * 1000.0)
    return out


def max_concurrency(arrived_at: np.ndarray, finished_at: np.ndarray) -> int:
    """Largest number of requests in flight (arrived, not finished) at any instant.

    A sweep over the sorted arrival (+1) and finish (-1) events; at equal times finishes go
    first, so a request leaving as another arrives does not count both. NaN finish = never.
    """
    arrived_at = np.asarray(arrived_at, dtype=np.float64)
    if arrived_at.size == 0:
        return 0
    finished_at = np.nan_to_num(np.asarray(finished_at, dtype=np.float64), nan=np.inf)
    times = np.concatenate([arrived_at, finished_at])
    deltas = np.concatenate(
        [np.ones(arrived_at.size, dtype=np.int64), -np.ones(finished_at.size, dtype=np.int64)]
    )
    order = np.lexsort((deltas, times))
    return int(np.cumsum(deltas[order]).max())
