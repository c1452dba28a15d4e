"""Per-request metrics (the columns of `requests.csv`) from a `SimulationResult`.

Every column is one numpy array with one entry per request, in arrival (request id) order, so
the table goes straight to CSV/parquet and the summary aggregates it with masks. Definitions
are DESIGN §5's: a = arrival, s = first scheduled, t_1..t_n = token times, f = finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from simserve.config import MetricsConfig, SloConfig
from simserve.engine.records import REJECT_REASONS, SimulationResult
from simserve.metrics._segments import (
    request_chunks,
    scratch_for,
    segment_max,
    within_segment_gaps,
)
from simserve.metrics.fluidity import (
    FLUID_REL_PRECISION,
    DeadlineSearch,
    _chunk_fluid_search,
    _chunk_fluidity,
    _tokens,
)
from simserve.metrics.stats import GapMoments

if TYPE_CHECKING:
    from simserve.workload.classes import ClassLabels

__all__ = ["REQUEST_COLUMNS", "TokenPass", "request_metrics", "request_table", "window_masks"]

REQUEST_COLUMNS: tuple[str, ...] = (
    "request_id",
    "replica",
    "arrived_at",
    "prompt_len",
    "output_len",
    "num_output_tokens",
    "first_scheduled_at",
    "first_token_at",
    "finished_at",
    "ttft_s",
    "scheduling_delay_s",
    "e2el_s",
    "tpot_s",
    "normalized_latency_s",
    "max_tbt_s",
    "num_stalls",
    "fluidity_index",
    "num_preemptions",
    "rejected",
    "measured",
    "good",
)


def window_masks(
    arrived_at: np.ndarray, warmup_s: float, cooldown_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Requests arriving in the warm-up window (first `warmup_s` after the first arrival) and
    in the cool-down window (last `cooldown_s` before the last arrival, warm-up ones excepted).

    NOTE: judged by arrival time (DESIGN §5), so exclusion does not depend on how the system
    under test behaved, and comparing two policies excludes the same requests.
    """
    arrived_at = np.asarray(arrived_at, dtype=np.float64)
    if arrived_at.size == 0:
        empty = np.zeros(0, dtype=bool)
        return empty, empty
    in_warmup = (arrived_at - arrived_at.min()) < warmup_s
    in_cooldown = ((arrived_at.max() - arrived_at) < cooldown_s) & ~in_warmup
    return in_warmup, in_cooldown


def _meets(value_s: np.ndarray, slo_ms: float | None) -> np.ndarray:
    """Whether each value meets an SLO given in ms; NaN (undefined, e.g. TPOT of a one-token
    request) meets it.

    NOTE: vLLM's `--goodput` compares `slo_ms / 1000 >= value_s` and scores TPOT as 0 for
    one-token requests, so they pass the TPOT SLO; we do the same.
    """
    if slo_ms is None:
        return np.ones(value_s.size, dtype=bool)
    return np.isnan(value_s) | (value_s <= slo_ms / 1000.0)


def _is_good(slo: SloConfig, ttft: np.ndarray, tpot: np.ndarray, e2el: np.ndarray,
             max_tbt: np.ndarray) -> np.ndarray:
    return (
        _meets(ttft, slo.ttft_ms)
        & _meets(tpot, slo.tpot_ms)
        & _meets(e2el, slo.e2el_ms)
        & _meets(max_tbt, slo.max_tbt_ms)
    )


def _reason_strings(codes: np.ndarray) -> np.ndarray:
    """Reject codes as REJECT_REASONS strings ('' for served); unknown codes as `code_<k>`.

    NOTE: an object array of the few shared strings, not a fixed-width `str_` one: that would
    take 4 bytes per character of the longest reason for every request (80 MB and ~1 s for a
    million requests with a single rejection), for the same `tolist()` and CSV cells.
    """
    codes = np.asarray(codes, dtype=np.int64)
    top = int(codes.max()) if codes.size else 0
    lookup = np.empty(top + 1, dtype=object)
    lookup[:] = [REJECT_REASONS.get(k, f"code_{k}") for k in range(top + 1)]
    return lookup[np.clip(codes, 0, None)]


# Bisection rounds of every measured request's fluid-rate search in the token pass; only the
# requests that can decide the rate's percentile are searched further (`search_fluid_rate`).
FLUID_FIRST_ROUNDS = 2

# Pooled gaps buffered at a time for their mean and std (`Moments`): 32 MiB; a summary of up to
# this many gaps is exactly numpy's mean and std of the pooled array.
GAP_BUFFER = 1 << 22


