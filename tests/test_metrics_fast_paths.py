"""The metrics' shortcuts against the straightforward computations they replace, to the bit:
the fluid-search bracket from the token pass's largest gaps, segment ids by repeat, token
expansion from step pieces, and the in-flight peak counted without sorting events."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.config import FluidityConfig
from simserve.engine.records import StepTokenTimes
from simserve.metrics._segments import Scratch, segment_ids, segment_max, within_segment_gaps
from simserve.metrics.fluidity import _search_bracket, _tokens
from simserve.metrics.stats import max_concurrency

# Gaps (ms) with bursts (0) and stalls, and requests with no or one token.
gap_ms = st.sampled_from([0.0, 0.0, 3.0, 10.0, 29.5, 30.0, 47.0, 250.0, 1200.0])
request = st.tuples(st.floats(0.0, 2.0), st.integers(0, 900), st.lists(gap_ms, max_size=30),
                    st.booleans())


def _timeline(requests: list[tuple[float, int, list[float], bool]]):
    """(times, offsets, arrived, prompts) of requests given as (ttft_s, prompt, gaps_ms, any)."""
    times, offsets, arrived, prompts = [], [0], [], []
    for i, (ttft_s, prompt, gaps, has_tokens) in enumerate(requests):
        arrival = 0.37 * i
        if has_tokens:
            times.append(arrival + ttft_s + np.cumsum([0.0, *gaps]) / 1000.0)
        offsets.append(offsets[-1] + (len(gaps) + 1 if has_tokens else 0))
        arrived.append(arrival)
        prompts.append(prompt)
    flat = np.concatenate(times) if times else np.zeros(0)
    return flat, np.array(offsets, dtype=np.int64), np.array(arrived), np.array(prompts)


@settings(max_examples=200, deadline=None)
@given(requests=st.lists(request, min_size=1, max_size=8),
       rate=st.sampled_from([0.0, 0.05, 0.1, 0.3]))
def test_bracket_from_the_token_pass_max_gap_is_the_same(requests, rate) -> None:
    times, offsets, arrived, prompts = _timeline(requests)
    cfg = FluidityConfig(max_miss_rate=rate)
    # The token pass's largest gap: first tokens -inf, NaN for requests without tokens.
    gaps, _ = within_segment_gaps(times, offsets, first_value=-np.inf)
    max_gap = segment_max(gaps, offsets)
    scratch = Scratch()
    want = _search_bracket(_tokens(times, offsets, arrived, prompts, cfg, scratch), rate, scratch)
    got = _search_bracket(_tokens(times, offsets, arrived, prompts, cfg, scratch), rate, scratch,
                          max_gap)
    for got_array, want_array in zip(got, want, strict=True):
        np.testing.assert_array_equal(got_array, want_array)


@given(st.lists(st.integers(0, 5), max_size=12))
def test_segment_ids(counts: list[int]) -> None:
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    want = [segment for segment, count in enumerate(counts) for _ in range(count)]
    got = segment_ids(offsets)
    assert got.dtype == np.int64
    assert got.tolist() == want


@given(st.lists(st.lists(st.tuples(st.integers(0, 9), st.integers(1, 4)), max_size=3),
                min_size=1, max_size=6), st.data())
def test_step_token_times_expand_pieces(pieces_by_request, data) -> None:
    """`chunk` and `take` give each piece's source entries' step end times, in order, and
    `gap_multiset` the gaps between consecutive tokens of the included requests."""
    source = np.arange(12, dtype=np.int64)[::-1].copy()  # steps in any order
    step_end_s = np.linspace(0.5, 7.0, 12) ** 2
    starts = [s for pieces in pieces_by_request for s, _ in pieces]
    lengths = [min(n, 12 - s) for pieces in pieces_by_request for s, n in pieces]
    per_request = [[step_end_s[source[s : s + n]] for s, n in zip(starts[a:b], lengths[a:b],
                                                                  strict=True)]
                   for a, b in _bounds([len(p) for p in pieces_by_request])]
    want = [np.concatenate(parts) if parts else np.zeros(0) for parts in per_request]
    tokens = StepTokenTimes(
        offsets=np.concatenate([[0], np.cumsum([w.size for w in want])]).astype(np.int64),
        step_end_s=step_end_s,
        source=source,
        piece_start=np.array(starts, dtype=np.int64),
        piece_len=np.array(lengths, dtype=np.int64),
        piece_offsets=np.concatenate(
            [[0], np.cumsum([len(p) for p in pieces_by_request])]).astype(np.int64),
    )
    n = len(want)
    np.testing.assert_array_equal(tokens.chunk(0, n), np.concatenate(want))
    picked = np.array([i for i in range(n) if i % 2 == 0][::-1], dtype=np.int64)
    times, local = tokens.take(picked)
    np.testing.assert_array_equal(times, np.concatenate([want[i] for i in picked]))
    assert np.diff(local).tolist() == [want[i].size for i in picked]
    include = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    values, weights = tokens.gap_multiset(include)
    pooled = [np.diff(want[i]) for i in range(n) if include[i]]
    expected = np.sort(np.concatenate(pooled)) if pooled else np.zeros(0)
    np.testing.assert_array_equal(np.sort(np.repeat(values, weights)), expected)


def _bounds(sizes: list[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(sizes).tolist()
    return list(zip([0, *ends[:-1]], ends, strict=True))


def _sorted_events_peak(arrived: np.ndarray, finished: np.ndarray) -> int:
    """The event sweep `max_concurrency` is defined by: finishes first at equal times."""
    finished = np.nan_to_num(finished, nan=np.inf)
    times = np.concatenate([arrived, finished])
    deltas = np.concatenate([np.ones(arrived.size, np.int64), -np.ones(finished.size, np.int64)])
    return int(np.cumsum(deltas[np.lexsort((deltas, times))]).max())


instant = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, np.nan])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(instant, instant), min_size=1, max_size=12))
def test_max_concurrency_is_the_event_sweep(pairs) -> None:
    # Finishes before arrivals and NaN arrivals included: the count must match the sweep's.
    arrived = np.array([a for a, _ in pairs])
    finished = np.array([f for _, f in pairs])
    assert max_concurrency(arrived, finished) == _sorted_events_peak(arrived, finished)
