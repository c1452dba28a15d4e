"""Statistics over seeds (log-scale intervals, paired ratios) and the one number formatter."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.experiments.replications import paired_log_interval, seed_estimate
from simserve.formatting import fmt_interval, fmt_number, fmt_ratio, key_label

POSITIVE = st.floats(min_value=1e-6, max_value=1e7, allow_nan=False)
NON_NEGATIVE = st.one_of(st.just(0.0), POSITIVE)


def test_log_scale_interval_of_a_positive_quantity():
    found = seed_estimate([100.0, 200.0, 400.0, 100.0, 200.0])
    logs = np.log([100.0, 200.0, 400.0, 100.0, 200.0])
    assert found.estimator == "geometric mean"
    assert found.value == pytest.approx(math.exp(logs.mean()))
    # t(0.975, 4) = 2.776445
    half = 2.776445 * logs.std(ddof=1) / math.sqrt(5)
    assert found.interval == pytest.approx((math.exp(logs.mean() - half),
                                            math.exp(logs.mean() + half)), rel=1e-6)


def test_zeros_fall_back_to_a_mean_interval_cut_at_the_bounds():
    found = seed_estimate([0.0, 0.0, 0.0, 0.0, 12.0])
    assert found.estimator == "mean" and found.value == pytest.approx(2.4)
    assert found.low == 0.0 and found.high > 2.4
    fraction = seed_estimate([1.0, 1.0, 0.98, 1.0, 1.0], upper=1.0)
    assert fraction.high <= 1.0 and fraction.low <= fraction.value <= 1.0
    assert seed_estimate([3.0]).interval is None
    assert seed_estimate([3.0, None]) is None and seed_estimate([]) is None
    with pytest.raises(ValueError, match="non-negative"):
        seed_estimate([1.0, -1.0])


@settings(max_examples=200, deadline=None)
@given(st.lists(NON_NEGATIVE, min_size=2, max_size=8))
def test_intervals_never_leave_the_quantity_s_range(values):
    found = seed_estimate(values, upper=None)
    assert found is not None
    assert 0.0 <= found.low <= found.high
    assert found.low <= found.value * (1 + 1e-9) and found.value <= found.high * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(POSITIVE, POSITIVE), min_size=2, max_size=8))
def test_the_paired_interval_is_centred_on_the_ratio_of_geometric_means(pairs):
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    centre, low, high = paired_log_interval([x / y for x, y in pairs])
    gm = seed_estimate(a).value / seed_estimate(b).value
    assert centre == pytest.approx(gm, rel=1e-9)
    assert 0 < low <= centre * (1 + 1e-12) and centre <= high * (1 + 1e-12)


def test_paired_interval_needs_two_valid_ratios():
    assert paired_log_interval([2.0]) is None
    assert paired_log_interval([2.0, 0.0]) is None
    assert paired_log_interval([2.0, None]) is None
    assert paired_log_interval([2.0, 2.0]) == pytest.approx((2.0, 2.0, 2.0))


def test_one_formatter_for_numbers_ratios_intervals_and_keys():
    assert fmt_number(123.44, "ms") == "123.4 ms"  # the same in the report and on a figure
    assert fmt_number(4938.2, "ms") == "4,938 ms"
    assert fmt_number(12345.6) == "12,346"
    assert fmt_number(0.012345) == "0.01235"
    assert fmt_number(21.0) == "21" and fmt_number(0) == "0"
    assert fmt_number(None) == "n/a" and fmt_number(math.nan) == "n/a"
    assert fmt_number("inf") == "unbounded" and fmt_number(math.inf) == "unbounded"
    assert "e" not in fmt_number(1.052e4) and fmt_number(1.052e4) == "10,520"
    assert fmt_ratio(1.8765) == "1.88x" and fmt_ratio(None) == "n/a"
    assert fmt_interval(3264.0, 4151.2, "ms") == "95% CI 3,264–4,151 ms"
    assert fmt_interval(1.8, 1.95, ratio=True) == "95% CI 1.80x–1.95x"
    assert key_label("p99_tbt_ms") == "P99 TBT (ms)"
    assert key_label("median_scheduling_delay_ms") == "median scheduling delay (ms)"
    assert key_label("output_throughput") == "output throughput (tok/s)"
    assert key_label("p99_ttft_ms", unit=False) == "P99 TTFT"
