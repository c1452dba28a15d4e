"""Etalon's deadline-based metrics: fluidity-index per request and the fluid token rate.

Etalon (Agrawal et al., "Etalon: Holistic Performance Evaluation Framework for LLM Inference
Systems") gives every token a deadline: the first is due D_p(prompt) after arrival, each next
one D_d after the previous deadline. Tokens that come early bank slack for later ones; a late
token counts the deadlines it missed and resets the slack (DESIGN §5).

Vectorisation. Slack follows the Lindley recursion s_i = max(0, s_(i-1) + D_d - g_i) (with the
first step D_p - ttft). Its closed form uses S_i = D_p + (i-1) D_d - (t_i - a), token i's
deadline minus its elapsed time: s_i = S_i - M_i with M_i = min(0, S_1..S_i). Token i is late
exactly when S_i sets a new minimum, M_(i-1) - S_i > 0, by that amount L_i, and it then misses
1 + floor(L_i / D_d) deadlines (Etalon's 1 + floor((ttft - D_p)/D_d) for the first token and
floor((gap - slack)/D_d) for later ones, rewritten). So a per-request running minimum (one
segmented accumulate) replaces the loop over tokens.

Memory. Requests are independent, so the per-token arrays are built and walked one chunk of
whole requests at a time, in scratch arrays reused from chunk to chunk (`_segments`): memory
stays bounded at any scale and every result is the same as in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from simserve.config import FluidityConfig
from simserve.engine.records import TokenTimes
from simserve.metrics._segments import (
    Scratch,
    request_chunks,
    scratch_for,
    segment_ids,
    segment_keyed,
    segment_max,
    segmented_running_min,
    within_segment_gaps,
)

__all__ = [
    "DEADLINE_TOLERANCE_S",
    "FLUID_RATE_PERCENTILE",
    "FLUID_REL_PRECISION",
    "MIN_TBT_DEADLINE_S",
    "DeadlineSearch",
    "deadline_misses",
    "fluid_tbt_deadline_s",
    "fluid_token_rate",
    "fluidity_index",
    "search_fluid_rate",
]

# NOTE: token times are sums of float step durations, so a token due exactly at its deadline
# can come out a few ulps late; lateness up to 1 ns counts as on time (and deadline counts are
# taken 1 ns generously), which makes results match exact arithmetic on the worked examples.
DEADLINE_TOLERANCE_S = 1e-9
# Floor of the D_d search in `fluid_tbt_deadline_s`: a request whose tokens all beat their
# deadlines for any D_d reports this, so fluid token rates are capped at 1e6 tokens/s.
MIN_TBT_DEADLINE_S = 1e-6
# Defaults of the fluid token rate (Etalon's P99) and of its D_d search precision.
FLUID_RATE_PERCENTILE = 99.0
FLUID_REL_PRECISION = 0.01


@dataclass(frozen=True)
class _Tokens:
    """Flat per-token arrays of one chunk of requests (views into the pass's `Scratch`)."""

    offsets: np.ndarray  # int64, size R+1, starting at 0
    num_tokens: np.ndarray  # int64 per request
    first: np.ndarray  # int64: flat index of the first token of every request with tokens
    base_s: np.ndarray  # float64 per token: S at D_d = 0, i.e. D_p - (t - a)
    index: np.ndarray  # float64 per token: 0-based position in its request
    gap_s: np.ndarray  # float64 per token: gap to the previous token, +inf for a first token


@dataclass(frozen=True)
class _Slots:
    """The tokens a deadline walk visits, per request in order (CSR, like the tokens).

    A token whose gap is <= D_d is never late and never lowers the running minimum (S_i >=
    S_(i-1) >= M_(i-1)), so for D_d >= `min_gap` such tokens are dropped: bursts always, most
    decode tokens usually. They still count as deadlines met (via `num_tokens`). First tokens
    are always kept.
    """

    offsets: np.ndarray  # int64, size R+1: the slots of request r are [offsets[r], offsets[r+1])
    slots_per_request: np.ndarray  # int64 per request (0 for requests left out)
    first_slot: np.ndarray  # int64: index of the first slot of every request that has slots
    seg: np.ndarray  # int64 per slot: request, non-decreasing
    base_s: np.ndarray  # float64 per slot
    index: np.ndarray  # float64 per slot
    gap_s: np.ndarray  # float64 per slot (+inf for a first token)
    keyed: np.ndarray  # complex128 per slot, from segment_keyed: real -seg, imag scratch

    @property
    def num_requests(self) -> int:
        """Requests of the chunk, with or without slots."""
        return self.offsets.size - 1



def _per_token(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-request `values` onto the elements (tokens or slots) each request owns, `counts`
    of them per request, in order."""
    # NOTE: `np.repeat` is several times faster than gathering by the segment ids.
    return np.repeat(values, counts)


def _tokens(
    times: np.ndarray,
    offsets: np.ndarray,
    arrived_at: np.ndarray,
    prompt_len: np.ndarray,
    config: FluidityConfig,
    scratch: Scratch,
    gaps: np.ndarray | None = None,
) -> _Tokens:
    """Per-token arrays of one chunk; `times` and `offsets` (from 0) are the chunk's own.

    `gaps`, if given, are the chunk's within-request gaps with any first-token value: this takes
    the array over (its first-token entries become +inf) instead of computing it again.
    """
    size = times.size
    counts = np.diff(offsets)
    if gaps is None:
        gaps, first = within_segment_gaps(
            times, offsets, first_value=np.inf, out=scratch.get("gap", size)
        )
    else:
        first = offsets[:-1][counts > 0]
        gaps[first] = np.inf
    base = _per_token(config.first_token_deadline_s(prompt_len) + arrived_at, counts)
    base -= times
    # Position in the request: exact small integers, as float64 for the deadline arithmetic.
    index = _per_token(offsets[:-1].astype(np.float64), counts)
    np.subtract(scratch.iota(size), index, out=index)
    return _Tokens(
        offsets=offsets, num_tokens=counts, first=first, base_s=base, index=index,
        gap_s=gaps,
    )


def _chunks(
    token_times_s: np.ndarray,
    offsets: np.ndarray,
    arrived_at: np.ndarray,
    prompt_len: np.ndarray,
    config: FluidityConfig,
) -> Iterator[tuple[int, int, _Tokens, Scratch]]:
    """`(r0, r1, tokens, scratch)` for consecutive chunks of whole requests `[r0, r1)`."""
    times = np.asarray(token_times_s, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    arrived_at = np.asarray(arrived_at, dtype=np.float64)
    prompt_len = np.asarray(prompt_len)
    chunks = request_chunks(offsets)
    scratch = scratch_for(offsets, chunks)
    for r0, r1 in chunks:
        t0, t1 = int(offsets[r0]), int(offsets[r1])
        tokens = _tokens(
            times[t0:t1], offsets[r0 : r1 + 1] - t0, arrived_at[r0:r1], prompt_len[r0:r1],
            config, scratch,
        )
        yield r0, r1, tokens, scratch


def _gather_slots(
    kept: np.ndarray,
    source_offsets: np.ndarray,
    source: tuple[np.ndarray, np.ndarray, np.ndarray],
    scratch: Scratch,
    bank: int,
) -> _Slots:
    """Slots at the sorted flat positions `kept` of a CSR source (tokens or a previous slot set)
    whose (base, index, gap) arrays are `source`, written to scratch bank 0 or 1."""
    # NOTE: integer `take` rather than boolean masks: masks with data-dependent patterns run
    # branch-mispredicted, several times slower than flatnonzero + take.
    size = kept.size
    base, index, gap = (
        np.take(array, kept, out=scratch.get(f"slot{bank}_{name}", size, array.dtype.type),
                mode="clip")
        for name, array in zip(("base", "index", "gap"), source, strict=True)
    )
    offsets = np.searchsorted(kept, source_offsets).astype(np.int64)
    per_request = np.diff(offsets)
    seg = segment_ids(offsets)
    return _Slots(
        offsets=offsets,
        slots_per_request=per_request,
        first_slot=offsets[:-1][per_request > 0],
        seg=seg,
        base_s=base,
        index=index,
        gap_s=gap,
        keyed=segment_keyed(seg, out=scratch.get("slot_keyed", size, np.complex128)),
    )


def _above(gap: np.ndarray, counts: np.ndarray, min_gap_s: float | np.ndarray,
           include: np.ndarray | None, scratch: Scratch) -> np.ndarray:
    """Flat positions with gap > min_gap_s (a scalar or one per request, whose elements are
    `counts` consecutive ones) in included requests."""
    if include is not None:
        # gap > inf never holds (not even for a first token's +inf): one comparison drops
        # requests left out as well as small gaps.
        min_gap_s = np.where(include, min_gap_s, np.inf)
    if np.ndim(min_gap_s):
        min_gap_s = _per_token(min_gap_s, counts)
    return np.flatnonzero(np.greater(gap, min_gap_s, out=scratch.get("flag", gap.size, np.bool_)))


def _slots(tokens: _Tokens, min_gap_s: float | np.ndarray, include: np.ndarray | None,
           scratch: Scratch) -> _Slots:
    """Slots of the included requests (all if None): first tokens and gaps > min_gap_s (a
    scalar, or one value per request)."""
    kept = _above(tokens.gap_s, tokens.num_tokens, min_gap_s, include, scratch)
    source = (tokens.base_s, tokens.index, tokens.gap_s)
    return _gather_slots(kept, tokens.offsets, source, scratch, bank=0)


def _prune(slots: _Slots, min_gap_s: np.ndarray, include: np.ndarray, scratch: Scratch,
           bank: int) -> _Slots:
    """Drop slots of requests no longer included and tokens with gap <= their new min_gap_s
    (into scratch `bank`, which must not be the one `slots` lives in)."""
    kept = _above(slots.gap_s, slots.slots_per_request, min_gap_s, include, scratch)
    source = (slots.base_s, slots.index, slots.gap_s)
    return _gather_slots(kept, slots.offsets, source, scratch, bank)


def _misses(slots: _Slots, tbt_deadline_s: float | np.ndarray,
            scratch: Scratch) -> tuple[np.ndarray, np.ndarray]:
    """Deadlines missed and late tokens per request, for D_d in seconds (a scalar, or one value
    per request)."""
    size = slots.seg.size
    if size == 0:
        zeros = np.zeros(slots.num_requests)
        return zeros, zeros.astype(np.int64)
    per_request = np.ndim(tbt_deadline_s) > 0
    d_slot = _per_token(tbt_deadline_s, slots.slots_per_request) if per_request else tbt_deadline_s
    s = slots.keyed.imag  # a view: S is written straight into the keyed scratch
    np.multiply(slots.index, d_slot, out=s)
    s += slots.base_s
    # M_i = min(0, S_1..S_i): seed each request's running minimum with min(S_1, 0).
    s_first = s[slots.first_slot]
    s[slots.first_slot] = np.minimum(s_first, 0.0)
    running_min = segmented_running_min(
        slots.keyed, out=scratch.get("slot_min", size, np.complex128)
    )
    # Lateness of slot p is M_(p-1) - S_p; for a first token M_0 = 0.
    lateness = scratch.get("slot_work", size)
    lateness[0] = 0.0
    np.subtract(running_min[:-1], s[1:], out=lateness[1:])
    lateness[slots.first_slot] = -s_first
    late = np.flatnonzero(
        np.greater(lateness, DEADLINE_TOLERANCE_S, out=scratch.get("flag", size, np.bool_))
    )
    owner = slots.seg[late]
    d_late = np.asarray(tbt_deadline_s)[owner] if per_request else tbt_deadline_s
    missed_each = np.floor((lateness[late] + DEADLINE_TOLERANCE_S) / d_late) + 1.0
    missed = np.bincount(owner, weights=missed_each, minlength=slots.num_requests)
    num_late = np.bincount(owner, minlength=slots.num_requests)
    return missed, num_late


def _chunk_deadline_misses(
    tokens: _Tokens, config: FluidityConfig, scratch: Scratch
) -> tuple[np.ndarray, np.ndarray]:
    """`deadline_misses` of one chunk."""
    d = config.tbt_deadline_ms / 1000.0
    missed, num_late = _misses(_slots(tokens, d, None, scratch), d, scratch)
    counted = (tokens.num_tokens - num_late) + missed
    return missed, counted


def _chunk_fluidity_index(tokens: _Tokens, config: FluidityConfig, scratch: Scratch) -> np.ndarray:
    """`fluidity_index` of one chunk."""
    return _chunk_fluidity(tokens, config, scratch)[0]


def _chunk_fluidity(tokens: _Tokens, config: FluidityConfig,
                    scratch: Scratch) -> tuple[np.ndarray, np.ndarray]:
    """Fluidity-index and deadline-miss rate (missed / counted) of each request of one chunk
    (NaN where no deadline counts)."""
    missed, counted = _chunk_deadline_misses(tokens, config, scratch)
    index, rate = np.full(missed.size, np.nan), np.full(missed.size, np.nan)
    ok = counted > 0
    rate[ok] = missed[ok] / counted[ok]
    index[ok] = 1.0 - rate[ok]
    return index, rate


def deadline_misses(
    token_times_s: np.ndarray,
    offsets: np.ndarray,
    arrived_at: np.ndarray,
    prompt_len: np.ndarray,
    config: FluidityConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Per request, (deadlines missed, deadlines counted) under Etalon's rules, as floats.

    A token on time counts one deadline met; a late one counts its missed deadlines; so
    counted = on-time tokens + missed (Etalon).
    """
    num_requests = np.asarray(offsets).size - 1
    missed, counted = np.zeros(num_requests), np.zeros(num_requests)
    for r0, r1, tokens, scratch in _chunks(token_times_s, offsets, arrived_at, prompt_len, config):
        missed[r0:r1], counted[r0:r1] = _chunk_deadline_misses(tokens, config, scratch)
    return missed, counted


def fluidity_index(
    token_times_s: np.ndarray,
    offsets: np.ndarray,
    arrived_at: np.ndarray,
    prompt_len: np.ndarray,
    config: FluidityConfig,
) -> np.ndarray:
    """Etalon fluidity-index per request, 1 - missed / counted (NaN for requests with no tokens).

    It scores a stream against per-token deadlines, so a harmless burst (TBT 0 then a long gap)
    costs nothing while a stall costs one miss per deadline it spans.
    """
    out = np.full(np.asarray(offsets).size - 1, np.nan)
    for r0, r1, tokens, scratch in _chunks(token_times_s, offsets, arrived_at, prompt_len, config):
        out[r0:r1] = _chunk_fluidity_index(tokens, config, scratch)
    return out


def _search_bracket(
    tokens: _Tokens, rate: float, scratch: Scratch, max_gap_s: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per request (lo, hi, infeasible): D_d below lo misses too often, hi meets the rate.

    `max_gap_s`, if given, is each request's largest gap between its tokens (-inf with one
    token, anything with none), as a caller's own pass found it: not computed again.
    """
    eps = DEADLINE_TOLERANCE_S
    size = tokens.gap_s.size
    n = tokens.num_tokens.astype(np.float64)
    has_tokens = tokens.num_tokens > 0
    first_late = np.zeros(n.size)
    first_late[has_tokens] = -tokens.base_s[tokens.first]
    flag = scratch.get("flag", size, np.bool_)

    # Upper end: with D_d >= every gap no later token is late, and with D_d > ttft - D_p a late
    # first token misses exactly one deadline, so the miss rate there is its floor over D_d.
    if max_gap_s is None:
        finite_gaps = scratch.get("bracket_a", size)
        np.copyto(finite_gaps, tokens.gap_s)
        np.copyto(finite_gaps, 0.0, where=np.isinf(tokens.gap_s, out=flag))
        max_gap = segment_max(finite_gaps, tokens.offsets, empty=0.0)
    else:
        # The same maximum with a first token's 0: fmax also maps NaN (no tokens) to 0.
        max_gap = np.fmax(max_gap_s, 0.0)
    hi = np.maximum(np.maximum(max_gap, first_late + 2.0 * eps), MIN_TBT_DEADLINE_S)
    infeasible = has_tokens & (first_late > eps) & (rate * n < 1.0)

    # Lower end, a necessary condition: the deadlines missed up to token i are at least its
    # accumulated lateness over D_d, (e_i - D_p - (i-1) D_d) / D_d, and a miss rate <= r allows
    # at most c = r n / (1 - r) misses, so D_d >= (e_i - D_p) / (i - 1 + c) for every token i.
    allowed = rate * n / (1.0 - rate)
    denom = _per_token(allowed, tokens.num_tokens)
    np.add(tokens.index, denom, out=denom)
    bound = np.add(tokens.index, 1.0, out=scratch.get("bracket_b", size))
    bound *= -eps
    bound -= tokens.base_s  # e_i - D_p - i * eps
    # A denominator is its request's c plus an index >= 0, so with rate > 0 all are positive
    # (no pass over the tokens checks them); with rate 0 a first token's is 0, and its
    # condition is the `infeasible` one above.
    if rate > 0.0:
        np.divide(bound, denom, out=bound)
    else:
        positive = np.greater(denom, 0.0, out=flag)
        np.divide(bound, denom, out=bound, where=positive)
        np.copyto(bound, -np.inf, where=~positive)
    lower = segment_max(bound, tokens.offsets, empty=-np.inf)
    lo = np.minimum(np.maximum(lower * (1.0 - 1e-9), MIN_TBT_DEADLINE_S), hi)
    return lo, hi, infeasible


@dataclass(frozen=True)
class DeadlineSearch:
    """Where the per-request search for the fluid D_d stands: each included request's value
    is known (`done`: the search's answer `hi`, `inf` when infeasible) or lies in (lo, hi]."""

    lo: np.ndarray  # float64 per request
    hi: np.ndarray  # float64 per request
    done: np.ndarray  # bool per request
    included: np.ndarray  # bool per request: measured, with tokens

    def values(self) -> np.ndarray:
        """The searched D_d of every included request (all must be done), NaN elsewhere."""
        return np.where(self.included, self.hi, np.nan)


def _chunk_fluid_search(
    tokens: _Tokens, included: np.ndarray, rate: float, rel_precision: float, scratch: Scratch,
    *, max_rounds: int | None = None, start: tuple[np.ndarray, np.ndarray] | None = None,
    max_gap_s: np.ndarray | None = None,
) -> DeadlineSearch:
    """The log-space bisection for the fluid D_d of one chunk's requests (`included`: bool per
    request), for at most `max_rounds` rounds (None: to the precision), from the bracket of
    `_search_bracket` or from `start`'s (lo, hi), as a stopped search left them: stopping and
    resuming goes through the very same midpoints. `max_gap_s`: see `_search_bracket`."""
    has_tokens = tokens.num_tokens > 0
    included = included & has_tokens
    if start is None:
        lo, hi, infeasible = _search_bracket(tokens, rate, scratch, max_gap_s)
        hi = np.where(infeasible, np.inf, hi)
    else:
        lo, hi = (np.array(a, dtype=np.float64) for a in start)
        infeasible = np.isinf(hi)
    ratio = 1.0 + rel_precision
    active = included & ~infeasible & (hi > lo * ratio)
    if np.any(active) and max_rounds != 0:
        slots = _slots(tokens, lo, active, scratch)
        bank = 0
        for round_ in range(200 if max_rounds is None else max_rounds):
            if not np.any(active):
                break
            if round_ and round_ % 3 == 0:
                bank = 1 - bank
                slots = _prune(slots, lo, active, scratch, bank)
            mid = np.where(active, np.sqrt(lo * hi), hi)
            missed, num_late = _misses(slots, mid, scratch)
            counted = (tokens.num_tokens - num_late) + missed
            meets = missed <= rate * counted
            hi = np.where(active & meets, mid, hi)
            lo = np.where(active & ~meets, mid, lo)
            active &= hi > lo * ratio
    return DeadlineSearch(lo=lo, hi=hi, done=included & ~active, included=included)


def search_fluid_rate(
    token_times: TokenTimes,
    arrived_at: np.ndarray,
    prompt_len: np.ndarray,
    config: FluidityConfig,
    search: DeadlineSearch,
    percentile: float = FLUID_RATE_PERCENTILE,
    rel_precision: float = FLUID_REL_PRECISION,
) -> float:
    """The fluid token rate from a search stopped early (`_chunk_fluid_search` with
    `max_rounds`): exactly what finishing every request's search would give.

    The rate reads a few order statistics of the requests' D_d (the P99 and its neighbours).
    Requests whose bracket lies wholly below the lowest of them or above the highest cannot
    be one, so only the others are searched to the end; their tokens are expanded again.
    """
    index = np.flatnonzero(search.included)
    n = index.size
    if n == 0:
        return math.nan
    lower = np.where(search.done[index], search.hi[index], search.lo[index])
    upper = search.hi[index]
    # Ranks the percentile can read (numpy's and `_percentile_allowing_inf`'s), and a margin.
    centre = math.floor((n - 1) * percentile / 100.0)
    first, last = max(centre - 1, 0), min(centre + 2, n - 1)
    low_bound = float(np.partition(lower, first)[first])
    high_bound = float(np.partition(upper, last)[last])
    below = upper < low_bound
    candidates = ~below & ~(lower > high_bound)
    values = search.hi[index].copy()
    refine = np.flatnonzero(candidates & ~search.done[index])
    if refine.size:
        values[refine] = _finish_search(token_times, index[refine], arrived_at, prompt_len,
                                        config, search, rel_precision)
    ranked = np.sort(values[candidates])
    # A stand-in population: the order statistics around the percentile as found, everything
    # below them at 0 and above them at +inf (D_d > 0): the percentile reads the same values.
    proxy = np.full(n, np.inf)
    proxy[:first] = 0.0
    start = first - int(below.sum())
    proxy[first : last + 1] = ranked[start : start + last + 1 - first]
    return _rate_of_deadlines(proxy, percentile)


def _finish_search(token_times: TokenTimes, request_ids: np.ndarray, arrived_at: np.ndarray,
                   prompt_len: np.ndarray, config: FluidityConfig, search: DeadlineSearch,
                   rel_precision: float) -> np.ndarray:
    """The searched D_d of these requests, resuming their stopped searches, chunk by chunk."""
    counts = np.diff(token_times.offsets)[request_ids]
    out = np.empty(request_ids.size)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    local = request_chunks(bounds)
    scratch = scratch_for(bounds, local)
    for a, b in local:
        ids = request_ids[a:b]
        times, offsets = token_times.take(ids)
        walk = _tokens(times, offsets, arrived_at[ids], prompt_len[ids], config, scratch)
        resumed = _chunk_fluid_search(
            walk, np.ones(ids.size, dtype=bool), config.max_miss_rate, rel_precision, scratch,
            start=(search.lo[ids], search.hi[ids]))
        out[a:b] = resumed.hi
    return out


def _chunk_fluid_tbt_deadline_s(
    tokens: _Tokens, included: np.ndarray, rate: float, rel_precision: float, scratch: Scratch
) -> np.ndarray:
    """`fluid_tbt_deadline_s` of one chunk (`included`: bool per request of the chunk)."""
    return _chunk_fluid_search(tokens, included, rate, rel_precision, scratch).values()


def fluid_tbt_deadline_s(
    token_times_s: np.ndarray,
    offsets: np.ndarray,
    arrived_at: np.ndarray,
    prompt_len: np.ndarray,
    config: FluidityConfig,
    *,
    include: np.ndarray | None = None,
    rel_precision: float = FLUID_REL_PRECISION,
) -> np.ndarray:
    """Per request, the smallest D_d (s) whose deadline-miss rate is <= `config.max_miss_rate`.

    Found by a bisection in log space run on all requests at once, to `rel_precision` relative
    precision (the value returned is the upper end of the final bracket, so it meets the rate
    and is at most ~1% too large by default). D_p stays the configured one. `inf` when no D_d
    works (the first token missed D_p and 1/n already exceeds the rate); NaN for requests with
    no tokens or not in `include`. Assumes, as Etalon's search does, that the miss rate does not
    grow with D_d.
    """
    if rel_precision <= 0:
        raise ValueError(f"rel_precision must be > 0, got {rel_precision}")
    num_requests = np.asarray(offsets).size - 1
    included = (
        np.ones(num_requests, dtype=bool) if include is None else np.asarray(include, dtype=bool)
    )
    out = np.full(num_requests, np.nan)
    for r0, r1, tokens, scratch in _chunks(token_times_s, offsets, arrived_at, prompt_len, config):
        out[r0:r1] = _chunk_fluid_tbt_deadline_s(
            tokens, included[r0:r1], config.max_miss_rate, rel_precision, scratch
        )
    return out


def _percentile_allowing_inf(values: np.ndarray, q: float) -> float:
    """numpy's linear-interpolation percentile, except that values reaching +inf give inf."""
    ordered = np.sort(values)
    position = (ordered.size - 1) * q / 100.0
    below = math.floor(position)
    frac = position - below
    above = min(below + 1, ordered.size - 1)
    if frac == 0.0:
        return float(ordered[below])
    if math.isinf(ordered[above]):
        return math.inf
    return float(np.percentile(ordered, q))


def _rate_of_deadlines(deadlines: np.ndarray, percentile: float) -> float:
    """The fluid token rate given every request's `fluid_tbt_deadline_s` (NaN = left out)."""
    deadlines = deadlines[~np.isnan(deadlines)]
    if deadlines.size == 0:
        return math.nan
    tail = _percentile_allowing_inf(deadlines, percentile)
    return 0.0 if math.isinf(tail) else 1.0 / tail


def fluid_token_rate(
    token_times_s: np.ndarray,
    offsets: np.ndarray,
    arrived_at: np.ndarray,
    prompt_len: np.ndarray,
    config: FluidityConfig,
    *,
    include: np.ndarray | None = None,
    percentile: float = FLUID_RATE_PERCENTILE,
    rel_precision: float = FLUID_REL_PRECISION,
) -> float:
    """Etalon's fluid token rate in tokens/s: 1 / (P99 over requests of the smallest D_d that
    keeps the request's miss rate <= `max_miss_rate`), the fastest token pace the system serves
    fluidly for almost all requests.

    `include` (bool per request) restricts the population (e.g. to measured requests). NaN when
    no included request has tokens; 0.0 when the P99 request cannot meet the miss rate for any
    D_d (see `fluid_tbt_deadline_s`). Precision: ~1% by default, erring low.
    """
    deadlines = fluid_tbt_deadline_s(
        token_times_s, offsets, arrived_at, prompt_len, config,
        include=include, rel_precision=rel_precision,
    )
    return _rate_of_deadlines(deadlines, percentile)
