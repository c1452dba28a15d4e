"""Small statistics with vLLM's conventions: percentile key names, ms summaries, concurrency.

Everything returned is plain Python (float/int/None), never numpy scalars or NaN, so a summary
built from these is valid, deterministic JSON.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "GapMoments",
    "describe_ms",
    "describe_weighted_ms",
    "json_float",
    "max_concurrency",
    "mean_std",
    "median_and_percentiles",
    "percentile_label",
    "weighted_median_and_percentiles",
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


def weighted_median_and_percentiles(
    values_s: np.ndarray, counts: np.ndarray, percentiles: tuple[float, ...]
) -> tuple[float, list[float]]:
    """`median_and_percentiles` of the population holding each of `values_s` `counts` times
    (finite values, counts > 0): the same numbers, from the order statistics found on the
    cumulative counts of the sorted distinct values, with numpy's final arithmetic on them."""
    # Any order of equal values reads the same value at every rank: no stable sort needed.
    order = np.argsort(values_s)
    values = values_s[order]
    cum = np.cumsum(counts[order])
    count = int(cum[-1])

    def rank(k: int) -> float:
        return float(values[np.searchsorted(cum, k, side="right")])

    half = count // 2
    middle = [half - 1, half] if count % 2 == 0 else [half]
    median = float(np.mean(np.array([rank(k) for k in middle])))
    quantiles = np.true_divide(list(percentiles), 100)
    virtual = (count - 1) * quantiles  # numpy's virtual index for its "linear" method
    below = np.floor(virtual).astype(np.intp)
    fraction = virtual - below  # numpy's gamma
    tail = []
    for i, k in enumerate(below.tolist()):
        if k >= count - 1:
            tail.append(rank(count - 1))
        else:
            pair = np.array([rank(k), rank(k + 1)])
            tail.append(float(np.quantile(pair, fraction[i : i + 1])[0]))
    return median, tail


class GapMoments:
    """Mean and population std of the pooled gaps (TBT) and of their positive part (ITL),
    streamed in population order, in bounded memory.

    A stream of `total` gaps that fits `capacity` is buffered whole and reduced as `mean_std`
    would reduce it (numpy's pairwise sum, then squared deviations), its positive gaps
    likewise: `mean_std`'s very numbers. A longer stream is reduced array by array as it comes
    (while each is still in cache) and the parts are combined with Chan et al.'s pairwise
    update.
    """

    def __init__(self, total: int, capacity: int) -> None:
        self._whole = total <= capacity
        self._buffer = np.empty(total if self._whole else 0)
        self._scratch = np.empty(total if self._whole else 0)
        self._filled = 0
        # Per reduced part: (count, mean, sum of squared deviations).
        self._parts: dict[str, list[tuple[int, float, float]]] = {"tbt": [], "itl": []}

    def add(self, gaps_s: np.ndarray) -> None:
        if not self._whole:
            self._reduce(gaps_s, np.empty(gaps_s.size))
            return
        start = 0
        while start < gaps_s.size:
            room = self._buffer.size - self._filled
            if room == 0:
                self._fold()
                continue
            part = gaps_s[start : start + room]
            self._buffer[self._filled : self._filled + part.size] = part
            self._filled += part.size
            start += part.size

    def _fold(self) -> None:
        if self._filled:
            self._reduce(self._buffer[: self._filled], self._scratch)
        self._filled = 0

    def _reduce(self, tbt: np.ndarray, scratch: np.ndarray) -> None:
        """Add the moments of `tbt` and of its positive part (`tbt` is overwritten)."""
        if not tbt.size:
            return
        self._parts["tbt"].append(_moments(tbt, scratch[: tbt.size]))
        itl = _positive_into(tbt, scratch)
        if itl.size:
            self._parts["itl"].append(_moments(itl, tbt[: itl.size]))

    def result(self) -> dict[str, tuple[int, float, float] | None]:
        """'tbt'/'itl' -> (count, mean, std), or None for no gaps."""
        self._fold()
        return {name: _combine(parts) for name, parts in self._parts.items()}