@dataclass(frozen=True)
class TokenPass:
    """What one chunked pass over the token times gives: per-request token metrics, plus the
    mean and std of the pooled gaps (TBT) and of their nonzero part (ITL) of the measured
    requests and their fluid deadlines, when the summary asks for them."""

    max_tbt_s: np.ndarray  # float64 per request, NaN for at most one token
    num_stalls: np.ndarray  # int64 per request
    fluidity_index: np.ndarray  # float64 per request
    deadline_miss_rate: np.ndarray  # float64 per request: missed / counted deadlines (Etalon)
    # "tbt"/"itl" -> (count, mean, std) of the pooled gaps of measured requests, or None
    gap_moments: dict[str, tuple[int, float, float] | None]
    # The search for each measured request's fluid D_d, stopped after a few rounds (see
    # `fluidity.search_fluid_rate`); None unless asked for.
    fluid_search: DeadlineSearch | None


def _token_pass(
    result: SimulationResult,
    config: MetricsConfig,
    measured: np.ndarray,
    *,
    for_summary: bool,
) -> TokenPass:
    """Per-token metrics, chunk by chunk of whole requests so temporaries stay bounded.

    With `for_summary`, also streams the gaps of `measured` requests (flat order, so exactly the
    population a one-shot `gaps[measured[owner]]` would give) into their moments and runs the
    fluid-rate search on them, reusing each chunk's per-token arrays.
    """
    offsets = np.asarray(result.token_offsets, dtype=np.int64)
    tokens = result.tokens
    arrived = np.asarray(result.arrived_at, dtype=np.float64)
    prompt_len = np.asarray(result.prompt_len)
    n = np.diff(offsets)
    num_requests = n.size
    max_tbt = np.full(num_requests, np.nan)
    num_stalls = np.zeros(num_requests, dtype=np.int64)
    fluidity = np.full(num_requests, np.nan)
    miss_rate = np.full(num_requests, np.nan)
    num_pooled = int(np.maximum(n - 1, 0)[measured].sum()) if for_summary else 0
    gap_moments = GapMoments(num_pooled, GAP_BUFFER)
    fluid = (np.full(num_requests, np.nan), np.full(num_requests, np.nan),
             np.zeros(num_requests, dtype=bool), np.zeros(num_requests, dtype=bool))
    stall_threshold_s = config.stall_threshold_ms / 1000.0
    chunks = request_chunks(offsets)
    scratch = scratch_for(offsets, chunks)
    for r0, r1 in chunks:
        t0, t1 = int(offsets[r0]), int(offsets[r1])
        size = t1 - t0
        local = offsets[r0 : r1 + 1] - t0
        times = tokens.chunk(r0, r1)
        # A first token has no gap: -inf keeps it out of maxima and stall counts.
        gaps, first = within_segment_gaps(
            times, local, first_value=-np.inf, out=scratch.get("gap", size)
        )
        max_tbt[r0:r1] = segment_max(gaps, local)
        stalled = np.flatnonzero(
            np.greater(gaps, stall_threshold_s, out=scratch.get("flag", size, np.bool_))
        )
        if stalled.size:
            owner = np.searchsorted(local, stalled, side="right") - 1
            num_stalls[r0:r1] = np.bincount(owner, minlength=r1 - r0)
        # The deadline walk takes the gap array over (first tokens become +inf there).
        walk = _tokens(
            times, local, arrived[r0:r1], prompt_len[r0:r1], config.fluidity, scratch,
            gaps=gaps,
        )
        if for_summary:
            pooled = np.repeat(measured[r0:r1], walk.num_tokens)
            pooled[first] = False
            # NOTE: a boolean mask here, not flatnonzero + take: the mask is nearly all True
            # (whole requests, less their first tokens), so its copy loop predicts well and
            # runs about twice as fast.
            gap_moments.add(walk.gap_s[pooled])
        fluidity[r0:r1], miss_rate[r0:r1] = _chunk_fluidity(walk, config.fluidity, scratch)
        if for_summary:
            part = _chunk_fluid_search(
                walk, measured[r0:r1], config.fluidity.max_miss_rate, FLUID_REL_PRECISION,
                scratch, max_rounds=FLUID_FIRST_ROUNDS, max_gap_s=max_tbt[r0:r1],
            )
            for whole, piece in zip(fluid, (part.lo, part.hi, part.done, part.included),
                                    strict=True):
                whole[r0:r1] = piece
    max_tbt[n <= 1] = np.nan
    return TokenPass(
        max_tbt_s=max_tbt,
        num_stalls=num_stalls,
        fluidity_index=fluidity,
        deadline_miss_rate=miss_rate,
        gap_moments=gap_moments.result(),
        fluid_search=DeadlineSearch(*fluid) if for_summary else None,
    )


