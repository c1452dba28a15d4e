"""Request arrival times: synthetic processes (as `vllm bench serve` draws them) and trace replay.

Every function takes the generator it draws from, so arrivals depend only on the arrival stream
of the scenario seed: two policies compared on one seed see the same arrival times.
"""

from __future__ import annotations

import numpy as np

from simserve.config import ArrivalConfig
from simserve.errors import InputError

__all__ = ["replay_arrivals", "sample_arrivals"]


def sample_arrivals(
    config: ArrivalConfig, num_requests: int, rng: np.random.Generator
) -> np.ndarray:
    """Arrival instants (s) of a synthetic process, first at 0.0, so runs start without idling.

    `closed_loop` gives all-NaN arrivals: its clients issue a request when the previous one
    finishes, so times are decided by the engine. `trace` arrivals come from `replay_arrivals`.
    """
    process = config.process
    if process == "closed_loop":
        return np.full(num_requests, np.nan)
    if process == "offline":
        # NOTE: vLLM `--request-rate inf`: every request is sent at once.
        return np.zeros(num_requests)
    if process == "trace":
        raise ValueError("trace arrivals need the trace: use replay_arrivals()")
    assert config.rate is not None  # ArrivalConfig requires a rate for these processes
    rate = float(config.rate)
    if process == "constant":
        # arange/rate rather than a cumulative sum: every gap is 1/rate with no rounding drift.
        return np.arange(num_requests, dtype=np.float64) / rate
    if process == "poisson":
        gaps_s = rng.exponential(scale=1.0 / rate, size=num_requests - 1)
    elif process == "gamma":
        # NOTE: vLLM `bench serve` draws each gap from gamma(shape=burstiness,
        # scale=1/(rate*burstiness)): mean 1/rate, cv^2 = 1/burstiness (1 = Poisson).
        gaps_s = rng.gamma(
            shape=config.burstiness, scale=1.0 / (rate * config.burstiness), size=num_requests - 1
        )
    else:
        raise ValueError(f"unknown arrival process {process!r}")
    # NOTE: as vLLM's `get_request`, the first request goes out at once and each gap follows
    # it. Newer vLLM also rescales the cumulative times so the last lands on num/rate; we do not:
    # that rescaling changes the gap distribution (its mean and cv) which tests and reports use.
    return np.concatenate(([0.0], np.cumsum(gaps_s)))


def replay_arrivals(
    arrival_s: np.ndarray, num_requests: int, rate: float | None, *, source: str = "trace"
) -> np.ndarray:
    """The first `num_requests` trace times shifted to start at 0, optionally time-scaled.

    With `rate` set, times are multiplied by one factor so the mean rate
    (num_requests - 1) / (last - first) equals `rate`: the trace keeps its burst shape at the
    load the scenario asks for.
    """
    if num_requests > arrival_s.size:
        raise InputError(
            f"is {num_requests} but the trace {source} has only {arrival_s.size} rows",
            field="workload.num_requests",
        )
    arrived_at = np.asarray(arrival_s[:num_requests], dtype=np.float64)
    arrived_at = arrived_at - arrived_at[0]
    if rate is None or num_requests < 2:
        return arrived_at
    span_s = float(arrived_at[-1])
    if span_s <= 0.0:
        raise InputError(
            f"cannot scale the trace {source} to a rate: its first {num_requests} rows all arrive "
            "at the same time (set arrival.rate to null to replay them as they are)",
            field="workload.arrival.rate",
        )
    return arrived_at * ((num_requests - 1) / rate / span_s)
