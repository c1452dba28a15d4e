"""Per-request metrics and the summary: DESIGN §5 definitions, vLLM keys, JSON, speed."""

from __future__ import annotations

import itertools
import json
import math
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.config import FluidityConfig, MetricsConfig, SloConfig, load_scenario
from simserve.engine.records import REJECT_REASONS, FlatTokenTimes, SimulationResult, StepRecords
from simserve.experiments.run import run_scenario
from simserve.metrics import (
    REQUEST_COLUMNS,
    VLLM_SCALAR_KEYS,
    VLLM_STAT_METRICS,
    _segments,
    max_concurrency,
    percentile_label,
    request_metrics,
    summarize,
)
from simserve.metrics import requests as requests_module
from simserve.metrics._segments import request_chunks
from simserve.metrics.stats import (
    mean_std,
    median_and_percentiles,
    weighted_median_and_percentiles,
)

ROOT = Path(__file__).resolve().parent.parent

EXAMPLE_FLUIDITY = FluidityConfig(
    ttft_deadline_ms=100.0, ttft_deadline_ms_per_prompt_token=0.0, tbt_deadline_ms=30.0
)


def make_result(
    arrived_at: list[float],
    token_times: list[list[float]],
    *,
    prompt_len: list[int] | None = None,
    first_scheduled_at: list[float] | None = None,
    rejected: list[int] | None = None,
    finished: list[bool] | None = None,
    num_preemptions: list[int] | None = None,
    warnings: tuple[str, ...] = (),
) -> SimulationResult:
    """A hand-built SimulationResult: request i arrives at arrived_at[i] and emits token_times[i].

    finished_at is the last token time (NaN if no tokens or finished[i] is False); rejected
    requests should have no tokens; first_scheduled_at defaults to the arrival time.
    """
    n = len(arrived_at)
    counts = [len(t) for t in token_times]
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    flat = np.array([x for t in token_times for x in t], dtype=np.float64)
    finished = finished if finished is not None else [True] * n
    finished_at = np.array(
        [t[-1] if (t and done) else np.nan for t, done in zip(token_times, finished, strict=True)]
    )
    rejected_arr = np.array(rejected if rejected is not None else [0] * n, dtype=np.int8)
    scheduled = np.array(first_scheduled_at if first_scheduled_at is not None else arrived_at,
                         dtype=np.float64)
    scheduled[rejected_arr != 0] = np.nan
    return SimulationResult(
        arrived_at=np.array(arrived_at, dtype=np.float64),
        prompt_len=np.array(prompt_len if prompt_len is not None else [10] * n, dtype=np.int64),
        output_len=np.array(counts, dtype=np.int64),
        first_scheduled_at=scheduled,
        finished_at=finished_at,
        num_preemptions=np.array(num_preemptions or [0] * n, dtype=np.int64),
        replica=np.where(rejected_arr == 0, 0, -1).astype(np.int32),
        rejected=rejected_arr,
        tokens=FlatTokenTimes(offsets, flat),
        steps=empty_steps(),
        warnings=warnings,
    )


def one_request(gaps_ms: list[float], ttft_ms: float = 100.0) -> SimulationResult:
    elapsed_ms = ttft_ms + np.concatenate([[0.0], np.cumsum(gaps_ms)])
    return make_result([0.0], [list(elapsed_ms / 1000.0)])


# --------------------------------------------------------------------------- DESIGN §5 examples

EXAMPLE_CONFIG = MetricsConfig(fluidity=EXAMPLE_FLUIDITY, percentiles=(50.0, 99.0))


def test_example_smooth_stream() -> None:
    s = summarize(one_request([30.0] * 99), EXAMPLE_CONFIG)
    assert s["mean_tpot_ms"] == pytest.approx(30.0)
    assert s["p99_tbt_ms"] == pytest.approx(30.0)
    assert s["mean_ttft_ms"] == pytest.approx(100.0)
    assert s["mean_fluidity_index"] == 1.0


def test_example_speculative_bursts() -> None:
    s = summarize(one_request([0.0, 0.0, 90.0] * 33), EXAMPLE_CONFIG)
    assert s["mean_tpot_ms"] == pytest.approx(30.0)
    assert s["p50_tbt_ms"] == 0.0
    assert s["p99_tbt_ms"] == pytest.approx(90.0)
    assert s["mean_fluidity_index"] == 1.0


