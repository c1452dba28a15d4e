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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simserve.config import FluidityConfig
from simserve.metrics._segments import (
    segment_ids,
    segment_keyed,
    segment_max,
    segmented_running_min,
    within_segment_gaps,
)

__all__ = [
    "DEADLINE_TOLERANCE_S",
    "MIN_TBT_DEADLINE_S",
    "deadline_misses",
    "fluid_tbt_deadline_s",
    "fluid_token_rate",
    "fluidity_index",
]

# NOTE: token times are sums of float step durations, so a token due exactly at its deadline
# can come out a few ulps late; lateness up to 1 ns counts as on time (and deadline counts are
# taken 1 ns generously), which makes results match exact arithmetic on the worked examples.
DEADLINE_TOLERANCE_S = 1e-9
# Floor of the D_d search in `fluid_tbt_deadline_s`: a request whose tokens all beat their
# deadlines for any D_d reports this, so fluid token rates are capped at 1e6 tokens/s.
MIN_TBT_DEADLINE_S = 1e-6


@dataclass(frozen=True)
class _Tokens:
    """Flat per-token arrays of one CSR set of requests, as the deadline walk needs them."""

    offsets: np.ndarray  # int64, size R+1
    num_tokens: np.ndarray  # int64 per request
    seg: np.ndarray  # int64 per token: request id
    base_s: np.ndarray  # float64 per token: S at D_d = 0, i.e. D_p - (t - a)
    index: np.ndarray  # float64 per token: 0-based position in its request
    gap_s: np.ndarray  # float64 per token: gap to the previous token, +inf for a first token


@dataclass(frozen=True)
class _Slots:
    """The tokens a deadline walk visits, per request in order.

    A token whose gap is <= D_d is never late and never lowers the running minimum (S_i >=
    S_(i-1) >= M_(i-1)), so for D_d >= `min_gap` such tokens are dropped: bursts always, most
    decode tokens usually. They still count as deadlines met (via `num_tokens`). First tokens
    are always kept.
    """

    num_requests: int
    seg: np.ndarray  # int64 per slot, non-decreasing
    base_s: np.ndarray  # float64 per slot
    index: np.ndarray  # float64 per slot
    gap_s: np.ndarray  # float64 per slot (+inf for a first token)
    slots_per_request: np.ndarray  # int64 per request (0 for requests left out)
    first_slot: np.ndarray  # int64: index of the first slot of every request that has slots
    keyed: np.ndarray  # complex128 scratch per slot, from segment_keyed


def _prefill_deadline_s(prompt_len: np.ndarray, config: FluidityConfig) -> np.ndarray:
    """D_p per request in seconds: Etalon's prompt-length-aware first-token deadline."""
    return (
        config.ttft_deadline_ms
        + config.ttft_deadline_ms_per_prompt_token * np.asarray(prompt_len, dtype=np.float64)
    ) / 1000.0