def _moments(values: np.ndarray, scratch: np.ndarray) -> tuple[int, float, float]:
    """(count, mean, sum of squared deviations), `mean_std`'s operations in its order."""
    n = values.size
    mean = np.add.reduce(values) / n
    deviations = np.subtract(values, mean, out=scratch[:n])
    np.square(deviations, out=deviations)
    return n, float(mean), float(np.add.reduce(deviations))


def _combine(parts: list[tuple[int, float, float]]) -> tuple[int, float, float] | None:
    if not parts:
        return None
    n, mean, m2 = parts[0]
    for n_b, mean_b, m2_b in parts[1:]:
        total = n + n_b
        delta = mean_b - mean
        mean += delta * n_b / total
        m2 += m2_b + delta * delta * n * n_b / total
        n = total
    return n, mean, float(np.sqrt(m2 / n))


def _positive_into(values: np.ndarray, out: np.ndarray, block: int = 1 << 18) -> np.ndarray:
    """`values[values > 0]`, in order, written to the start of `out` (a view of it returned).

    NOTE: flatnonzero + take block by block, not a boolean mask: bursts make the mask pattern
    data-dependent, and masked copies then run branch-mispredicted, several times slower.
    """
    flags = np.empty(min(block, values.size), dtype=bool)
    filled = 0
    for start in range(0, values.size, block):
        part = values[start : start + block]
        kept = np.flatnonzero(np.greater(part, 0.0, out=flags[: part.size]))
        np.take(part, kept, out=out[filled : filled + kept.size], mode="clip")
        filled += kept.size
    return out[:filled]


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
    return _summary_ms(name, mean, std, median, tail, percentiles)


def describe_weighted_ms(
    name: str,
    values_s: np.ndarray,
    counts: np.ndarray | None,
    percentiles: tuple[float, ...],
    moments: tuple[float, float],
) -> dict[str, float | None]:
    """`describe_ms` of a population given as values and how often each occurs (None: once
    each; `values_s` is then reordered in place), with its mean and std computed elsewhere
    (`GapMoments`, over the population in its order)."""
    if values_s.size == 0:
        return describe_ms(name, values_s, percentiles)
    if counts is None:
        median, tail = median_and_percentiles(values_s, percentiles, overwrite_input=True)
    else:
        median, tail = weighted_median_and_percentiles(values_s, counts, percentiles)
    return _summary_ms(name, *moments, median, tail, percentiles)


def _summary_ms(name: str, mean: float, std: float, median: float, tail: list[float],
                percentiles: tuple[float, ...]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
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
    if not np.isnan(arrived_at).any():
        return _max_concurrency_counted(arrived_at, finished_at)
    times = np.concatenate([arrived_at, finished_at])
    deltas = np.concatenate(
        [np.ones(arrived_at.size, dtype=np.int64), -np.ones(finished_at.size, dtype=np.int64)]
    )
    order = np.lexsort((deltas, times))
    return int(np.cumsum(deltas[order]).max())


def _max_concurrency_counted(arrived_at: np.ndarray, finished_at: np.ndarray) -> int:
    """`max_concurrency` without the event sort (no NaN arrivals): the same number, counted.

    The running count peaks just after the last arrival at some instant t, where it is the
    arrivals at or before t minus the finishes at or before t (finishes go first at equal
    times): a finish only lowers it, and after the last arrival it is n minus at most n >= 0,
    above the -1 of a finish coming first.
    """
    arrivals = np.sort(arrived_at)
    finishes = np.sort(finished_at)
    # Each distinct arrival instant once, with the arrivals up to and including it.
    last = np.flatnonzero(np.append(arrivals[1:] != arrivals[:-1], True))
    in_flight = (last + 1) - np.searchsorted(finishes, arrivals[last], side="right")
    return int(in_flight.max())