def test_example_stall() -> None:
    result = one_request([30.0] * 49 + [1000.0] + [30.0] * 49)
    s = summarize(result, EXAMPLE_CONFIG)
    assert s["mean_tpot_ms"] == pytest.approx(3940.0 / 99)  # 39.8 ms
    assert round(s["mean_tpot_ms"], 1) == 39.8
    assert s["mean_fluidity_index"] == pytest.approx(1.0 - 33 / 132)
    assert s["num_stalls"] == 1  # the 1000 ms gap is over the 500 ms default threshold
    assert s["mean_max_tbt_ms"] == pytest.approx(1000.0)
    table = request_metrics(result, EXAMPLE_CONFIG)
    assert table["fluidity_index"][0] == pytest.approx(0.75)
    assert table["max_tbt_s"][0] == pytest.approx(1.0)


def test_itl_pools_distinct_emission_times_and_tbt_keeps_burst_zeros() -> None:
    # One request: tokens at 0.1, a burst of three at 0.2, then 0.3.
    result = make_result([0.0], [[0.1, 0.2, 0.2, 0.2, 0.3]])
    s = summarize(result, MetricsConfig(percentiles=(50.0,)))
    assert s["mean_itl_ms"] == pytest.approx(100.0)  # gaps between distinct times: 100, 100
    assert s["mean_tbt_ms"] == pytest.approx(50.0)  # 100, 0, 0, 100
    assert s["median_tbt_ms"] == pytest.approx(50.0)
    assert s["p50_itl_ms"] == pytest.approx(100.0)
    assert s["mean_tpot_ms"] == pytest.approx(50.0)  # (0.3 - 0.1) / 4


# --------------------------------------------------------------------------- hand-computed summary


def two_requests() -> SimulationResult:
    # Request 0: a=0, s=0.01, tokens 0.10, 0.13, 0.16 (prompt 10).
    # Request 1: a=0.05, s=0.06, tokens 0.20, 0.20, 0.30 (prompt 20): a burst then 100 ms.
    return make_result(
        [0.0, 0.05],
        [[0.10, 0.13, 0.16], [0.20, 0.20, 0.30]],
        prompt_len=[10, 20],
        first_scheduled_at=[0.01, 0.06],
        num_preemptions=[0, 2],
        warnings=("outside the fitted envelope",),
    )


TWO_CONFIG = MetricsConfig(
    fluidity=FluidityConfig(
        ttft_deadline_ms=120.0, ttft_deadline_ms_per_prompt_token=0.0, tbt_deadline_ms=40.0
    ),
    percentiles=(50.0, 99.0, 99.9),
    stall_threshold_ms=80.0,
)


def test_two_request_table() -> None:
    t = request_metrics(two_requests(), TWO_CONFIG)
    assert tuple(t) == REQUEST_COLUMNS
    assert all(v.shape == (2,) for v in t.values())
    np.testing.assert_allclose(t["ttft_s"], [0.10, 0.15])
    np.testing.assert_allclose(t["scheduling_delay_s"], [0.01, 0.01])
    np.testing.assert_allclose(t["e2el_s"], [0.16, 0.25])
    np.testing.assert_allclose(t["tpot_s"], [0.03, 0.05])
    np.testing.assert_allclose(t["normalized_latency_s"], [0.16 / 3, 0.25 / 3])
    np.testing.assert_allclose(t["max_tbt_s"], [0.03, 0.10])
    np.testing.assert_allclose(t["first_token_at"], [0.10, 0.20])
    assert t["num_stalls"].tolist() == [0, 1]
    # Request 1: ttft 150 > 120 ms: 1 + floor(30/40) = 1 missed; burst token on time (slack 40);
    # 100 ms gap > 40 + 40: floor((100 - 40)/40) = 1 missed. 1 met + 2 missed -> 1/3.
    np.testing.assert_allclose(t["fluidity_index"], [1.0, 1.0 / 3.0])
    assert t["num_output_tokens"].tolist() == [3, 3]
    assert t["rejected"].tolist() == ["", ""]
    assert t["measured"].tolist() == [True, True]
    assert t["good"].tolist() == [True, True]  # no SLO set: every served request is good


