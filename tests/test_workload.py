"""Tests for simserve.workload: arrival processes and length distributions against theory at
fixed seeds, trace parsing for each format and each kind of bad input, and determinism."""

from __future__ import annotations

import math
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import simserve.workload as workload_pkg
from simserve.config import ArrivalConfig, LengthsConfig, WorkloadConfig
from simserve.errors import InputError, InputWarning
from simserve.workload import TRACE_FORMATS, Trace, Workload, build_workload, load_trace, traces
from simserve.workload.lengths import uniform_bounds

TRACES_DIR = Path(__file__).resolve().parents[1] / "calibration" / "data" / "traces"
CONV = TRACES_DIR / "splitwise_conv.csv"
CODE = TRACES_DIR / "splitwise_code.csv"
ARXIV = TRACES_DIR / "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"

N_STAT = 20_000  # samples per statistical test


def rngs(seed: int = 0) -> tuple[np.random.Generator, np.random.Generator]:
    """An (arrival, length) generator pair spawned from one seed, as a scenario does."""
    arrival_seq, length_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(arrival_seq), np.random.default_rng(length_seq)


def build(seed: int = 0, num_requests: int = N_STAT, **sections: object) -> Workload:
    """build_workload for a config given as sections (arrival=..., lengths=..., trace=...)."""
    config = WorkloadConfig(num_requests=num_requests, **sections)  # type: ignore[arg-type]
    return build_workload(config, *rngs(seed))


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- public API


def test_public_api_is_explicit() -> None:
    assert sorted(workload_pkg.__all__) == [
        "TRACE_FORMATS",
        "Trace",
        "Workload",
        "build_workload",
        "load_trace",
    ]
    for name in workload_pkg.__all__:
        assert hasattr(workload_pkg, name)


def test_workload_arrays_are_read_only_copies() -> None:
    arrived_at = np.array([0.0, 1.0])
    workload = Workload(arrived_at, np.array([3, 4]), np.array([1, 2]))
    assert len(workload) == 2
    assert arrived_at.flags.writeable  # the caller's array is untouched
    with pytest.raises(ValueError):
        workload.arrived_at[0] = 5.0
    assert workload.prompt_len.dtype == np.int64 and workload.arrived_at.dtype == np.float64


@pytest.mark.parametrize(
    ("arrived_at", "prompt_len", "output_len", "concurrency"),
    [
        ([0.0, 1.0], [1], [1], None),  # length mismatch
        ([0.0, 1.0], [1, 0], [1, 1], None),  # zero prompt
        ([0.0, 1.0], [1, 1], [1, 0], None),  # zero output
        ([1.0, 2.0], [1, 1], [1, 1], None),  # does not start at 0
        ([0.0, 2.0, 1.0], [1, 1, 1], [1, 1, 1], None),  # decreasing
        ([0.0, 1.0], [1, 1], [1, 1], 2),  # closed loop with finite arrivals
        ([math.nan, math.nan], [1, 1], [1, 1], None),  # open loop with NaN arrivals
    ],
)
def test_workload_rejects_broken_invariants(
    arrived_at: list[float], prompt_len: list[int], output_len: list[int], concurrency: int | None
) -> None:
    with pytest.raises(ValueError):
        Workload(np.array(arrived_at), np.array(prompt_len), np.array(output_len), concurrency)


# --------------------------------------------------------------------------- arrivals


def gaps_of(workload: Workload) -> np.ndarray:
    assert workload.arrived_at[0] == 0.0
    return np.diff(workload.arrived_at)


