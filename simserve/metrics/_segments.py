"""Segment-wise numpy helpers over CSR token arrays (one segment per request).

Token times leave the engine flat, request after request, with `offsets` marking where each
request's tokens start (DESIGN §5, `engine/records.py`); these helpers compute per-token and
per-request quantities on that layout without a Python loop over tokens.

Per-token work is done on chunks of whole requests (`request_chunks`), so its temporaries are
bounded by `CHUNK_TOKENS` tokens however long the run; every per-request result depends on that
request's tokens only, so chunking never changes a value. Most per-token arrays of a chunk live
in a `Scratch` allocated once per pass and written with `out=`.

NOTE: reuse matters as much as size. Temporaries freed to malloc are mostly handed back to the
OS (heap trimming) and faulted in afresh by the next chunk; fresh pages are slow (in a VM,
re-faulting ~55 MB per chunk once cost as much as the arithmetic). The exceptions are arrays
`np.repeat` spreads from per-request values (it has no `out=`): it is so much cheaper than a
gather into scratch that a fresh array still wins (measured).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CHUNK_TOKENS",
    "Scratch",
    "request_chunks",
    "scratch_for",
    "segment_ids",
    "segment_keyed",
    "segment_max",
    "segment_starts",
    "segmented_running_min",
    "within_segment_gaps",
]

# Tokens per chunk of per-token work; a pass's scratch takes ~170 bytes per token of its
# largest chunk (~45 MB at most), plus short-lived index arrays.
CHUNK_TOKENS = 1 << 18


def request_chunks(offsets: np.ndarray, max_tokens: int | None = None) -> list[tuple[int, int]]:
    """Consecutive request ranges `[r0, r1)` of at most `max_tokens` tokens (default
    `CHUNK_TOKENS`) each, covering every request; a longer request gets a chunk of its own."""
    limit = CHUNK_TOKENS if max_tokens is None else max_tokens
    if limit < 1:
        raise ValueError(f"max_tokens must be >= 1, got {limit}")
    offsets = np.asarray(offsets, dtype=np.int64)
    num_requests = offsets.size - 1
    chunks: list[tuple[int, int]] = []
    r0 = 0
    while r0 < num_requests:
        # The furthest end whose tokens still fit, but at least one request.
        r1 = int(np.searchsorted(offsets, offsets[r0] + limit, side="right")) - 1
        r1 = min(max(r1, r0 + 1), num_requests)
        chunks.append((r0, r1))
        r0 = r1
    return chunks


class Scratch:
    """Named scratch arrays reused chunk after chunk: `get` returns a view of the size asked,
    allocating (at least `capacity` elements) only the first time or when a chunk needs more."""

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, size: int, dtype: type[np.generic] = np.float64) -> np.ndarray:
        """The first `size` elements of the array `name` (contents left over from its last use)."""
        array = self._arrays.get(name)
        if array is None or array.size < size or array.dtype != dtype:
            array = np.empty(max(size, self.capacity), dtype=dtype)
            self._arrays[name] = array
        return array[:size]

    def iota(self, size: int) -> np.ndarray:
        """0.0, 1.0, ..., size - 1 as float64 (kept, so written once per pass)."""
        array = self._arrays.get("iota")
        if array is None or array.size < size:
            array = np.arange(max(size, self.capacity), dtype=np.float64)
            self._arrays["iota"] = array
        return array[:size]


def scratch_for(offsets: np.ndarray, chunks: list[tuple[int, int]]) -> Scratch:
    """A `Scratch` sized for the largest of `chunks` (request ranges over CSR `offsets`)."""
    if not chunks:
        return Scratch()
    bounds = np.asarray([r0 for r0, _ in chunks] + [chunks[-1][1]])
    return Scratch(int(np.diff(offsets[bounds]).max()))


def segment_ids(offsets: np.ndarray) -> np.ndarray:
    """Owning segment (int64) of every flat element of CSR `offsets` (from 0).

    NOTE: `np.repeat` rather than marking boundaries with `np.add.at` and a cumulative sum:
    about 8x faster on a chunk (add.at is slow even on a few thousand indices).
    """
    return np.repeat(np.arange(offsets.size - 1, dtype=np.int64), np.diff(offsets))


def segment_starts(offsets: np.ndarray) -> np.ndarray:
    """Flat index of the first element of every non-empty segment."""
    starts = offsets[:-1]
    return starts[offsets[1:] > starts]


def within_segment_gaps(
    values: np.ndarray,
    offsets: np.ndarray,
    first_value: float = 0.0,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaps `v[j] - v[j-1]` of the flat array (into `out` if given) and the flat index of each
    segment's first element (whose gap, which would cross into the previous request, is set to
    `first_value`)."""
    gaps = np.empty(values.size, dtype=np.float64) if out is None else out
    if values.size:
        gaps[0] = first_value
        np.subtract(values[1:], values[:-1], out=gaps[1:])
    first = segment_starts(offsets)
    gaps[first] = first_value
    return gaps, first


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


def segment_keyed(seg: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A complex scratch array (`out` if given) for `segmented_running_min` over elements whose
    segment ids are `seg` (non-decreasing): write the values into its `.imag`.

    NOTE: numpy orders complex numbers lexicographically (real part first), so with real part
    -seg a running minimum restarts exactly where the segment id grows and stays exact (no
    offset arithmetic that would round the values), in one vectorised pass.
    """
    keyed = np.empty(seg.size, dtype=np.complex128) if out is None else out
    np.negative(seg, out=keyed.real, casting="unsafe")
    return keyed


def segmented_running_min(keyed: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Running minimum of `keyed.imag` restarting at every segment (see `segment_keyed`)."""
    return np.minimum.accumulate(keyed, out=out).imag