def test_two_request_summary() -> None:
    s = summarize(two_requests(), TWO_CONFIG)
    ms = 1000.0
    assert s["duration"] == pytest.approx(0.30)
    assert s["completed"] == 2
    assert s["total_input_tokens"] == 30
    assert s["total_output_tokens"] == 6
    assert s["request_throughput"] == pytest.approx(2 / 0.3)
    assert s["request_goodput"] is None  # no SLO: as vLLM
    assert s["output_throughput"] == pytest.approx(20.0)
    assert s["total_token_throughput"] == pytest.approx(120.0)
    assert s["max_concurrent_requests"] == 2
    assert s["mean_ttft_ms"] == pytest.approx(125.0)
    assert s["median_ttft_ms"] == pytest.approx(125.0)
    assert s["std_ttft_ms"] == pytest.approx(25.0)
    assert s["p99_ttft_ms"] == pytest.approx(100.0 + 0.99 * 50.0)
    assert s["p99.9_ttft_ms"] == pytest.approx(100.0 + 0.999 * 50.0)
    assert s["mean_tpot_ms"] == pytest.approx(40.0)
    assert s["std_tpot_ms"] == pytest.approx(10.0)
    itl = np.array([0.03, 0.03, 0.10])
    assert s["mean_itl_ms"] == pytest.approx(itl.mean() * ms)
    assert s["median_itl_ms"] == pytest.approx(30.0)
    assert s["std_itl_ms"] == pytest.approx(itl.std() * ms)
    assert s["mean_e2el_ms"] == pytest.approx(205.0)
    tbt = np.array([0.03, 0.03, 0.0, 0.10])
    assert s["mean_tbt_ms"] == pytest.approx(40.0)
    assert s["median_tbt_ms"] == pytest.approx(30.0)
    assert s["p99_tbt_ms"] == pytest.approx(np.percentile(tbt, 99) * ms)
    assert s["p99_tbt_ms"] == pytest.approx(30.0 + 0.97 * 70.0)  # linear interpolation
    assert s["mean_scheduling_delay_ms"] == pytest.approx(10.0)
    assert s["mean_normalized_latency_ms"] == pytest.approx(205.0 / 3)
    assert s["mean_max_tbt_ms"] == pytest.approx(65.0)
    assert s["num_requests"] == 2
    assert s["num_rejected"] == 0
    assert s["rejected_reasons"] == {}
    assert s["num_excluded_warmup"] == 0
    assert s["num_excluded_cooldown"] == 0
    assert s["num_preemptions"] == 2
    assert s["num_stalls"] == 1
    assert s["stall_threshold_ms"] == 80.0
    assert s["mean_fluidity_index"] == pytest.approx(2.0 / 3.0)
    assert s["median_fluidity_index"] == pytest.approx(2.0 / 3.0)
    assert s["p1_fluidity_index"] == pytest.approx(1.0 / 3.0 + 0.01 * (2.0 / 3.0))
    assert s["fluid_token_rate"] == 0.0  # request 1 (3 tokens, late first) never meets 10%
    assert s["slo_attainment"] is None
    assert s["warnings"] == ["outside the fitted envelope"]


# --------------------------------------------------------------------------- SLOs, goodput


def test_goodput_and_attainment() -> None:
    # Add a one-token request (a=0.1, token at 0.18): TPOT undefined, passes the TPOT SLO (vLLM).
    result = make_result(
        [0.0, 0.05, 0.1], [[0.10, 0.13, 0.16], [0.20, 0.20, 0.30], [0.18]], prompt_len=[10, 20, 5]
    )
    cfg = MetricsConfig(slo=SloConfig(ttft_ms=120.0, tpot_ms=35.0))
    t = request_metrics(result, cfg)
    assert t["good"].tolist() == [True, False, True]  # request 1: ttft 150 ms, tpot 50 ms
    s = summarize(result, cfg)
    assert s["request_goodput"] == pytest.approx(2 / 0.3)
    assert s["slo_attainment"] == pytest.approx(2 / 3)
    # A max-TBT SLO alone: request 1's 100 ms gap fails 60 ms; a one-token request passes.
    cfg = MetricsConfig(slo=SloConfig(max_tbt_ms=60.0))
    assert request_metrics(result, cfg)["good"].tolist() == [True, False, True]
    # SLO boundaries are inclusive, as vLLM's `slo >= value` (request 0: ttft 0.1, e2el 0.16).
    cfg = MetricsConfig(slo=SloConfig(ttft_ms=100.0, e2el_ms=160.0))
    assert request_metrics(result, cfg)["good"].tolist() == [True, False, True]


