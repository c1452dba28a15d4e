"""The run summary: `vllm bench serve --save-result` keys plus simserve's extras (DESIGN §5, §6).

Populations: TTFT, TPOT, E2EL, scheduling delay, normalized latency, max TBT and fluidity are
per measured request; ITL and TBT are per gap, pooled over measured requests. Missing values
(empty populations, no SLO) are None, and every number is a plain Python int/float, so
`json.dumps(summary)` works and is byte-identical for identical inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from simserve.config import MetricsConfig, SloConfig
from simserve.engine.records import REJECT_REASONS, SimulationResult
from simserve.metrics.fluidity import search_fluid_rate
from simserve.metrics.requests import TokenPass, request_table, window_masks
from simserve.metrics.stats import describe_ms, describe_weighted_ms, json_float, max_concurrency

if TYPE_CHECKING:
    from simserve.workload.classes import ClassLabels

__all__ = [
    "VLLM_SCALAR_KEYS", "VLLM_STAT_METRICS", "class_summaries", "flat_summary", "summarize",
    "summarize_table"]

# Scalar keys of `vllm bench serve --save-result` that simserve fills, in vLLM's order.
VLLM_SCALAR_KEYS: tuple[str, ...] = (
    "duration",
    "completed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "max_concurrent_requests",
)
# Metrics that vLLM summarises as mean_/median_/std_/p{P}_<m>_ms, in vLLM's order.
VLLM_STAT_METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")
# Every summarised population, in summary order: vLLM's, then simserve's.
POPULATIONS: tuple[str, ...] = (
    *VLLM_STAT_METRICS, "tbt", "scheduling_delay", "normalized_latency", "max_tbt"
)


def _any_slo(slo: SloConfig) -> bool:
    return any(v is not None for v in (slo.ttft_ms, slo.tpot_ms, slo.e2el_ms, slo.max_tbt_ms))


def _per_second(count: float, duration: float | None) -> float | None:
    if duration is None or duration <= 0:
        return None
    return float(count) / duration


def _finite(values: np.ndarray) -> np.ndarray:
    return values[~np.isnan(values)]


def _multiset_moments(values: np.ndarray,
                      counts: np.ndarray | None) -> tuple[int, float, float] | None:
    """(count, mean, population std) of values occurring `counts` times (None: once each)."""
    total = values.size if counts is None else int(counts.sum())
    if total == 0:
        return None
    mean = float(np.average(values, weights=counts))
    std = float(np.sqrt(np.average((values - mean) ** 2, weights=counts)))
    return total, mean, std


def _gap_summaries(
    result: SimulationResult,
    measured: np.ndarray,
    moments: dict[str, tuple[int, float, float] | None] | None,
    percentiles: tuple[float, ...],
) -> dict[str, dict[str, float | None]]:
    """TBT and ITL summaries of the pooled gaps of measured requests: mean and std streamed
    by the token pass (`moments`; None: from the gaps' values and counts, for a subset of the
    requests), median and percentiles from the gaps' distinct values and counts.

    NOTE: vLLM's ITL is per streamed chunk: a burst of tokens stamped at one instant is one
    chunk, so ITL is the gaps between distinct emission times (the nonzero TBTs). TBT is per
    token, zeros inside bursts included (Sarathi-Serve, Etalon).
    """
    values, counts = result.tokens.gap_multiset(measured)
    positive = np.flatnonzero(values > 0.0)
    itl = (values[positive], None if counts is None else counts[positive])
    out = {}
    for name, (v, c) in (("itl", itl), ("tbt", (values, counts))):
        stats = moments[name] if moments is not None else _multiset_moments(v, c)
        if stats is None:
            out[name] = describe_ms(name, np.zeros(0), percentiles)
        else:
            out[name] = describe_weighted_ms(name, v, c, percentiles, stats[1:])
    return {"tbt": out["tbt"], "itl": out["itl"]}


def summarize(result: SimulationResult, config: MetricsConfig) -> dict[str, object]:
    """One run's summary dict: vLLM's keys first (same names and units), then simserve extras.

    `completed` counts measured requests (served, outside warm-up/cool-down); `duration` runs
    from the first measured arrival to the last measured finish. Requests are partitioned as
    num_requests = completed + num_rejected + num_unfinished + num_excluded_warmup +
    num_excluded_cooldown (+ num_timed_out with client timeouts; the excluded counts are
    served requests in those windows). With client timeouts, SLO attainment counts the
    requests that timed out inside the measured window as failures.
    """
    return summarize_table(result, config, *request_table(result, config, for_summary=True))


def summarize_table(
    result: SimulationResult,
    config: MetricsConfig,
    table: dict[str, np.ndarray],
    token_pass: TokenPass,
    *,
    classes: ClassLabels | None = None,
    members: np.ndarray | None = None,
) -> dict[str, object]:
    """`summarize` from the request table and token pass already taken (`request_table` with
    `for_summary`, and the same `classes`), for callers that keep the table too.

    With request `classes`, goodput and SLO attainment judge each request by its class's SLO,
    and `classes` holds the whole summary of each class (`class_summaries`). `members`
    restricts the summary to those requests (a class).
    """
    every = np.ones(table["request_id"].size, dtype=bool)
    members = every if members is None else members
    measured = table["measured"] & members
    completed = int(measured.sum())
    has_slo = _any_slo(config.slo) if classes is None else any(map(_any_slo, classes.slos))
    timed_out = table.get("timed_out")
    if timed_out is not None:
        timed_out = timed_out & members

    duration: float | None = None
    if completed:
        duration = float(table["finished_at"][measured].max() - table["arrived_at"][measured].min())
    total_input = int(table["prompt_len"][measured].sum())
    total_output = int(table["num_output_tokens"][measured].sum())
    num_good = int((table["good"] & measured).sum())
    # Requests whose clients gave up inside the measured window: failures for SLO attainment.
    num_failed = 0

    rejected_codes = np.asarray(result.rejected, dtype=np.int64)
    not_rejected = (rejected_codes == 0) & members
    rejected = (rejected_codes != 0) & members
    served = not_rejected & np.isfinite(table["finished_at"])
    in_warmup, in_cooldown = window_masks(table["arrived_at"], config.warmup_s, config.cooldown_s)
    if timed_out is not None:
        num_failed = int((timed_out & ~in_warmup & ~in_cooldown).sum())

    summary: dict[str, object] = {
        "duration": duration,
        "completed": completed,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": _per_second(completed, duration),
        # NOTE: vLLM reports request_goodput only when --goodput SLOs are given (else None).
        "request_goodput": _per_second(num_good, duration) if has_slo else None,
        "output_throughput": _per_second(total_output, duration),
        "total_token_throughput": _per_second(total_input + total_output, duration),
        # In flight = arrived and not finished, over every request that was not rejected.
        "max_concurrent_requests": max_concurrency(
            table["arrived_at"][not_rejected], table["finished_at"][not_rejected]
        ),
    }

    whole = members is every
    gap_summaries = _gap_summaries(result, measured, token_pass.gap_moments if whole else None,
                                   config.percentiles)
    per_request = {
        "ttft": table["ttft_s"][measured],
        "tpot": _finite(table["tpot_s"][measured]),
        "e2el": table["e2el_s"][measured],
        "scheduling_delay": _finite(table["scheduling_delay_s"][measured]),
        "normalized_latency": _finite(table["normalized_latency_s"][measured]),
        "max_tbt": _finite(table["max_tbt_s"][measured]),
    }
    for name in POPULATIONS:
        if name in gap_summaries:
            summary.update(gap_summaries[name])
        else:
            summary.update(describe_ms(name, per_request[name], config.percentiles))

    reasons: dict[str, int] = {}
    for code, count in zip(*np.unique(rejected_codes[rejected], return_counts=True),
                           strict=True):
        reasons[REJECT_REASONS.get(int(code), f"code_{int(code)}")] = int(count)
    fluidity = _finite(table["fluidity_index"][measured])
    search = token_pass.fluid_search
    assert search is not None
    if not whole:
        search = dataclasses.replace(search, included=search.included & members)
    rate = search_fluid_rate(result.tokens, result.arrived_at, result.prompt_len,
                             config.fluidity, search)
    summary.update(
        {
            "num_requests": int(members.sum()),
            "num_rejected": int(rejected.sum()),
            "num_unfinished": int((not_rejected & ~served).sum()) - int(
                timed_out.sum() if timed_out is not None else 0),
            "rejected_reasons": reasons,
            "num_excluded_warmup": int((served & in_warmup).sum()),
            "num_excluded_cooldown": int((served & in_cooldown).sum()),
            "num_preemptions": int(table["num_preemptions"][measured].sum()),
            "num_stalls": int(table["num_stalls"][measured].sum()),
            "stall_threshold_ms": float(config.stall_threshold_ms),
            "mean_fluidity_index": json_float(np.mean(fluidity)) if fluidity.size else None,
            "median_fluidity_index": json_float(np.median(fluidity)) if fluidity.size else None,
            "p1_fluidity_index": (
                json_float(np.percentile(fluidity, 1.0)) if fluidity.size else None
            ),
            "fluid_token_rate": json_float(rate),
            "slo_attainment": (num_good / (completed + num_failed))
            if has_slo and completed + num_failed else None,
            "warnings": [str(w) for w in result.warnings],
        }
    )
    if "kv_transfer_s" in table:
        for name in ("kv_transfer", "kv_transfer_wait"):
            summary.update(
                describe_ms(name, _finite(table[f"{name}_s"][measured]), config.percentiles)
            )
        # Requests whose KV could not move at once: no decode slot or KV space, or a busy link.
        summary["num_kv_transfer_waited"] = int(
            np.count_nonzero(table["kv_transfer_wait_s"][measured] > 0)
        )
    if timed_out is not None:
        summary["num_timed_out"] = int(timed_out.sum())
        # Tokens the abandoned requests had received (streamed to clients who then left).
        summary["timed_out_output_tokens"] = int(table["num_output_tokens"][timed_out].sum())
    if result.cached_tokens is not None:
        summary.update(_prefix_cache_summary(result, table, measured, whole))
    if result.kv_tiers is not None and whole:
        summary.update(kv_tier_summary(result.kv_tiers, int(result.num_preemptions.sum())))
    if classes is not None:
        per_class = class_summaries(result, config, table, token_pass, classes)
        summary["classes"] = per_class
        # What a capacity search requiring every class's own SLO reads (`class_attainment`):
        # classes without any SLO are not judged; one with no completed request fails.
        attained = [c["slo_attainment"] for c in per_class.values() if c["slo"]]
        summary["min_class_slo_attainment"] = (
            None if not attained or any(a is None for a in attained) else min(attained))
    return summary


def _prefix_cache_summary(result: SimulationResult, table: dict[str, np.ndarray],
                          measured: np.ndarray, whole: bool) -> dict[str, object]:
    """Prefix-cache hits: of measured requests' prompts at their first admission (rate and
    requests with a hit), and vLLM's counters over every admission, recomputes included."""
    cached = table["num_cached_tokens"][measured]
    prompt_tokens = int(table["prompt_len"][measured].sum())
    out: dict[str, object] = {
        "prefix_cache_hit_rate": (int(cached.sum()) / prompt_tokens) if prompt_tokens else None,
        "num_prefix_cache_hit_requests": int(np.count_nonzero(cached)),
    }
    if whole:
        out["prefix_cache_queried_tokens"] = result.prefix_cache_queried_tokens
        out["prefix_cache_hit_tokens"] = result.prefix_cache_hit_tokens
    return out


