"""Fit one serving-loop term (time outside the forward pass) on one served run.

Offline step profiles time forward passes; a served engine adds work on every step
(`simserve/costmodel/serving.py`): a scheduler pass and an engine-to-worker call
(`cost_model.serving_step_ms`), and per running sequence the input preparation, sampling,
detokenisation and output streaming (`cost_model.serving_per_seq_ms`). One term per engine is
fitted on ONE run: the value for which the replay's median TPOT equals the measured one. Median
TPOT is the statistic because it prices the decode step itself; means and tails also carry
queueing, which the other runs are kept back to check (cross-validation in
`simserve/calibration/disaggregated.py` and `simserve/calibration/online.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from scipy.optimize import brentq

from simserve.calibration.replay import ReplayResult, replay_trace
from simserve.errors import InputError
from simserve.formatting import fmt_number

__all__ = ["FIT_STATISTIC", "SERVING_TERM_MAX_MS", "ServingTerm", "fit_serving_term",
           "replay_with_serving"]

ServingTerm = Literal["serving_step_ms", "serving_per_seq_ms"]
FIT_STATISTIC = "TPOT p50"
# NOTE: brackets, not priors: tens of ms per step, or several ms per sequence per step, would
# dwarf the forward pass of any model on these GPUs.
SERVING_TERM_MAX_MS: dict[str, float] = {"serving_step_ms": 50.0, "serving_per_seq_ms": 5.0}


def replay_with_serving(
    trace: str | Path, scenario: str | Path, term: ServingTerm, value_ms: float,
    overrides: Sequence[str] = (),
) -> ReplayResult:
    """Replay `trace` through `scenario` with the serving term `term` set to `value_ms`."""
    return replay_trace(
        trace, scenario=scenario, overrides=[f"cost_model.{term}={value_ms}", *overrides],
    )


def fit_serving_term(
    trace: str | Path, scenario: str | Path, term: ServingTerm, *, xtol_ms: float | None = None,
    overrides: Sequence[str] = (),
) -> float:
    """The value (ms) of `term` whose replay of `trace` matches its measured median TPOT.

    The replay's median TPOT grows monotonically with either term, so the root is found by
    Brent's method on [0, SERVING_TERM_MAX_MS[term]] to `xtol_ms` (default: 1/5000 of that
    bracket); a run already slower in simulation than measured without any overhead fits 0.
    """
    upper = SERVING_TERM_MAX_MS[term]
    xtol_ms = upper / 5000 if xtol_ms is None else xtol_ms

    def error(value_ms: float) -> float:
        run = replay_with_serving(trace, scenario, term, value_ms, overrides)
        return run.simulated[FIT_STATISTIC] / run.measured[FIT_STATISTIC] - 1.0

    if error(0.0) >= 0:
        return 0.0
    if error(upper) < 0:
        raise InputError(
            f"even {term}={fmt_number(upper)} does not reach the measured {FIT_STATISTIC}; the "
            "scenario does not describe this run",
            source=str(trace),
        )
    return float(brentq(error, 0.0, upper, xtol=xtol_ms))
