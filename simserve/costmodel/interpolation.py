"""Monotone log-log interpolation of measured kernel latencies, and fast lookups built from it.

A kernel's latency never falls when its work grows (more GEMM rows, a longer sequence, a bigger
batch or message), and it follows power laws between a fixed floor and a bandwidth- or
compute-bound regime; so a measured curve is first made non-decreasing by isotonic regression
(pool-adjacent-violators, on log latency), then interpolated piecewise-linearly in
(log x, log latency), or in (x, latency) where the op is a floor plus a cost linear in x (decode
attention: every extra token of context is one more K and V row read; an all-reduce: every extra
element is two more bytes over the link). A GEMM's rows come in
tiles: its work, and so its time, is that of m rounded up to a whole tile, so a tiled curve
passes through every measured m, stays flat up to the end of a measured point's tile, and is
linear in the padded m between tiles (`tiled_interp`). Below its first point a curve stays at its
first value (the kernel's launch floor); past its last point it grows as x^exponent, the op's
physical asymptote (`TableSpec.exponent`). Two-dimensional tables (batch x
sequence) interpolate log-log between the rows of the two nearest measured batches.

Step pricing must cost a handful of float operations, so the cost model resamples what it needs
once, at construction: `DenseCurve` holds a value per integer (GEMM rows, sampled rows), and
`LogGrid` a uniform grid in (log2 x, log2 y) whose cells are bilinear in log space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DenseCurve",
    "LogGrid",
    "MonotoneCurve",
    "hermite",
    "isotonic_increasing",
    "pchip_slopes",
    "rows_at",
    "tiled_interp",
]


def isotonic_increasing(values: Sequence[float]) -> np.ndarray:
    """The non-decreasing sequence closest to `values` in least squares (PAVA)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out: list[float] = []
    for s, c in blocks:
        out += [s / c] * int(c)
    return np.asarray(out)


@dataclass(frozen=True)
class MonotoneCurve:
    """A measured latency curve y(x): isotonic in log y, log-log linear between points (or, with
    `smooth`, a monotone cubic: PCHIP, Fritsch and Carlson 1980, see `pchip_slopes`; with
    `linear`, linear in (x, y)), flat below the first point, x^exponent past the last. With
    `tile` > 1, linear in x rounded up to whole tiles (a GEMM's row tiles: `tiled_interp`)."""

    log_x: np.ndarray
    log_y: np.ndarray
    exponent: float
    smooth: bool = False
    linear: bool = False
    tile: int = 1

    def __post_init__(self) -> None:
        slopes = pchip_slopes(self.log_x, self.log_y) if self.smooth else None
        object.__setattr__(self, "_slopes", slopes)
        plain = self.linear or self.tile > 1
        object.__setattr__(self, "_x", np.exp(self.log_x) if plain else None)
        object.__setattr__(self, "_y", np.exp(self.log_y) if plain else None)

    @classmethod
    def fit(cls, xs: Sequence[float], ys: Sequence[float], exponent: float,
            smooth: bool = False, linear: bool = False, tile: int = 1) -> MonotoneCurve:
        """The curve through measured points (xs ascending, ys > 0)."""
        x = np.asarray(xs, dtype=np.float64)
        y = np.asarray(ys, dtype=np.float64)
        if x.size == 0 or np.any(np.diff(x) <= 0) or np.any(y <= 0):
            raise ValueError("a curve needs ascending x and positive y")
        return cls(np.log(x), isotonic_increasing(np.log(y)), exponent,
                   smooth and x.size >= 3, linear, tile)

    @property
    def x_max(self) -> float:
        return float(np.exp(self.log_x[-1]))

    def scaled(self, factor: float) -> MonotoneCurve:
        """The same curve times `factor`."""
        return MonotoneCurve(self.log_x, self.log_y + math.log(factor), self.exponent,
                             self.smooth, self.linear, self.tile)

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        """Latency at x (vectorised)."""
        x = np.maximum(np.asarray(x, dtype=np.float64), 1e-300)
        lx = np.log(x)
        slopes = self._slopes  # type: ignore[attr-defined]
        if self.tile > 1:
            inside = np.log(tiled_interp(x, self._x, self._y, self.tile))  # type: ignore[attr-defined]
        elif slopes is not None:
            inside = hermite(self.log_x, self.log_y, slopes,
                             np.clip(lx, self.log_x[0], self.log_x[-1]))
        elif self.linear:
            inside = np.log(np.interp(x, self._x, self._y))  # type: ignore[attr-defined]
        else:
            inside = np.interp(lx, self.log_x, self.log_y)
        beyond = self.log_y[-1] + self.exponent * (lx - self.log_x[-1])
        return np.exp(np.where(lx > self.log_x[-1], beyond, inside))