def test_poisson_gaps_mean_and_cv() -> None:
    rate = 5.0
    gaps = gaps_of(build(arrival=ArrivalConfig(process="poisson", rate=rate)))
    # Exponential gaps: sd = mean, so the standard error of the mean gap is (1/rate)/sqrt(n).
    standard_error = (1.0 / rate) / math.sqrt(gaps.size)
    assert abs(gaps.mean() - 1.0 / rate) < 3 * standard_error
    # cv = 1; the sd of the sample cv of exponential data is ~ sqrt(2/n) = 0.01 here: 5 of them.
    assert gaps.std(ddof=1) / gaps.mean() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    ("burstiness", "relative_tolerance"), [(0.25, 0.10), (1.0, 0.05), (4.0, 0.05)]
)
def test_gamma_gaps_mean_and_cv(burstiness: float, relative_tolerance: float) -> None:
    rate = 2.0
    gaps = gaps_of(build(arrival=ArrivalConfig(process="gamma", rate=rate, burstiness=burstiness)))
    expected_cv2 = 1.0 / burstiness  # burstiness 0.25 -> cv 2; 4 -> cv 0.5
    standard_error = math.sqrt(expected_cv2) / rate / math.sqrt(gaps.size)
    assert abs(gaps.mean() - 1.0 / rate) < 3 * standard_error
    # The sample variance of gamma data with shape k has relative sd ~ sqrt((2 + 6/k)/n): 0.036
    # for k = 0.25 (hence 10%, ~3 sd), 0.011 for k = 4 (5%).
    cv2 = gaps.var(ddof=1) / gaps.mean() ** 2
    assert cv2 == pytest.approx(expected_cv2, rel=relative_tolerance)


def test_constant_gaps_are_exact() -> None:
    workload = build(num_requests=101, arrival=ArrivalConfig(process="constant", rate=4.0))
    np.testing.assert_array_equal(workload.arrived_at, np.arange(101) * 0.25)
    workload = build(num_requests=1000, arrival=ArrivalConfig(process="constant", rate=3.0))
    np.testing.assert_allclose(np.diff(workload.arrived_at), 1 / 3, rtol=1e-12)


def test_offline_all_arrive_at_zero() -> None:
    workload = build(num_requests=50, arrival=ArrivalConfig(process="offline", rate=None))
    np.testing.assert_array_equal(workload.arrived_at, np.zeros(50))
    assert workload.concurrency is None


def test_closed_loop_has_nan_arrivals_and_concurrency() -> None:
    workload = build(num_requests=30, arrival=ArrivalConfig(process="closed_loop", concurrency=8))
    assert np.all(np.isnan(workload.arrived_at))
    assert workload.concurrency == 8
    assert len(workload) == 30


# --------------------------------------------------------------------------- lengths


@pytest.mark.parametrize(
    ("mean_len", "range_ratio", "bounds"),
    [(1000, 0.5, (500, 1500)), (7, 0.3, (4, 9)), (128, 0.0, (128, 128)), (1, 0.9, (1, 1))],
)
def test_uniform_bounds_match_vllm(
    mean_len: int, range_ratio: float, bounds: tuple[int, int]
) -> None:
    # vLLM: low = int(L*(1-r)), high = int(L*(1+r)), inclusive; floor raised to 1.
    assert uniform_bounds(mean_len, range_ratio) == bounds


def test_uniform_lengths_cover_bounds_with_mean_l() -> None:
    lengths = LengthsConfig(dist="uniform", prompt_len=1000, output_len=7, range_ratio=0.5)
    workload = build(lengths=lengths)
    assert (workload.prompt_len.min(), workload.prompt_len.max()) == (500, 1500)
    assert (workload.output_len.min(), workload.output_len.max()) == (3, 10)  # int(3.5), int(10.5)
    # Discrete uniform on [500, 1500]: sd = sqrt((1001^2 - 1)/12) ~ 289, se ~ 2.0; 3 se.
    standard_error = math.sqrt((1001**2 - 1) / 12) / math.sqrt(N_STAT)
    assert abs(workload.prompt_len.mean() - 1000) < 3 * standard_error


def test_lognormal_lengths_mean_and_median() -> None:
    sigma = 0.8
    lengths = LengthsConfig(
        dist="lognormal", prompt_len=1000, output_len=200, prompt_sigma=sigma, output_sigma=sigma
    )
    workload = build(lengths=lengths)
    # Lognormal sd = mean * sqrt(exp(sigma^2) - 1) ~ 0.95 * mean: se ~ 0.67% of the mean; 3 se.
    relative_se = math.sqrt(math.exp(sigma**2) - 1) / math.sqrt(N_STAT)
    assert workload.prompt_len.mean() == pytest.approx(1000, rel=3 * relative_se)
    assert workload.output_len.mean() == pytest.approx(200, rel=3 * relative_se)
    # median = exp(mu) = mean * exp(-sigma^2/2)
    assert np.median(workload.prompt_len) == pytest.approx(
        1000 * math.exp(-(sigma**2) / 2), rel=0.03
    )
    assert workload.prompt_len.min() >= 1 and workload.output_len.min() >= 1


