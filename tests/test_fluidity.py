"""Etalon fluidity-index and fluid token rate: worked examples and a reference loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.config import FluidityConfig
from simserve.metrics import (
    _segments,
    deadline_misses,
    fluid_tbt_deadline_s,
    fluid_token_rate,
    fluidity_index,
)
from simserve.metrics.fluidity import DEADLINE_TOLERANCE_S, MIN_TBT_DEADLINE_S

# DESIGN §5 worked examples: ttft = D_p = 100 ms, D_d = 30 ms, 100 output tokens (99 gaps).
EXAMPLE = FluidityConfig(
    ttft_deadline_ms=100.0, ttft_deadline_ms_per_prompt_token=0.0, tbt_deadline_ms=30.0
)


def csr(requests: list[tuple[float, list[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token times, offsets, arrivals) for requests given as (ttft_ms, gaps_ms), arriving at 0."""
    times, offsets = [], [0]
    for ttft_ms, gaps_ms in requests:
        elapsed_ms = ttft_ms + np.concatenate([[0.0], np.cumsum(gaps_ms, dtype=np.float64)])
        times.append(elapsed_ms / 1000.0)
        offsets.append(offsets[-1] + elapsed_ms.size)
    flat = np.concatenate(times) if times else np.zeros(0)
    return flat, np.array(offsets, dtype=np.int64), np.zeros(len(requests))


def reference_fluidity(ttft_s: float, gaps_s: list[float], d_p: float, d_d: float) -> float:
    """Etalon's algorithm token by token (DESIGN §5), with the module's 1 ns tolerance."""
    eps = DEADLINE_TOLERANCE_S
    met = missed = 0
    if ttft_s - d_p > eps:
        missed += 1 + math.floor((ttft_s - d_p + eps) / d_d)
        slack = 0.0
    else:
        met += 1
        slack = max(0.0, d_p - ttft_s)
    for gap in gaps_s:
        if gap - slack - d_d > eps:
            missed += math.floor((gap - slack + eps) / d_d)
            slack = 0.0
        else:
            met += 1
            slack = max(0.0, slack + d_d - gap)
    return 1.0 - missed / (met + missed)


@pytest.mark.parametrize(
    ("gaps_ms", "expected"),
    [
        ([30.0] * 99, 1.0),  # smooth stream
        ([0.0, 0.0, 90.0] * 33, 1.0),  # speculative bursts of three: harmless
        ([30.0] * 49 + [1000.0] + [30.0] * 49, 1.0 - 33 / 132),  # one stall: 33 of 132 missed
    ],
)
def test_design_worked_examples(gaps_ms: list[float], expected: float) -> None:
    times, offsets, arrived = csr([(100.0, gaps_ms)])
    got = fluidity_index(times, offsets, arrived, np.array([0]), EXAMPLE)
    assert got[0] == pytest.approx(expected, abs=1e-12)


def test_stall_counts_missed_and_counted() -> None:
    times, offsets, arrived = csr([(100.0, [30.0] * 49 + [1000.0] + [30.0] * 49)])
    missed, counted = deadline_misses(times, offsets, arrived, np.array([0]), EXAMPLE)
    assert (missed[0], counted[0]) == (33.0, 132.0)


def test_late_first_token_and_prompt_aware_deadline() -> None:
    # D_p = 50 + 0.5 * 100 = 100 ms; ttft 175 ms misses 1 + floor(75 / 30) = 3 deadlines.
    cfg = FluidityConfig(
        ttft_deadline_ms=50.0, ttft_deadline_ms_per_prompt_token=0.5, tbt_deadline_ms=30.0
    )
    times, offsets, arrived = csr([(175.0, [30.0, 30.0])])
    missed, counted = deadline_misses(times, offsets, arrived, np.array([100]), cfg)
    assert (missed[0], counted[0]) == (3.0, 5.0)
    assert fluidity_index(times, offsets, arrived, np.array([100]), cfg)[0] == pytest.approx(0.4)


def test_slack_carries_forward_and_resets() -> None:
    # Early first token (slack 60 ms) absorbs one 80 ms gap; a second one is then late by
    # 80 - (10 + 30) = 40 ms: floor((80 - 10) / 30) = 2 missed, slack reset, next 30 ms gap on time.
    times, offsets, arrived = csr([(40.0, [80.0, 80.0, 30.0])])
    missed, counted = deadline_misses(times, offsets, arrived, np.array([0]), EXAMPLE)
    assert (missed[0], counted[0]) == (2.0, 5.0)