def kv_tier_summary(totals: Mapping[str, float], num_preemptions: int) -> dict[str, object]:
    """KV memory tiers over the whole run: preemptions by kind, GiB swapped each way, the step
    time spent copying, and the time requests' KV spent in host memory (swap); loads from the
    CPU tier, the tokens they brought back, GiB each way and load time (CPU offload)."""
    out: dict[str, object] = {}
    if "num_swap_outs" in totals:
        swaps = int(totals["num_swap_outs"])
        out.update({
            "num_swap_preemptions": swaps,
            "num_recompute_preemptions": num_preemptions - swaps,
            "swap_out_gib": totals["swap_out_bytes"] / 2**30,
            "swap_in_gib": totals["swap_in_bytes"] / 2**30,
            "swap_copy_s": totals["swap_copy_s"],
            "swapped_request_s": totals["swapped_request_s"],
            "mean_swapped_s": totals["swapped_request_s"] / swaps if swaps else None,
            "swapped_gib_s": totals["swapped_gib_s"],
        })
    if "num_offload_loads" in totals:
        out.update({
            "num_offload_loads": int(totals["num_offload_loads"]),
            "offload_hit_tokens": int(totals["offload_hit_tokens"]),
            "offload_load_gib": totals["offload_loaded_bytes"] / 2**30,
            "offload_store_gib": totals["offload_stored_bytes"] / 2**30,
            "offload_load_s": totals["offload_load_s"],
        })
    return out