def test_lognormal_sigma_zero_is_fixed_and_tiny_means_clip_to_one() -> None:
    lengths = LengthsConfig(dist="lognormal", prompt_len=300, output_len=1, prompt_sigma=0.0)
    workload = build(num_requests=100, lengths=lengths)
    assert np.all(workload.prompt_len == 300)
    assert workload.output_len.min() >= 1


def test_fixed_lengths() -> None:
    workload = build(num_requests=10, lengths=LengthsConfig(prompt_len=512, output_len=128))
    assert np.all(workload.prompt_len == 512) and np.all(workload.output_len == 128)


# --------------------------------------------------------------------------- trace formats


def test_simserve_format_with_extra_columns(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "distserve.csv",
        "arrival_s,prompt_len,output_len,ttft_ms,tpot_ms\n"
        "10.5,100,20,35.1,12.0\n"
        "11.0,200,1,40.2,0\n",
    )
    trace = load_trace(path)
    assert isinstance(trace, Trace) and trace.format == "simserve" and trace.source == path
    np.testing.assert_array_equal(trace.arrival_s, [10.5, 11.0])
    np.testing.assert_array_equal(trace.prompt_len, [100, 200])
    np.testing.assert_array_equal(trace.output_len, [20, 1])
    assert trace.prompt_len.dtype == np.int64


def test_vidur_format_arrival_optional(tmp_path: Path) -> None:
    with_times = load_trace(
        write_csv(
            tmp_path / "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,6\n1.5,7,8\n"
        )
    )
    assert with_times.format == "vidur"
    np.testing.assert_array_equal(with_times.arrival_s, [0.0, 1.5])
    lengths_only = load_trace(
        write_csv(
            tmp_path / "l.csv", "num_prefill_tokens,num_decode_tokens,pd_ratio\n5,6,0.8\n7,8,0.9\n"
        )
    )
    assert lengths_only.arrival_s is None
    np.testing.assert_array_equal(lengths_only.output_len, [6, 8])


def test_azure_format_datetime_and_numeric(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "azure.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,4808,10\n"
        "2023-11-16 18:15:46.7325900,3180,8\n"
        "2023-11-16 18:16:47.0000000,110,27\n",
    )
    trace = load_trace(path)
    assert trace.format == "azure"
    np.testing.assert_allclose(trace.arrival_s, [0.0, 0.052, 60.31941], atol=1e-9)
    numeric = load_trace(
        write_csv(tmp_path / "n.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n3.5,1,2\n4,3,4\n")
    )
    np.testing.assert_array_equal(numeric.arrival_s, [3.5, 4.0])


def test_unsorted_timestamps_are_sorted_stably_keeping_pairs(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "unsorted.csv",
        "arrival_s,prompt_len,output_len\n2.0,20,2\n1.0,10,1\n2.0,30,3\n0.5,5,5\n",
    )
    trace = load_trace(path)
    np.testing.assert_array_equal(trace.arrival_s, [0.5, 1.0, 2.0, 2.0])
    np.testing.assert_array_equal(trace.prompt_len, [5, 10, 20, 30])  # tie keeps file order
    np.testing.assert_array_equal(trace.output_len, [5, 1, 2, 3])


def test_blank_lines_and_bom_and_spaces_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_text(
        "\ufeff arrival_s , prompt_len,output_len\n0, 3 ,4\n\n1,5,6.0\n", encoding="utf-8"
    )
    trace = load_trace(path)
    np.testing.assert_array_equal(trace.prompt_len, [3, 5])
    np.testing.assert_array_equal(trace.output_len, [4, 6])