def tiled_interp(at: np.ndarray, x: np.ndarray, y: np.ndarray, tile: int) -> np.ndarray:
    """y at `at` (within x's range, clamped outside) for work done in whole tiles of `tile`
    rows: exact at the points, flat from a point to the end of its tile, linear in the padded
    rows (rows rounded up to whole tiles) between tiles, and linear in rows between two points
    of one tile. Non-decreasing wherever y is."""
    at = np.clip(at, x[0], x[-1])
    lo = np.clip(np.searchsorted(x, at, side="right") - 1, 0, x.size - 1)
    hi = np.minimum(lo + 1, x.size - 1)
    x_lo, x_hi, y_lo, y_hi = x[lo], x[hi], y[lo], y[hi]
    pad_at, pad_lo, pad_hi = (np.ceil(v / tile) * tile for v in (at, x_lo, x_hi))

    def chord(a: np.ndarray, a_lo: np.ndarray, a_hi: np.ndarray) -> np.ndarray:
        span = np.where(a_hi > a_lo, a_hi - a_lo, 1.0)
        return y_lo + (y_hi - y_lo) * np.where(a_hi > a_lo, (a - a_lo) / span, 0.0)

    same_lo, same_hi = pad_lo == pad_at, pad_hi == pad_at
    out = np.where(same_lo & same_hi, chord(at, x_lo, x_hi),
                   np.where(same_lo, y_lo, np.where(same_hi, y_hi,
                                                    chord(pad_at, pad_lo, pad_hi))))
    return np.where(at == x_lo, y_lo, out)


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivatives at the knots of the shape-preserving monotone cubic of Fritsch and Carlson
    (1980) with Fritsch and Butland's weighted harmonic mean inside and the one-sided
    three-point formula at the ends (the rules of Moler's `pchip`): a knot where the curve
    turns or flattens gets slope 0, so the cubic never overshoots the data."""
    h = np.diff(x)
    m = np.diff(y) / h
    d = np.zeros(x.size)
    if x.size == 2:
        d[:] = m[0]
        return d
    w1 = 2.0 * h[1:] + h[:-1]
    w2 = h[1:] + 2.0 * h[:-1]
    same_sign = (m[:-1] * m[1:]) > 0.0
    # NOTE: a slope near 0 overflows w/m to inf, and the mean to 0: the right limit.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        harmonic = (w1 + w2) / (w1 / m[:-1] + w2 / m[1:])
    d[1:-1] = np.where(same_sign, harmonic, 0.0)
    d[0] = _end_slope(h[0], h[1], m[0], m[1])
    d[-1] = _end_slope(h[-1], h[-2], m[-1], m[-2])
    return d


def _end_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    d = ((2.0 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > abs(3.0 * m0):
        return 3.0 * m0
    return d


def hermite(x: np.ndarray, y: np.ndarray, slopes: np.ndarray,
            at: np.ndarray) -> np.ndarray:
    """The cubic Hermite interpolant through (x, y) with these slopes, at `at` (within x)."""
    k = np.clip(np.searchsorted(x, at, side="right") - 1, 0, x.size - 2)
    h = x[k + 1] - x[k]
    t = (at - x[k]) / h
    t2 = t * t
    t3 = t2 * t
    return ((2.0 * t3 - 3.0 * t2 + 1.0) * y[k] + (t3 - 2.0 * t2 + t) * h * slopes[k]
            + (-2.0 * t3 + 3.0 * t2) * y[k + 1] + (t3 - t2) * h * slopes[k + 1])


def rows_at(
    rows: dict[float, MonotoneCurve], row_value: np.ndarray | float, x: np.ndarray | float,
    row_exponent: float,
) -> np.ndarray:
    """A two-dimensional table (one curve per measured row value, e.g. batch size) at
    (row_value, x): log-log between the two nearest rows, flat below the first row, and
    row_value^row_exponent past the last (vectorised; broadcasts row_value against x)."""
    keys = sorted(rows)
    r, x = np.broadcast_arrays(np.asarray(row_value, dtype=np.float64),
                               np.asarray(x, dtype=np.float64))
    log_keys = np.log(keys)
    at_rows = np.log(np.stack([rows[k](x) for k in keys]))  # (rows, ...)
    lr = np.log(np.maximum(r, 1e-300))
    pos = np.clip(np.searchsorted(log_keys, lr, side="right") - 1, 0, len(keys) - 1)
    if len(keys) == 1:
        out = at_rows[0] + row_exponent * np.maximum(lr - log_keys[0], 0.0)
        return np.exp(out)
    lo = np.minimum(pos, len(keys) - 2)
    t = (lr - log_keys[lo]) / (log_keys[lo + 1] - log_keys[lo])
    y_lo = np.take_along_axis(at_rows, lo[None, ...], 0)[0]
    y_hi = np.take_along_axis(at_rows, (lo + 1)[None, ...], 0)[0]
    inside = y_lo + np.clip(t, 0.0, 1.0) * (y_hi - y_lo)
    beyond = at_rows[-1] + row_exponent * (lr - log_keys[-1])
    below = at_rows[0]
    out = np.where(lr > log_keys[-1], beyond, np.where(lr < log_keys[0], below, inside))
    return np.exp(out)


class DenseCurve:
    """Values at every integer 0..n-1 (a Python list: one index per lookup), growing as
    x^exponent past the end."""

    __slots__ = ("_last", "_n", "_values", "exponent")

    def __init__(self, values: Sequence[float], exponent: float) -> None:
        self._values = [float(v) for v in values]
        self._n = len(self._values)
        self._last = self._values[-1]
        self.exponent = exponent

    def __call__(self, x: int) -> float:
        if x < self._n:
            return self._values[x]
        return self._last * ((x / (self._n - 1)) ** self.exponent)


class LogGrid:
    """f(a, b) sampled on a uniform grid in (log2 a, log2 b), `per_octave` points per octave
    from 1 to 2^octaves on each axis; bilinear in (log2 a, log2 b, log f) between samples and
    clamped to the grid's edges (callers size the grid to cover what they ask)."""

    __slots__ = ("_na", "_nb", "_per", "_rows")

    def __init__(self, log_values: np.ndarray, per_octave: int) -> None:
        self._rows = [list(map(float, row)) for row in log_values]
        self._na = len(self._rows) - 1
        self._nb = len(self._rows[0]) - 1
        self._per = per_octave

    @staticmethod
    def axis(octaves: int, per_octave: int) -> np.ndarray:
        """The sample points of one axis: 2^(i / per_octave), i = 0..octaves x per_octave."""
        return np.exp2(np.arange(octaves * per_octave + 1) / per_octave)

    @property
    def per_octave(self) -> int:
        return self._per

    @property
    def last_b(self) -> int:
        """Index of the last sample on the second axis."""
        return self._nb

    def first_axis(self, a: float) -> tuple[float, list[float], list[float]]:
        """`__call__`'s first-axis half for a fixed `a`: the blend weight and the two rows it
        blends (for callers that sweep `b` at one `a` and repeat the rest of `__call__`)."""
        fa = math.log2(a) * self._per if a > 1.0 else 0.0
        ia = int(fa)
        if ia >= self._na:
            ia, fa = self._na - 1, float(self._na)
        return fa - ia, self._rows[ia], self._rows[ia + 1]

    def __call__(self, a: float, b: float) -> float:
        per = self._per
        fa = math.log2(a) * per if a > 1.0 else 0.0
        fb = math.log2(b) * per if b > 1.0 else 0.0
        ia = int(fa)
        ib = int(fb)
        if ia >= self._na:
            ia, fa = self._na - 1, float(self._na)
        if ib >= self._nb:
            ib, fb = self._nb - 1, float(self._nb)
        ta = fa - ia
        tb = fb - ib
        r0 = self._rows[ia]
        r1 = self._rows[ia + 1]
        v0 = r0[ib] + tb * (r0[ib + 1] - r0[ib])
        v1 = r1[ib] + tb * (r1[ib + 1] - r1[ib])
        return math.exp(v0 + ta * (v1 - v0))
