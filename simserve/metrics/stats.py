"""Small statistics with vLLM's conventions: percentile key names, ms summaries, concurrency.

Everything returned is plain Python (float/int/None), never numpy scalars or NaN, so a summary
built from these is valid, deterministic JSON.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "describe_ms",
    "json_float",
    "max_concurrency",
    "mean_std",
    "median_and_percentiles",
    "percentile_label",
]


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


def mean_std(values_s: np.ndarray, scratch: np.ndarray | None = None) -> tuple[float, float]:
    """`np.mean` and `np.std` (population) of a non-empty float64 array, bit for bit.

    With `scratch` (a float64 array of the same size) the squared deviations are written there
    instead of into a new array as large as the data: `np.std`'s own steps, in its order.
    """
    if scratch is None:
        return float(np.mean(values_s)), float(np.std(values_s))
    count = values_s.size
    mean = np.add.reduce(values_s) / count
    deviations = np.subtract(values_s, mean, out=scratch)
    np.square(deviations, out=deviations)
    return float(mean), float(np.sqrt(np.add.reduce(deviations) / count))


def _select(values: np.ndarray, kth: set[int]) -> None:
    """Partition `values` in place so each index in `kth` holds its order statistic (what
    `values.partition(sorted(kth))` guarantees), with single-index partitions only.

    NOTE: numpy's partition is a fast vectorised select for one index but falls back to a
    generic introselect for several, which is several times slower on data with many equal
    values (such as token gaps, multiples of a few step times).
    """
    stack = [(0, values.size, sorted(kth))]
    while stack:
        lo, hi, ks = stack.pop()
        if not ks:
            continue
        middle = len(ks) // 2
        k = ks[middle]
        values[lo:hi].partition(k - lo)
        stack.append((lo, k, ks[:middle]))
        stack.append((k + 1, hi, ks[middle + 1 :]))


def median_and_percentiles(
    values_s: np.ndarray, percentiles: tuple[float, ...], *, overwrite_input: bool = False
) -> tuple[float, list[float]]:
    """`np.median` and `np.percentile` (linear interpolation) of a non-empty float64 array, the
    very same numbers, from one in-place selection (a copy unless `overwrite_input`).

    numpy's median is the mean of the middle one or two order statistics, and its linear
    percentile interpolates between order statistics floor(v) and floor(v) + 1 at v = (n - 1) *
    q / 100; those are selected here and numpy does the final arithmetic on them (`np.mean` on
    the middle slice, `np.quantile` on the two bracketing values, which gives v's fraction back
    exactly). NaNs and percentiles at the top end take numpy's own route.
    """
    values = values_s if overwrite_input else values_s.copy()
    count = values.size
    quantiles = np.true_divide(list(percentiles), 100)
    virtual = (count - 1) * quantiles  # numpy's virtual index for its "linear" method
    if np.isnan(np.max(values)) or np.any(virtual >= count - 1):
        median = float(np.median(values, overwrite_input=True))
        if not percentiles:
            return median, []
        return median, [float(v) for v in np.percentile(values, list(percentiles),
                                                        overwrite_input=True)]
    below = np.floor(virtual).astype(np.intp)
    half = count // 2
    middle = slice(half - 1, half + 1) if count % 2 == 0 else slice(half, half + 1)
    _select(values, {*range(middle.start, middle.stop), *below.tolist(), *(below + 1).tolist()})
    median = float(np.mean(values[middle]))
    fraction = virtual - below  # numpy's gamma
    tail = [
        float(np.quantile(values[k : k + 2], fraction[i : i + 1])[0])
        for i, k in enumerate(below.tolist())
    ]
    return median, tail


def describe_ms(
    name: str,
    values_s: np.ndarray,
    percentiles: tuple[float, ...],
    *,
    overwrite_input: bool = False,
    moments: tuple[float, float] | None = None,
) -> dict[str, float | None]:
    """`mean_/median_/std_/p{P}_<name>_ms` of a population given in seconds (None if empty).

    NOTE: as vLLM: population std (ddof=0), `np.median`, and `np.percentile` with linear
    interpolation, each computed in seconds and scaled by 1000 (the numbers numpy gives, see
    `median_and_percentiles`). With `overwrite_input` the order statistics are selected in
    `values_s` itself instead of a copy; the mean and std, whose float sums depend on the order,
    are taken first, or given as `moments` (`mean_std` of the array in its original order).
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
    mean, std = mean_std(values_s) if moments is None else moments
    median, tail = median_and_percentiles(
        values_s, percentiles, overwrite_input=overwrite_input
    )
    out[f"mean_{name}_ms"] = json_float(mean * 1000.0)
    out[f"median_{name}_ms"] = json_float(median * 1000.0)
    out[f"std_{name}_ms"] = json_float(std * 1000.0)
    for p, v in zip(percentiles, tail, strict=True):
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