@pytest.mark.parametrize(
    ("path", "num_rows", "has_arrivals"),
    [(CONV, 19366, True), (CODE, 8819, True), (ARXIV, 28257, False)],
)
def test_shipped_traces_load(path: Path, num_rows: int, has_arrivals: bool) -> None:
    trace = load_trace(path)
    assert len(trace) == num_rows
    assert (trace.arrival_s is not None) == has_arrivals
    if trace.arrival_s is not None:
        assert trace.arrival_s[0] == 0.0 and np.all(np.diff(trace.arrival_s) >= 0)
    assert trace.prompt_len.min() >= 1 and trace.output_len.min() >= 1


def test_shipped_traces_have_license_and_source() -> None:
    for name in ("LICENSE", "SOURCE.txt", "README.md"):
        assert (TRACES_DIR / name).is_file()


# --------------------------------------------------------------------------- trace in workloads


def test_trace_replay_keeps_rows_paired_and_starts_at_zero(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "t.csv",
        "arrival_s,prompt_len,output_len\n100,1,11\n101,2,12\n103,3,13\n110,4,14\n",
    )
    workload = build(
        num_requests=3,
        trace=str(path),
        arrival=ArrivalConfig(process="trace", rate=None),
        lengths=LengthsConfig(dist="trace"),
    )
    np.testing.assert_array_equal(workload.arrived_at, [0.0, 1.0, 3.0])
    np.testing.assert_array_equal(workload.prompt_len, [1, 2, 3])
    np.testing.assert_array_equal(workload.output_len, [11, 12, 13])


@pytest.mark.parametrize("rate", [0.5, 3.0, 17.25])
def test_trace_time_scaling_hits_target_mean_rate(rate: float) -> None:
    num_requests = 1000
    workload = build(
        num_requests=num_requests,
        trace=str(CONV),
        arrival=ArrivalConfig(process="trace", rate=rate),
        lengths=LengthsConfig(dist="trace"),
    )
    arrived_at = workload.arrived_at
    mean_rate = (num_requests - 1) / (arrived_at[-1] - arrived_at[0])
    assert mean_rate == pytest.approx(rate, rel=1e-12)
    # One scale factor for every gap: the trace's burst shape (relative gaps) is kept.
    original = load_trace(CONV).arrival_s[:num_requests]
    np.testing.assert_allclose(arrived_at * (original[-1] / arrived_at[-1]), original, rtol=1e-9)


def test_trace_lengths_with_synthetic_arrivals_sample_rows(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i + 1},{1000 + i}\n" for i in range(50))
    path = write_csv(tmp_path / "t.csv", "arrival_s,prompt_len,output_len\n" + rows)
    config = {"trace": str(path), "lengths": LengthsConfig(dist="trace")}
    without = build(num_requests=50, **config)
    # Without replacement: a permutation of the rows, each pair intact.
    assert sorted(without.prompt_len.tolist()) == list(range(1, 51))
    np.testing.assert_array_equal(without.output_len, without.prompt_len + 999)
    with_replacement = build(num_requests=500, **config)
    np.testing.assert_array_equal(with_replacement.output_len, with_replacement.prompt_len + 999)
    assert len(set(with_replacement.prompt_len.tolist())) <= 50


def test_trace_arrivals_with_synthetic_lengths() -> None:
    workload = build(
        num_requests=100,
        trace=str(CODE),
        arrival=ArrivalConfig(process="trace", rate=None),
        lengths=LengthsConfig(dist="fixed", prompt_len=64, output_len=8),
    )
    np.testing.assert_array_equal(workload.arrived_at, load_trace(CODE).arrival_s[:100])
    assert np.all(workload.prompt_len == 64)


def test_num_requests_larger_than_trace(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "short.csv", "arrival_s,prompt_len,output_len\n0,1,1\n1,2,2\n")
    with pytest.raises(InputError) as info:
        build(num_requests=3, trace=str(path), arrival=ArrivalConfig(process="trace"))
    assert info.value.field == "workload.num_requests"
    assert "short.csv" in str(info.value) and "2 rows" in str(info.value)


def test_arrival_trace_needs_an_arrival_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "lengths.csv", "num_prefill_tokens,num_decode_tokens\n1,2\n")
    with pytest.raises(InputError) as info:
        build(num_requests=1, trace=str(path), arrival=ArrivalConfig(process="trace"))
    assert info.value.field == "workload.arrival.process" and "lengths.csv" in str(info.value)