# --------------------------------------------------------------------------- populations


def test_warmup_and_cooldown_exclusion_by_arrival() -> None:
    arrivals = [float(i) for i in range(10)]
    result = make_result(arrivals, [[a + 0.5] for a in arrivals])
    cfg = MetricsConfig(warmup_s=2.5, cooldown_s=1.5)
    t = request_metrics(result, cfg)
    assert t["measured"].tolist() == [False] * 3 + [True] * 5 + [False] * 2
    s = summarize(result, cfg)
    assert (s["num_excluded_warmup"], s["num_excluded_cooldown"], s["completed"]) == (3, 2, 5)
    assert s["duration"] == pytest.approx(7.5 - 3.0)  # first measured arrival to last finish
    # A window boundary is not inside the window.
    s = summarize(result, MetricsConfig(warmup_s=2.0, cooldown_s=1.0))
    assert (s["num_excluded_warmup"], s["num_excluded_cooldown"]) == (2, 1)


def test_rejected_and_unfinished_requests_are_excluded_and_counted() -> None:
    result = make_result(
        [0.0, 0.1, 0.2, 0.3, 0.4],
        [[0.1, 0.35], [], [], [0.4, 0.45], [0.5]],
        rejected=[0, 1, 2, 0, 2],
        finished=[True, True, True, False, True],
    )
    # Request 4 is rejected though it has a token list: it must not be measured either.
    t = request_metrics(result, MetricsConfig())
    reason = REJECT_REASONS
    assert t["rejected"].tolist() == ["", reason[1], reason[2], "", reason[2]]
    assert t["measured"].tolist() == [True, False, False, False, False]
    assert math.isnan(t["ttft_s"][1]) and math.isnan(t["fluidity_index"][1])
    s = summarize(result, MetricsConfig())
    assert s["num_requests"] == 5
    assert s["num_rejected"] == 3
    assert s["num_unfinished"] == 1
    assert s["rejected_reasons"] == {REJECT_REASONS[1]: 1, REJECT_REASONS[2]: 2}
    assert s["completed"] == 1
    assert s["total_output_tokens"] == 2
    assert s["max_concurrent_requests"] == 2  # requests 0 and 3 (never finishes) overlap


def test_empty_populations_are_none_and_json_is_strict() -> None:
    result = make_result([0.0, 1.0], [[], []], rejected=[1, 1])
    s = summarize(result, MetricsConfig(slo=SloConfig(ttft_ms=100.0)))
    assert s["completed"] == 0
    for key in ("duration", "request_throughput", "request_goodput", "mean_ttft_ms",
                "p99_itl_ms", "mean_fluidity_index", "fluid_token_rate", "slo_attainment"):
        assert s[key] is None, key
    json.dumps(s, allow_nan=False)


def test_a_run_without_requests_summarises() -> None:
    s = summarize(make_result([], []), MetricsConfig())
    assert (s["completed"], s["num_requests"], s["max_concurrent_requests"]) == (0, 0, 0)
    json.dumps(s, allow_nan=False)
    table = request_metrics(make_result([], []), MetricsConfig())
    assert all(v.shape == (0,) for v in table.values())


def test_one_token_requests_have_no_tpot_or_gaps() -> None:
    result = make_result([0.0, 0.0], [[0.2], [0.3]])
    s = summarize(result, MetricsConfig())
    assert s["mean_tpot_ms"] is None and s["mean_itl_ms"] is None and s["mean_tbt_ms"] is None
    assert s["mean_ttft_ms"] == pytest.approx(250.0)
    t = request_metrics(result, MetricsConfig())
    assert np.isnan(t["tpot_s"]).all() and np.isnan(t["max_tbt_s"]).all()


def test_max_concurrency_sweep() -> None:
    # [0, 2), [1, 3), [2, 4): at t=2 one leaves as one arrives, so never 3 in flight.
    assert max_concurrency(np.array([0.0, 1.0, 2.0]), np.array([2.0, 3.0, 4.0])) == 2
    assert max_concurrency(np.array([0.0, 0.0, 0.0]), np.array([1.0, np.nan, 2.0])) == 3
    assert max_concurrency(np.zeros(0), np.zeros(0)) == 0


# --------------------------------------------------------------------------- keys and JSON