def test_requests_without_tokens_are_nan_and_others_independent() -> None:
    times, offsets, arrived = csr([(100.0, [30.0] * 5), (100.0, [1000.0])])
    offsets = np.concatenate([[0], offsets])  # an empty request in front
    arrived = np.zeros(3)
    got = fluidity_index(times, offsets, arrived, np.zeros(3, dtype=np.int64), EXAMPLE)
    assert math.isnan(got[0])
    assert got[1] == 1.0
    assert got[2] == pytest.approx(1.0 - 33 / 34)  # 1 met, floor(1000/30) = 33 missed


gap_ms = st.one_of(st.just(0), st.integers(0, 400))
request_spec = st.tuples(st.integers(1, 600), st.lists(gap_ms, max_size=40))


@settings(max_examples=300, deadline=None)
@given(
    requests=st.lists(request_spec, min_size=1, max_size=6),
    d_p_ms=st.integers(1, 300),
    d_d_ms=st.integers(1, 120),
)
def test_vectorised_equals_reference_loop(
    requests: list[tuple[int, list[int]]], d_p_ms: int, d_d_ms: int
) -> None:
    cfg = FluidityConfig(
        ttft_deadline_ms=float(d_p_ms), ttft_deadline_ms_per_prompt_token=0.0,
        tbt_deadline_ms=float(d_d_ms),
    )
    times, offsets, arrived = csr([(float(t), [float(g) for g in gaps]) for t, gaps in requests])
    got = fluidity_index(times, offsets, arrived, np.zeros(len(requests), dtype=np.int64), cfg)
    for i in range(len(requests)):
        tok = times[offsets[i] : offsets[i + 1]]
        d_p, d_d = cfg.ttft_deadline_ms / 1000, cfg.tbt_deadline_ms / 1000
        want = reference_fluidity(float(tok[0]), list(np.diff(tok)), d_p, d_d)
        assert got[i] == pytest.approx(want, abs=1e-12)
        assert 0.0 <= got[i] <= 1.0


def test_fluid_token_rate_of_a_steady_stream() -> None:
    # ttft = D_p leaves no slack, so any D_d below the 20 ms gap makes every later token late.
    times, offsets, arrived = csr([(100.0, [20.0] * 199)])
    rate = fluid_token_rate(times, offsets, arrived, np.array([0]), EXAMPLE)
    assert 50.0 / 1.01 <= rate <= 50.0 * (1 + 1e-9)


def test_fluid_tbt_deadline_meets_the_miss_rate_and_is_tight() -> None:
    rng = np.random.default_rng(7)
    requests = [
        (float(rng.integers(20, 300)), list(rng.exponential(25.0, size=int(rng.integers(5, 80)))))
        for _ in range(40)
    ]
    times, offsets, arrived = csr(requests)
    prompts = np.zeros(len(requests), dtype=np.int64)
    d = fluid_tbt_deadline_s(times, offsets, arrived, prompts, EXAMPLE)
    rate = EXAMPLE.max_miss_rate
    for i, d_i in enumerate(d):
        if math.isinf(d_i):
            continue
        one = slice(offsets[i], offsets[i + 1])
        single = np.array([0, offsets[i + 1] - offsets[i]])
        for scale, ok in ((1.0, True), (1 / 1.01 - 1e-6, False)):
            deadline = d_i * scale
            if deadline < MIN_TBT_DEADLINE_S:
                continue
            cfg = FluidityConfig(
                ttft_deadline_ms=EXAMPLE.ttft_deadline_ms,
                ttft_deadline_ms_per_prompt_token=0.0,
                tbt_deadline_ms=deadline * 1000.0,
            )
            missed, counted = deadline_misses(times[one], single, arrived[:1], prompts[:1], cfg)
            assert (missed[0] <= rate * counted[0]) == ok, (i, scale)


def test_fluid_token_rate_infeasible_and_include() -> None:
    # Request 0 is fine; request 1 has 2 tokens and a late first token: miss rate >= 1/2 for
    # every D_d, so it can never meet 10%.
    times, offsets, arrived = csr([(100.0, [20.0] * 50), (500.0, [10.0])])
    prompts = np.zeros(2, dtype=np.int64)
    d = fluid_tbt_deadline_s(times, offsets, arrived, prompts, EXAMPLE)
    assert math.isinf(d[1])
    assert fluid_token_rate(times, offsets, arrived, prompts, EXAMPLE) == 0.0
    only_first = np.array([True, False])
    rate = fluid_token_rate(times, offsets, arrived, prompts, EXAMPLE, include=only_first)
    assert rate == pytest.approx(50.0, rel=0.011)
    none = np.array([False, False])
    assert math.isnan(fluid_token_rate(times, offsets, arrived, prompts, EXAMPLE, include=none))