def request_table(
    result: SimulationResult,
    config: MetricsConfig,
    *,
    for_summary: bool = False,
    classes: ClassLabels | None = None,
) -> tuple[dict[str, np.ndarray], TokenPass]:
    """The per-request table and the token pass it came from (see `_token_pass`).

    Shared by `request_metrics` and the summary, which (`for_summary`) also needs the pooled
    gaps and fluid deadlines of measured requests, so the token times are walked once. With
    request `classes`, each request is `good` by its class's SLO, and the table names its
    class and priority.
    """
    offsets = np.asarray(result.token_offsets, dtype=np.int64)
    arrived = np.asarray(result.arrived_at, dtype=np.float64)
    finished = np.asarray(result.finished_at, dtype=np.float64)
    scheduled = np.asarray(result.first_scheduled_at, dtype=np.float64)
    num_requests = arrived.size
    n = np.diff(offsets)
    has_tokens = n > 0

    first_token_at = result.first_token_at
    ttft = first_token_at - arrived
    e2el = finished - arrived
    with np.errstate(divide="ignore", invalid="ignore"):
        # NOTE: vLLM's TPOT excludes the first token: (e2el - ttft) / (n - 1), only for n > 1.
        tpot = np.where(n > 1, (e2el - ttft) / (n - 1), np.nan)
        # NOTE: normalized latency is e2el per output token, as in the Orca and vLLM papers.
        normalized = np.where(has_tokens, e2el / n, np.nan)

    rejected = np.asarray(result.rejected)
    served = (rejected == 0) & np.isfinite(finished)
    in_warmup, in_cooldown = window_masks(arrived, config.warmup_s, config.cooldown_s)
    measured = served & ~in_warmup & ~in_cooldown
    token_pass = _token_pass(result, config, measured, for_summary=for_summary)
    max_tbt = token_pass.max_tbt_s
    if classes is None:
        good = served & _is_good(config.slo, ttft, tpot, e2el, max_tbt)
    else:
        good = np.zeros(num_requests, dtype=bool)
        for index, slo in enumerate(classes.slos):
            member = classes.class_id == index
            good[member] = _is_good(slo, ttft[member], tpot[member], e2el[member],
                                    max_tbt[member])
        good &= served

    table: dict[str, np.ndarray] = {
        "request_id": np.arange(num_requests, dtype=np.int64),
        "replica": np.asarray(result.replica, dtype=np.int32),
        "arrived_at": arrived,
        "prompt_len": np.asarray(result.prompt_len, dtype=np.int64),
        "output_len": np.asarray(result.output_len, dtype=np.int64),
        "num_output_tokens": n.astype(np.int64),
        "first_scheduled_at": scheduled,
        "first_token_at": first_token_at,
        "finished_at": finished,
        "ttft_s": ttft,
        "scheduling_delay_s": scheduled - arrived,
        "e2el_s": e2el,
        "tpot_s": tpot,
        "normalized_latency_s": normalized,
        "max_tbt_s": max_tbt,
        "num_stalls": token_pass.num_stalls,
        "fluidity_index": token_pass.fluidity_index,
        "num_preemptions": np.asarray(result.num_preemptions, dtype=np.int64),
        "rejected": _reason_strings(rejected),
        "measured": measured,
        "good": good,
    }
    if result.timed_out is not None:
        table["timed_out"] = np.asarray(result.timed_out, dtype=bool)
    if result.cached_tokens is not None:
        table["num_cached_tokens"] = np.asarray(result.cached_tokens, dtype=np.int64)
    if classes is not None:
        table["class"] = np.asarray(classes.names, dtype=np.str_)[classes.class_id]
        table["priority"] = np.asarray(classes.priorities, dtype=np.int64)[classes.class_id]
    if result.kv_transfer_s is not None:
        # Disaggregated serving: where the time between the first token and the second went.
        table["decode_replica"] = np.asarray(result.decode_replica, dtype=np.int32)
        table["kv_transfer_wait_s"] = result.kv_transfer_started_at - first_token_at
        table["kv_transfer_s"] = np.asarray(result.kv_transfer_s, dtype=np.float64)
    return table, token_pass


def request_metrics(result: SimulationResult, config: MetricsConfig) -> dict[str, np.ndarray]:
    """Per-request metrics for every request (arrival order), keyed by `REQUEST_COLUMNS`.

    Times are in seconds; `tpot_s` and `max_tbt_s` are NaN for requests with at most one token,
    the time columns NaN for requests that never got that far (e.g. rejected ones). `measured`:
    served (not rejected, finished) and outside the warm-up/cool-down windows. `good`: served
    and meets every SLO that is set.
    """
    table, _ = request_table(result, config)
    return table