def test_every_vllm_key_present_and_plain_types() -> None:
    cfg = MetricsConfig(percentiles=(50.0, 90.0, 99.0, 99.9))
    s = summarize(two_requests(), cfg)
    expected = list(VLLM_SCALAR_KEYS)
    for metric in (*VLLM_STAT_METRICS, "tbt", "scheduling_delay", "normalized_latency", "max_tbt"):
        expected += [f"mean_{metric}_ms", f"median_{metric}_ms", f"std_{metric}_ms"]
        expected += [f"p{p}_{metric}_ms" for p in ("50", "90", "99", "99.9")]
    missing = [k for k in expected if k not in s]
    assert not missing
    assert list(s)[: len(VLLM_SCALAR_KEYS)] == list(VLLM_SCALAR_KEYS)
    assert [percentile_label(p) for p in (1.0, 50.0, 99.9)] == ["p1", "p50", "p99.9"]

    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in (int, float, str, bool)

    assert plain(s)


def test_json_is_valid_and_deterministic() -> None:
    cfg = MetricsConfig(slo=SloConfig(ttft_ms=120.0), warmup_s=0.01)
    a = json.dumps(summarize(two_requests(), cfg), allow_nan=False)
    b = json.dumps(summarize(two_requests(), cfg), allow_nan=False)
    assert a == b
    assert json.loads(a)["completed"] == 1


# --------------------------------------------------------------------------- speed


def empty_steps() -> StepRecords:
    empty_f, empty_i = np.zeros(0), np.zeros(0, dtype=np.int64)
    return StepRecords(
        replica=np.zeros(0, dtype=np.int32), started_at=empty_f, duration_s=empty_f,
        num_prefill_tokens=empty_i, num_decode_tokens=empty_i, num_seqs=empty_i,
        prefill_kv_tokens=empty_i, decode_kv_tokens=empty_i,
        kv_blocks_used=empty_i, kv_blocks_total=empty_i, num_preempted=empty_i,
    )