def class_summaries(result: SimulationResult, config: MetricsConfig,
                    table: dict[str, np.ndarray], token_pass: TokenPass,
                    classes: ClassLabels) -> dict[str, dict[str, object]]:
    """The summary of each request class (its own SLO, every metric), by class name."""
    out: dict[str, dict[str, object]] = {}
    for index, name in enumerate(classes.names):
        members = classes.class_id == index
        slo = classes.slos[index]
        part = summarize_table(result, dataclasses.replace(config, slo=slo), table, token_pass,
                               members=members)
        del part["warnings"]  # the run's, reported once
        out[name] = {
            "priority": classes.priorities[index],
            "slo": {k: v for k, v in dataclasses.asdict(slo).items() if v is not None},
            **part,
        }
    return out


def flat_summary(summary: Mapping[str, object]) -> dict[str, object]:
    """The summary with each class's scalar entries as top-level `class.<name>.<key>` keys in
    place of the nested `classes` (the form tables and SLO rules read)."""
    flat = {k: v for k, v in summary.items() if k != "classes"}
    classes = summary.get("classes")
    if isinstance(classes, Mapping):
        for name, part in classes.items():
            for key, value in part.items():
                if not isinstance(value, Mapping | list):
                    flat[f"class.{name}.{key}"] = value
    return flat