def _tokens(
    token_times_s: np.ndarray,
    offsets: np.ndarray,
    arrived_at: np.ndarray,
    prompt_len: np.ndarray,
    config: FluidityConfig,
) -> _Tokens:
    times = np.asarray(token_times_s, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    starts = np.repeat(offsets[:-1], counts)
    base = np.repeat(
        _prefill_deadline_s(prompt_len, config) + np.asarray(arrived_at, dtype=np.float64), counts
    )
    base -= times
    index = np.arange(times.size, dtype=np.float64)
    index -= starts
    gaps, is_first = within_segment_gaps(times, offsets)
    gaps[is_first] = np.inf
    return _Tokens(
        offsets=offsets,
        num_tokens=counts,
        seg=segment_ids(offsets),
        base_s=base,
        index=index,
        gap_s=gaps,
    )


def _make_slots(seg: np.ndarray, base: np.ndarray, index: np.ndarray, gap: np.ndarray,
                num_requests: int) -> _Slots:
    keyed = segment_keyed(seg)
    per_request = np.bincount(seg, minlength=num_requests).astype(np.int64)
    starts = np.cumsum(per_request) - per_request
    return _Slots(
        num_requests=num_requests,
        seg=seg,
        base_s=base,
        index=index,
        gap_s=gap,
        slots_per_request=per_request,
        first_slot=starts[per_request > 0],
        keyed=keyed,
    )


def _slots(tokens: _Tokens, min_gap_s: np.ndarray, include: np.ndarray | None) -> _Slots:
    """Slots of the included requests (all if None): first tokens and gaps > min_gap_s."""
    keep = tokens.gap_s > np.repeat(min_gap_s, tokens.num_tokens)
    if include is not None:
        keep &= np.repeat(include, tokens.num_tokens)
    return _make_slots(
        tokens.seg[keep], tokens.base_s[keep], tokens.index[keep], tokens.gap_s[keep],
        tokens.num_tokens.size,
    )


def _prune(slots: _Slots, min_gap_s: np.ndarray, include: np.ndarray) -> _Slots:
    """Drop slots of requests no longer included and tokens with gap <= their new min_gap_s."""
    keep = np.repeat(include, slots.slots_per_request)
    keep &= slots.gap_s > np.repeat(min_gap_s, slots.slots_per_request)
    return _make_slots(
        slots.seg[keep], slots.base_s[keep], slots.index[keep], slots.gap_s[keep],
        slots.num_requests,
    )


def _misses(slots: _Slots, tbt_deadline_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deadlines missed and late tokens per request, for a per-request D_d (seconds)."""
    if slots.seg.size == 0:
        zeros = np.zeros(slots.num_requests)
        return zeros, zeros.astype(np.int64)
    d_slot = np.repeat(tbt_deadline_s, slots.slots_per_request)
    s = slots.keyed.imag  # a view: S is written straight into the keyed scratch
    np.multiply(slots.index, d_slot, out=s)
    s += slots.base_s
    # M_i = min(0, S_1..S_i): seed each request's running minimum with min(S_1, 0).
    s_first = s[slots.first_slot]
    s[slots.first_slot] = np.minimum(s_first, 0.0)
    running_min = segmented_running_min(slots.keyed)
    # Lateness of slot p is M_(p-1) - S_p; for a first token M_0 = 0.
    lateness = np.empty(s.size)
    lateness[0] = 0.0
    np.subtract(running_min[:-1], s[1:], out=lateness[1:])
    lateness[slots.first_slot] = -s_first
    late = np.flatnonzero(lateness > DEADLINE_TOLERANCE_S)
    missed_each = np.floor((lateness[late] + DEADLINE_TOLERANCE_S) / d_slot[late]) + 1.0
    owner = slots.seg[late]
    missed = np.bincount(owner, weights=missed_each, minlength=slots.num_requests)
    num_late = np.bincount(owner, minlength=slots.num_requests)
    return missed, num_late


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
    tokens = _tokens(token_times_s, offsets, arrived_at, prompt_len, config)
    num_requests = tokens.num_tokens.size
    d = np.full(num_requests, config.tbt_deadline_ms / 1000.0)
    slots = _slots(tokens, d, None)
    missed, num_late = _misses(slots, d)
    counted = (tokens.num_tokens - num_late) + missed
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
    missed, counted = deadline_misses(token_times_s, offsets, arrived_at, prompt_len, config)
    out = np.full(missed.size, np.nan)
    ok = counted > 0
    out[ok] = 1.0 - missed[ok] / counted[ok]
    return out


def _search_bracket(
    tokens: _Tokens, rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per request (lo, hi, infeasible): D_d below lo misses too often, hi meets the rate."""
    eps = DEADLINE_TOLERANCE_S
    n = tokens.num_tokens.astype(np.float64)
    has_tokens = tokens.num_tokens > 0
    first_late = np.zeros(n.size)
    first_late[has_tokens] = -tokens.base_s[tokens.offsets[:-1][has_tokens]]

    # Upper end: with D_d >= every gap no later token is late, and with D_d > ttft - D_p a late
    # first token misses exactly one deadline, so the miss rate there is its floor over D_d.
    finite_gaps = np.where(np.isinf(tokens.gap_s), 0.0, tokens.gap_s)
    max_gap = segment_max(finite_gaps, tokens.offsets, empty=0.0)
    hi = np.maximum(np.maximum(max_gap, first_late + 2.0 * eps), MIN_TBT_DEADLINE_S)
    infeasible = has_tokens & (first_late > eps) & (rate * n < 1.0)

    # Lower end, a necessary condition: the deadlines missed up to token i are at least its
    # accumulated lateness over D_d, (e_i - D_p - (i-1) D_d) / D_d, and a miss rate <= r allows
    # at most c = r n / (1 - r) misses, so D_d >= (e_i - D_p) / (i - 1 + c) for every token i.
    denom = tokens.index + np.repeat(rate * n / (1.0 - rate), tokens.num_tokens)
    bound = tokens.index + 1.0
    bound *= -eps
    bound -= tokens.base_s  # e_i - D_p - i * eps
    # Only a first token with rate 0 has denom 0; its condition is the `infeasible` one above.
    np.divide(bound, denom, out=bound, where=denom > 0)
    bound[denom <= 0] = -np.inf
    lower = segment_max(bound, tokens.offsets, empty=-np.inf)
    lo = np.minimum(np.maximum(lower * (1.0 - 1e-9), MIN_TBT_DEADLINE_S), hi)
    return lo, hi, infeasible


def fluid_tbt_deadline_s(
    token_times_s: np.ndarray,
    offsets: np.ndarray,
    arrived_at: np.ndarray,
    prompt_len: np.ndarray,
    config: FluidityConfig,
    *,
    include: np.ndarray | None = None,
    rel_precision: float = 0.01,
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
    tokens = _tokens(token_times_s, offsets, arrived_at, prompt_len, config)
    num_requests = tokens.num_tokens.size
    included = (
        np.ones(num_requests, dtype=bool) if include is None else np.asarray(include, dtype=bool)
    )
    rate = config.max_miss_rate
    lo, hi, infeasible = _search_bracket(tokens, rate)
    ratio = 1.0 + rel_precision
    searching = included & (tokens.num_tokens > 0) & ~infeasible
    active = searching & (hi > lo * ratio)
    slots = _slots(tokens, lo, active)
    for round_ in range(200):  # log-space bisection: never near this many rounds
        if not np.any(active):
            break
        if round_ and round_ % 3 == 0:
            slots = _prune(slots, lo, active)
        mid = np.where(active, np.sqrt(lo * hi), hi)
        missed, num_late = _misses(slots, mid)
        counted = (tokens.num_tokens - num_late) + missed
        meets = missed <= rate * counted
        hi = np.where(active & meets, mid, hi)
        lo = np.where(active & ~meets, mid, lo)
        active &= hi > lo * ratio

    out = np.where(included & (tokens.num_tokens > 0), hi, np.nan)
    out[included & infeasible] = np.inf
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


def fluid_token_rate(
    token_times_s: np.ndarray,
    offsets: np.ndarray,
    arrived_at: np.ndarray,
    prompt_len: np.ndarray,
    config: FluidityConfig,
    *,
    include: np.ndarray | None = None,
    percentile: float = 99.0,
    rel_precision: float = 0.01,
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
    deadlines = deadlines[~np.isnan(deadlines)]
    if deadlines.size == 0:
        return math.nan
    tail = _percentile_allowing_inf(deadlines, percentile)
    return 0.0 if math.isinf(tail) else 1.0 / tail