def test_rate_scaling_of_simultaneous_rows_is_an_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "same.csv", "arrival_s,prompt_len,output_len\n5,1,1\n5,2,2\n")
    with pytest.raises(InputError) as info:
        build(num_requests=2, trace=str(path), arrival=ArrivalConfig(process="trace", rate=2.0))
    assert info.value.field == "workload.arrival.rate"


# --------------------------------------------------------------------------- bad trace input


@pytest.mark.parametrize(
    ("text", "line", "fragments"),
    [
        (
            "arrival_s,prompt_len,output_len\n0,1,1\n1,abc,2\n",
            3,
            ["column 'prompt_len'", "data row 2", "'abc'"],
        ),
        (
            "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,2,2\n2,3,-1\n",
            4,
            ["column 'num_decode_tokens'", "data row 3", "output length", ">= 1"],
        ),
        (
            "arrival_s,prompt_len,output_len\n0,1,1\n1,9223372036854775808,1\n",
            3,
            ["column 'prompt_len'", "data row 2", "more than 1,000,000,000 tokens"],
        ),
        (
            "arrival_s,prompt_len,output_len\n0,-4,1\n",
            2,
            ["column 'prompt_len'", "data row 1", "prompt length"],
        ),
        ("arrival_s,prompt_len,output_len\n0,2.5,1\n", 2, ["whole number", "'2.5'"]),
        ("arrival_s,prompt_len,output_len\n0,1,1\nsoon,1,1\n", 3, ["column 'arrival_s'", "'soon'"]),
        ("arrival_s,prompt_len,output_len\n0,1,1\nnan,1,1\n", 3, ["column 'arrival_s'", "'nan'"]),
        ("arrival_s,prompt_len,output_len\n0,1,1\n1,2\n", 3, ["at least 3 columns"]),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,1,1\n"
            "2023-13-45 99:00:00,1,1\n",
            3,
            ["column 'TIMESTAMP'", "data row 2", "datetime"],
        ),
        ("arrival_s,prompt_len,output_len\n0,,1\n", 2, ["column 'prompt_len'", "''"]),
    ],
)
def test_bad_values_name_file_line_and_column(
    tmp_path: Path, text: str, line: int, fragments: list[str]
) -> None:
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(InputError) as info:
        load_trace(path)
    message = str(info.value)
    assert info.value.source == str(path) and info.value.line == line
    assert message.startswith(f"{path}:{line}: ")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_unknown_header_lists_accepted_formats(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "odd.csv", "time,input,output\n0,1,1\n")
    with pytest.raises(InputError) as info:
        load_trace(path)
    message = str(info.value)
    assert message.startswith(f"{path}:1: ") and "time,input,output" in message
    for trace_format in TRACE_FORMATS:
        assert trace_format.describe() in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty"), ("arrival_s,prompt_len,output_len\n", "no data rows")],
)
def test_empty_traces(tmp_path: Path, text: str, fragment: str) -> None:
    path = write_csv(tmp_path / "empty.csv", text)
    with pytest.raises(InputError, match=fragment) as info:
        load_trace(path)
    assert str(path) in str(info.value)


def test_missing_trace_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(InputError, match="not found") as info:
        load_trace(path)
    assert str(info.value).startswith(f"{path}: ")
    with pytest.raises(InputError, match="directory"):
        load_trace(tmp_path)


# --------------------------------------------------------------------------- determinism