def synthetic_result(num_requests: int, seed: int = 0) -> SimulationResult:
    """~200 tokens per request, exponential gaps with speculative-style bursts and rare stalls."""
    rng = np.random.default_rng(seed)
    arrived = np.sort(rng.uniform(0.0, 600.0, num_requests))
    counts = rng.integers(1, 400, num_requests)
    offsets = np.zeros(num_requests + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    total = int(offsets[-1])
    gaps = rng.exponential(0.03, total)
    gaps[rng.random(total) < 0.3] = 0.0  # bursts
    gaps[rng.random(total) < 0.001] += 1.0  # stalls
    owner = np.repeat(np.arange(num_requests), counts)
    first = offsets[:-1]
    gaps[first] = rng.uniform(0.05, 2.0, num_requests)  # ttft
    cum = np.cumsum(gaps)
    start = cum[first] - gaps[first]
    times = arrived[owner] + cum - start[owner]
    n = num_requests
    return SimulationResult(
        arrived_at=arrived, prompt_len=rng.integers(16, 2048, n), output_len=counts,
        first_scheduled_at=arrived + 0.01, finished_at=times[offsets[1:] - 1],
        num_preemptions=np.zeros(n, dtype=np.int64), replica=np.zeros(n, dtype=np.int32),
        rejected=np.zeros(n, dtype=np.int8), tokens=FlatTokenTimes(offsets, times),
        steps=empty_steps(),
    )


def test_synthetic_result_is_consistent() -> None:
    result = synthetic_result(50)
    t = request_metrics(result, MetricsConfig())
    assert (t["ttft_s"] > 0).all() and (t["e2el_s"] >= t["ttft_s"]).all()
    gaps = np.diff(result.token_times_s)
    inside = np.ones(gaps.size, dtype=bool)
    inside[result.token_offsets[1:-1] - 1] = False  # the step from one request to the next
    assert (gaps[inside] >= 0).all()


# --------------------------------------------------------------------------- chunking, exactness


def assert_same_table(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def mixed_result() -> SimulationResult:
    """Synthetic requests plus empty, rejected, unfinished and one-token ones, interleaved."""
    base = synthetic_result(60, seed=3)
    token_times = [list(base.tokens_of(i)) for i in range(base.num_requests)]
    arrivals = list(base.arrived_at)
    for i, extra in ((5, []), (17, [arrivals[17] + 0.4]), (30, []),
                     (44, [arrivals[44] + 0.2, arrivals[44] + 0.9])):
        token_times.insert(i, extra)
        arrivals.insert(i, arrivals[i])
    rejected = [0] * len(arrivals)
    rejected[5], rejected[30] = 1, 2
    finished = [True] * len(arrivals)
    finished[44] = False
    return make_result(arrivals, token_times, rejected=rejected, finished=finished,
                       prompt_len=list(range(16, 16 + len(arrivals))))


@pytest.mark.parametrize("chunk_tokens", [1, 7, 1000])
def test_chunking_does_not_change_any_result(
    chunk_tokens: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Per-token work runs on chunks of whole requests; each request's numbers depend on its own
    # tokens only and pooled gaps keep their order, so the summary is byte-identical.
    cfgs = [
        MetricsConfig(percentiles=(50.0, 90.0, 99.0, 99.9)),
        MetricsConfig(warmup_s=60.0, cooldown_s=60.0, slo=SloConfig(ttft_ms=900.0),
                      fluidity=FluidityConfig(max_miss_rate=0.0), stall_threshold_ms=100.0),
    ]
    for result in (mixed_result(), synthetic_result(40, seed=1)):
        expected = [(json.dumps(summarize(result, c)), request_metrics(result, c)) for c in cfgs]
        with monkeypatch.context() as patch:
            patch.setattr(_segments, "CHUNK_TOKENS", chunk_tokens)
            got = [(json.dumps(summarize(result, c)), request_metrics(result, c)) for c in cfgs]
        for (want_json, want_table), (got_json, got_table) in zip(expected, got, strict=True):
            assert got_json == want_json
            assert_same_table(got_table, want_table)


def test_request_chunks_cover_requests_in_order_within_the_limit() -> None:
    offsets = np.array([0, 3, 3, 10, 11, 11, 11, 30, 31], dtype=np.int64)
    chunks = request_chunks(offsets, max_tokens=5)
    assert chunks[0][0] == 0 and chunks[-1][1] == offsets.size - 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    for r0, r1 in chunks:
        assert r1 > r0
        assert offsets[r1] - offsets[r0] <= 5 or r1 == r0 + 1  # a long request: its own chunk
    assert request_chunks(np.zeros(1, dtype=np.int64)) == []
    assert request_chunks(np.zeros(4, dtype=np.int64), max_tokens=1) == [(0, 3)]


def same_float(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(-1e3, 1e3, allow_nan=False),
            st.sampled_from([0.0, 0.01, 0.02, 0.03, math.inf, -math.inf, math.nan]),
        ),
        min_size=1,
        max_size=300,
    ),
    percentiles=st.lists(
        st.one_of(st.sampled_from([50.0, 90.0, 99.0, 99.9, 100.0]), st.floats(0.001, 100.0)),
        max_size=5,
    ),
)
def test_order_statistics_are_numpys_to_the_bit(
    values: list[float], percentiles: list[float]
) -> None:
    x = np.array(values)
    with np.errstate(invalid="ignore"):
        median, tail = median_and_percentiles(x, tuple(percentiles))
        want_tail = np.percentile(x, percentiles) if percentiles else []
        assert same_float(median, float(np.median(x)))
        assert all(same_float(a, float(b)) for a, b in zip(tail, want_tail, strict=True))
        # Moments reuse a scratch buffer; they must agree with numpy to rounding (not to the
        # bit, so a numpy upgrade that reorders its sums cannot turn CI red).
        got_moments = mean_std(x, scratch=np.empty_like(x))
        assert got_moments == pytest.approx((float(np.mean(x)), float(np.std(x))), rel=1e-12,
                                            nan_ok=True)


def test_order_statistics_of_large_arrays_with_ties_are_numpys() -> None:
    rng = np.random.default_rng(11)
    for size in (100_000, 100_001, 1_000_003):
        x = np.round(rng.exponential(0.03, size), 4)  # many equal values, like step times
        x[rng.random(size) < 0.3] = 0.0
        q = (1.0, 50.0, 90.0, 95.0, 99.0, 99.9)
        median, tail = median_and_percentiles(x, q)
        assert median == np.median(x)
        assert tail == [float(v) for v in np.percentile(x, q)]
        moments = mean_std(x, scratch=np.empty_like(x))
        assert moments == pytest.approx((float(np.mean(x)), float(np.std(x))), rel=1e-12)


def test_summary_temporaries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Per-token temporaries live in chunk-sized scratch; what grows with the run is the buffer
    # of measured gaps for their mean and std and one spare array as large (8 + 8 bytes per
    # token, up to `GAP_BUFFER` gaps), and for explicit token times the pooled gaps' values
    # for their percentiles. Before chunking the summary took ~92 bytes per token.
    monkeypatch.setattr(_segments, "CHUNK_TOKENS", 1 << 14)
    result = synthetic_result(2000)
    tracemalloc.start()
    try:
        summarize(result, MetricsConfig())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / result.token_times_s.size < 32.0


@pytest.mark.bench
def test_bench_fifty_thousand_requests_ten_million_tokens() -> None:
    result = synthetic_result(50_000)
    tokens = result.token_times_s.size
    cfg = MetricsConfig(percentiles=(50.0, 90.0, 95.0, 99.0))
    tracemalloc.start()
    try:
        start = time.perf_counter()
        summarize(result, cfg)
        summary_s = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"\nsummarize {summary_s:.2f} s, {summary_s / tokens * 1e6:.3f} s per million tokens, "
          f"peak {peak / 2**20:.0f} MiB = {peak / tokens:.1f} bytes per token ({tokens} tokens)")
    assert summary_s / tokens * 1e6 < 0.5
    assert peak / tokens < 24.0


