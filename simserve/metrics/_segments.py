"""Segment-wise numpy helpers over CSR token arrays (one segment per request).

Token times leave the engine flat, request after request, with `offsets` marking where each
request's tokens start (DESIGN §5, `engine/records.py`); these helpers compute per-token and
per-request quantities on that layout without a Python loop over tokens.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "segment_ids",
    "segment_keyed",
    "segment_max",
    "segmented_running_min",
    "within_segment_gaps",
]


def segment_ids(offsets: np.ndarray) -> np.ndarray:
    """Owning segment (request id) of every flat element, so per-token values can be grouped."""
    counts = np.diff(offsets)
    return np.repeat(np.arange(counts.size, dtype=np.int64), counts)


def within_segment_gaps(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaps `v[j] - v[j-1]` of the flat array and a mask of the first element of each segment
    (whose gap, which would cross into the previous request, is set to 0 and must be ignored)."""
    gaps = np.empty_like(values)
    if values.size:
        gaps[0] = 0.0
        np.subtract(values[1:], values[:-1], out=gaps[1:])
    is_first = np.zeros(values.size, dtype=bool)
    counts = np.diff(offsets)
    is_first[offsets[:-1][counts > 0]] = True
    gaps[is_first] = 0.0
    return gaps, is_first


def segment_max(values: np.ndarray, offsets: np.ndarray, empty: float = np.nan) -> np.ndarray:
    """Maximum of each segment (`empty` for segments with no elements)."""
    counts = np.diff(offsets)
    out = np.full(counts.size, empty, dtype=np.float64)
    nonempty = counts > 0
    if np.any(nonempty):
        # NOTE: reduceat over the starts of non-empty segments only: each reduction then runs to
        # the next non-empty start, which is exactly the segment's end (empty ones hold nothing).
        out[nonempty] = np.maximum.reduceat(values, offsets[:-1][nonempty])
    return out


def segment_keyed(seg: np.ndarray) -> np.ndarray:
    """A complex scratch array for `segmented_running_min`: write the values into its `.imag`.

    NOTE: numpy orders complex numbers lexicographically (real part first), so with real part
    -seg (seg non-decreasing) a running minimum restarts exactly where the segment id grows and
    stays exact (no offset arithmetic that would round the values), in one vectorised pass.
    """
    keyed = np.empty(seg.size, dtype=np.complex128)
    keyed.real = -seg.astype(np.float64)
    return keyed


def segmented_running_min(keyed: np.ndarray) -> np.ndarray:
    """Running minimum of `keyed.imag` restarting at every segment (see `segment_keyed`)."""
    return np.minimum.accumulate(keyed).imag