def test_same_generators_give_identical_arrays() -> None:
    config = WorkloadConfig(
        num_requests=500,
        arrival=ArrivalConfig(process="gamma", rate=3.0, burstiness=0.5),
        lengths=LengthsConfig(dist="lognormal"),
    )
    first, second = build_workload(config, *rngs(7)), build_workload(config, *rngs(7))
    for name in ("arrived_at", "prompt_len", "output_len"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    other = build_workload(config, *rngs(8))
    assert not np.array_equal(first.arrived_at, other.arrived_at)


def test_streams_are_independent_common_random_numbers() -> None:
    config = WorkloadConfig(
        num_requests=200,
        trace=str(CONV),
        arrival=ArrivalConfig(process="poisson", rate=2.0),
        lengths=LengthsConfig(dist="trace"),
    )
    arrival_rng, length_rng = rngs(1)
    base = build_workload(config, arrival_rng, length_rng)
    # A different length stream leaves arrivals alone, and vice versa.
    changed_lengths = build_workload(config, rngs(1)[0], np.random.default_rng(99))
    np.testing.assert_array_equal(base.arrived_at, changed_lengths.arrived_at)
    assert not np.array_equal(base.prompt_len, changed_lengths.prompt_len)
    changed_arrivals = build_workload(config, np.random.default_rng(99), rngs(1)[1])
    np.testing.assert_array_equal(base.prompt_len, changed_arrivals.prompt_len)


def test_no_global_random_state_is_used() -> None:
    state = np.random.get_state()
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    build(
        num_requests=100,
        arrival=ArrivalConfig(process="gamma", rate=1.0, burstiness=2.0),
        lengths=LengthsConfig(dist="uniform", range_ratio=0.5),
    )
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    np.random.set_state(state)


# --------------------------------------------------------------------------- invariants

arrival_configs = st.one_of(
    st.builds(
        ArrivalConfig,
        process=st.sampled_from(["poisson", "gamma", "constant"]),
        rate=st.floats(1e-3, 1e4),
        burstiness=st.floats(0.05, 50.0),
    ),
    st.just(ArrivalConfig(process="offline", rate=None)),
    st.builds(ArrivalConfig, process=st.just("closed_loop"), concurrency=st.integers(1, 64)),
)
length_configs = st.builds(
    LengthsConfig,
    dist=st.sampled_from(["fixed", "uniform", "lognormal"]),
    prompt_len=st.integers(1, 32_000),
    output_len=st.integers(1, 4_000),
    range_ratio=st.floats(0.0, 0.99),
    prompt_sigma=st.floats(0.0, 2.5),
    output_sigma=st.floats(0.0, 2.5),
)


@settings(max_examples=60, deadline=None)
@given(
    arrival=arrival_configs,
    lengths=length_configs,
    num_requests=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_valid_config_gives_a_valid_workload(
    arrival: ArrivalConfig, lengths: LengthsConfig, num_requests: int, seed: int
) -> None:
    config = WorkloadConfig(num_requests=num_requests, arrival=arrival, lengths=lengths)
    workload = build_workload(config, *rngs(seed))
    assert len(workload) == num_requests
    assert workload.prompt_len.min() >= 1 and workload.output_len.min() >= 1
    if arrival.process == "closed_loop":
        assert np.all(np.isnan(workload.arrived_at)) and workload.concurrency == arrival.concurrency
    else:
        assert workload.arrived_at[0] == 0.0
        assert np.all(np.diff(workload.arrived_at) >= 0)
    if lengths.dist == "uniform":
        for mean_len, values in (
            (lengths.prompt_len, workload.prompt_len),
            (lengths.output_len, workload.output_len),
        ):
            low, high = uniform_bounds(mean_len, lengths.range_ratio)
            assert low <= values.min() and values.max() <= high


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.floats(-1e6, 1e6, allow_nan=False), st.integers(1, 10**6), st.integers(1, 10**6)
        ),
        min_size=1,
        max_size=40,
    )
)
def test_trace_round_trip_sorted_and_paired(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[float, int, int]]
) -> None:
    path = tmp_path_factory.mktemp("trace") / "t.csv"
    path.write_text(
        "arrival_s,prompt_len,output_len\n" + "".join(f"{t!r},{p},{o}\n" for t, p, o in rows)
    )
    trace = load_trace(path)
    expected = sorted(rows, key=lambda row: row[0])  # Python's sort is stable too
    np.testing.assert_array_equal(trace.arrival_s, [row[0] for row in expected])
    np.testing.assert_array_equal(trace.prompt_len, [row[1] for row in expected])
    np.testing.assert_array_equal(trace.output_len, [row[2] for row in expected])


# --------------------------------------------------------------------------- streaming traces