@pytest.mark.bench
def test_bench_ten_thousand_requests_two_million_tokens() -> None:
    result = synthetic_result(10_000)
    assert 1_900_000 <= result.token_times_s.size <= 2_100_000
    cfg = MetricsConfig(percentiles=(50.0, 90.0, 95.0, 99.0))
    summarize(result, cfg)  # warm-up (imports, page faults)
    start = time.perf_counter()
    request_metrics(result, cfg)
    table_s = time.perf_counter() - start
    start = time.perf_counter()
    summary = summarize(result, cfg)
    summary_s = time.perf_counter() - start
    print(f"\nrequest_metrics {table_s * 1e3:.0f} ms, summarize {summary_s * 1e3:.0f} ms "
          f"(10k requests, {result.token_times_s.size} tokens)")
    assert summary["completed"] == 10_000
    assert summary_s < 1.0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.001, 0.0125, 0.03, 0.5, 2.0]),
                          st.integers(1, 5)), min_size=1, max_size=40),
       st.lists(st.sampled_from([1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 100.0]), max_size=4))
def test_weighted_order_statistics_are_numpys(pairs, percentiles):
    values = np.array([v for v, _ in pairs])
    counts = np.array([c for _, c in pairs])
    expanded = np.repeat(values, counts)
    assert weighted_median_and_percentiles(values, counts, tuple(percentiles)) == (
        median_and_percentiles(expanded, tuple(percentiles))
    )


def test_gap_moments_over_several_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose pooled gaps overflow the moments buffer: TBT and ITL mean and std combine
    buffers (Chan et al.) to within rounding of numpy's on the whole pool; order statistics,
    taken from distinct values and counts, are numpy's exactly."""
    sc = load_scenario(ROOT / "scenarios/bench.yaml", ["workload.num_requests=300"])
    result = run_scenario(sc).result
    whole = summarize(result, sc.metrics)
    monkeypatch.setattr(requests_module, "GAP_BUFFER", 997)
    folded = summarize(result, sc.metrics)
    measured = np.flatnonzero(request_metrics(result, sc.metrics)["measured"])
    gaps = np.concatenate([np.diff(result.tokens_of(r)) for r in measured])
    for name, pool in (("tbt", gaps), ("itl", gaps[gaps > 0])):
        assert whole[f"mean_{name}_ms"] == float(np.mean(pool)) * 1000.0
        assert whole[f"std_{name}_ms"] == float(np.std(pool)) * 1000.0
        assert folded[f"mean_{name}_ms"] == pytest.approx(whole[f"mean_{name}_ms"], rel=1e-12)
        assert folded[f"std_{name}_ms"] == pytest.approx(whole[f"std_{name}_ms"], rel=1e-9)
        for key in ("median", "p99"):
            want = float(np.percentile(pool, 50 if key == "median" else 99)) * 1000.0
            assert whole[f"{key}_{name}_ms"] == folded[f"{key}_{name}_ms"] == want