@settings(max_examples=150, deadline=None)
@given(
    requests=st.lists(request_spec, min_size=1, max_size=6),
    d_p_ms=st.integers(1, 300),
    max_miss_rate=st.sampled_from([0.0, 0.1, 0.25]),
)
def test_fluid_tbt_deadline_meets_the_rate_per_reference_loop(
    requests: list[tuple[int, list[int]]], d_p_ms: int, max_miss_rate: float
) -> None:
    cfg = FluidityConfig(
        ttft_deadline_ms=float(d_p_ms), ttft_deadline_ms_per_prompt_token=0.0,
        max_miss_rate=max_miss_rate,
    )
    times, offsets, arrived = csr([(float(t), [float(g) for g in gaps]) for t, gaps in requests])
    d = fluid_tbt_deadline_s(times, offsets, arrived, np.zeros(len(requests), dtype=np.int64), cfg)
    for i, d_i in enumerate(d):
        tok = times[offsets[i] : offsets[i + 1]]
        ttft, gaps = float(tok[0]), list(np.diff(tok))
        if math.isinf(d_i):
            # Infeasible: the first token is late and even one miss in n exceeds the rate.
            assert ttft > cfg.ttft_deadline_ms / 1000 and 1 / tok.size > max_miss_rate
            continue
        assert d_i >= MIN_TBT_DEADLINE_S
        miss_rate = 1.0 - reference_fluidity(ttft, gaps, cfg.ttft_deadline_ms / 1000, d_i)
        assert miss_rate <= max_miss_rate + 1e-12


@pytest.mark.parametrize("chunk_tokens", [1, 5, 64])
def test_chunked_walks_give_identical_results(
    chunk_tokens: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Requests are walked a chunk of whole requests at a time; every number must be the same
    # as with one chunk (including empty requests and requests longer than a chunk).
    rng = np.random.default_rng(5)
    requests = [
        (float(rng.integers(20, 900)),
         list(rng.choice([0.0, 10.0, 30.0, 45.0, 400.0], size=int(rng.integers(0, 120)))))
        for _ in range(30)
    ]
    times, offsets, arrived = csr(requests)
    offsets = np.concatenate([[0], offsets[:10], offsets[10:11], offsets[10:]])  # empty ones
    arrived = np.sort(rng.uniform(0.0, 5.0, offsets.size - 1))
    times = times + np.repeat(arrived, np.diff(offsets))
    prompts = rng.integers(0, 2000, offsets.size - 1)
    include = rng.random(offsets.size - 1) < 0.7
    cfg = FluidityConfig(max_miss_rate=0.05)

    def everything() -> list[np.ndarray]:
        args = (times, offsets, arrived, prompts, cfg)
        return [
            *deadline_misses(*args),
            fluidity_index(*args),
            fluid_tbt_deadline_s(*args),
            fluid_tbt_deadline_s(*args, include=include),
            np.array([fluid_token_rate(*args, include=include)]),
        ]

    want = everything()
    monkeypatch.setattr(_segments, "CHUNK_TOKENS", chunk_tokens)
    for got_array, want_array in zip(everything(), want, strict=True):
        np.testing.assert_array_equal(got_array, want_array)


@pytest.mark.parametrize("first_rounds", [0, 1, 2, 5])
def test_stopped_search_gives_the_full_searchs_rate(first_rounds, monkeypatch):
    """The summary searches every request's D_d for a few rounds only, then finishes the
    requests that can decide the percentile: the rate is the full search's to the bit."""
    from simserve.config import load_scenario
    from simserve.experiments.run import run_scenario
    from simserve.metrics import requests as requests_module
    from simserve.metrics import summarize

    root = Path(__file__).resolve().parent.parent
    sc = load_scenario(root / "scenarios/bench.yaml",
                       ["workload.num_requests=600", "workload.arrival.rate=25"])
    result = run_scenario(sc).result
    monkeypatch.setattr(requests_module, "FLUID_FIRST_ROUNDS", first_rounds)
    got = summarize(result, sc.metrics)["fluid_token_rate"]
    measured = requests_module.request_metrics(result, sc.metrics)["measured"]
    want = fluid_token_rate(result.token_times_s, result.token_offsets, result.arrived_at,
                            result.prompt_len, sc.metrics.fluidity, include=measured)
    assert got == want
