"""Fit the serving loop's per-step time (outside the forward pass) on one served run.

Offline step profiles time forward passes; a served engine adds a scheduler pass and an
engine-to-worker call on every step (`cost_model.serving_step_ms`, see
`simserve/costmodel/serving.py`). One number per engine is fitted on ONE run: the value for
which the replay's median TPOT equals the measured one. Median TPOT is the statistic because
it prices the decode step itself; means and tails also carry queueing, which the other runs
are kept back to check (cross-validation in `simserve/calibration/disaggregated.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scipy.optimize import brentq

from simserve.calibration.replay import ReplayResult, replay_trace
from simserve.errors import InputError

__all__ = ["FIT_STATISTIC", "MAX_SERVING_STEP_MS", "fit_serving_step_ms", "replay_with_serving"]

FIT_STATISTIC = "TPOT p50"
# NOTE: a bracket, not a prior: a per-step loop overhead of tens of ms would dwarf the forward
# pass of any model on these GPUs.
MAX_SERVING_STEP_MS = 50.0


def replay_with_serving(
    trace: str | Path, scenario: str | Path, serving_step_ms: float,
    overrides: Sequence[str] = (),
) -> ReplayResult:
    """Replay `trace` through `scenario` with the given per-step serving time (ms)."""
    return replay_trace(
        trace,
        scenario=scenario,
        overrides=[f"cost_model.serving_step_ms={serving_step_ms}", *overrides],
    )


def fit_serving_step_ms(
    trace: str | Path, scenario: str | Path, *, xtol_ms: float = 0.01
) -> float:
    """The per-step serving time (ms) whose replay of `trace` matches its measured median TPOT.

    The replay's median TPOT grows monotonically with the per-step time, so the root is found
    by Brent's method on [0, MAX_SERVING_STEP_MS]; a run already slower in simulation than
    measured without any overhead fits 0.
    """

    def error(step_ms: float) -> float:
        run = replay_with_serving(trace, scenario, step_ms)
        return run.simulated[FIT_STATISTIC] / run.measured[FIT_STATISTIC] - 1.0

    low = error(0.0)
    if low >= 0:
        return 0.0
    if error(MAX_SERVING_STEP_MS) < 0:
        raise InputError(
            f"even {MAX_SERVING_STEP_MS:g} ms of serving time per step does not reach the "
            f"measured {FIT_STATISTIC}; the scenario does not describe this run",
            source=str(trace),
        )
    return float(brentq(error, 0.0, MAX_SERVING_STEP_MS, xtol=xtol_ms))