def test_zero_token_rows_are_skipped_and_counted_not_fatal(tmp_path: Path) -> None:
    # The defect: one zero-length output row rejected the whole trace.
    path = write_csv(tmp_path / "z.csv", "arrival_s,prompt_len,output_len\n"
                     "0,5,1\n1,6,0\n2,0,3\n3,7,2\n")
    with pytest.warns(InputWarning, match=r"skipped 2 row\(s\) .*first at line 3"):
        trace = load_trace(path)
    assert trace.num_skipped == 2
    np.testing.assert_array_equal(trace.prompt_len, [5, 7])
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 3.0])
    only_zero = write_csv(tmp_path / "zz.csv", "arrival_s,prompt_len,output_len\n0,5,0\n")
    with pytest.raises(InputError, match=r"every row has zero .*\(1 skipped\): no requests"):
        load_trace(only_zero)


def test_a_replay_reads_only_the_rows_it_needs(tmp_path: Path) -> None:
    # Row 4 is garbage: a replay of 3 requests never reaches it.
    path = write_csv(tmp_path / "t.csv", "arrival_s,prompt_len,output_len\n"
                     "0,5,1\n1,6,2\n2,7,3\nnot,a,row\n")
    trace = load_trace(path, max_rows=3)
    np.testing.assert_array_equal(trace.output_len, [1, 2, 3])
    workload = build(num_requests=3, trace=str(path),
                     arrival=ArrivalConfig(process="trace"), lengths=LengthsConfig(dist="trace"))
    assert len(workload) == 3
    with pytest.raises(InputError, match="data row 4"):
        load_trace(path)


def test_chunks_give_the_same_trace_and_the_same_row_numbers(tmp_path: Path, monkeypatch) -> None:
    rows = "".join(f"{(i * 7) % 11}.5,{i + 1},{i % 3}\n" for i in range(50))
    path = write_csv(tmp_path / "c.csv", "arrival_s,prompt_len,output_len\n" + rows)
    with pytest.warns(InputWarning):
        whole = load_trace(path)
    monkeypatch.setattr(traces, "CHUNK_ROWS", 4)
    with pytest.warns(InputWarning):
        chunked = load_trace(path)
    for name in ("arrival_s", "prompt_len", "output_len"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(chunked, name))
    assert whole.num_skipped == chunked.num_skipped == 17
    with pytest.warns(InputWarning):
        partial = load_trace(path, max_rows=10)
    assert len(partial) == 10
    bad = write_csv(tmp_path / "b.csv", "arrival_s,prompt_len,output_len\n" + rows + "1,x,1\n")
    with pytest.raises(InputError) as info:
        load_trace(bad)
    assert info.value.line == 52 and "data row 51" in str(info.value)


def test_time_zone_suffixes_are_read_without_numpy_warnings(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "tz.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2023-11-16 18:15:46.6805900+00:00,10,1\n"
                     "2023-11-16T19:15:47.0805900+01:00,10,1\n"
                     "2023-11-16 18:15:48.6805900Z,10,1\n"
                     "2023-11-16 13:15:49.6805900-0500,10,1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace = load_trace(path)
    np.testing.assert_allclose(trace.arrival_s, [0.0, 0.4, 2.0, 3.0], atol=1e-9)


def test_a_large_trace_takes_memory_for_its_arrays_not_its_text(tmp_path: Path) -> None:
    # The defect: a 100 MB trace took 22x its size in memory. Streaming keeps the peak near the
    # arrays (24 bytes a row) plus one chunk of text.
    path = tmp_path / "big.csv"
    rng = np.random.default_rng(0)
    num_rows = 150_000
    table = np.column_stack([np.cumsum(rng.random(num_rows)), rng.integers(1, 4000, num_rows),
                             rng.integers(1, 900, num_rows)])
    with path.open("w") as fh:
        fh.write("arrival_s,prompt_len,output_len\n")
        np.savetxt(fh, table, fmt=["%.6f", "%d", "%d"], delimiter=",")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        trace = load_trace(path)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(trace) == num_rows
    assert peak < 4.0 * size, (peak, size)  # 22x before; about 2.7x now (24 bytes a row)
