"""Saturation throughput: the highest arrival rate a system sustains, from one offline run.

Every request arrives at t = 0, so a backlog waits from the start; the completion rate while it
waits (`pool.steady_throughput`) is what the system gets through when it never runs dry, and no
open-loop arrival process can get more through it in steady state: at a higher rate the queue,
once it has formed, never drains (DESIGN §7 ES3). The catalog and the case study place their
rates relative to this number, draw it on their figures, and count a rate above it as failing
every SLO rule (a finite run there can still pass, because its queue had no time to build).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from simserve.config import ArrivalConfig, Scenario
from simserve.experiments.pool import STEADY_COUNT_KEY, STEADY_KEY

__all__ = ["MIN_WINDOW_SHARE", "Saturation", "measure_saturation", "offline_scenario"]

Summaries = Callable[[Sequence[Scenario]], list[Mapping[str, Any]]]

# NOTE: the window ends at the last admission, so with few requests per seat (e.g. static
# batching with 1,024 seats and 1,000 requests, all admitted at once) it can be empty or short.
# Below this share of the requests the run is repeated with 4x the requests.
MIN_WINDOW_SHARE = 0.25
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Saturation:
    """A system's saturation throughput (`rps`, NaN if no window was found) and the offline
    run it comes from (`num_requests`, completions in the measured window)."""

    rps: float
    num_requests: int
    window_completions: int

    def to_mapping(self) -> dict[str, object]:
        """Plain data for verdicts.json and results.json."""
        return {"rps": self.rps if math.isfinite(self.rps) else None,
                "num_requests": self.num_requests,
                "window_completions": self.window_completions}


def offline_scenario(scenario: Scenario, num_requests: int) -> Scenario:
    """`scenario` with every one of `num_requests` requests arriving at t = 0 and nothing
    excluded (no warm-up or cool-down window)."""
    # A fresh arrival config: the setting of another process (a gamma burstiness) would make
    # two setups' identical offline runs look different to the pool's cache.
    workload = dataclasses.replace(scenario.workload, num_requests=num_requests,
                                   arrival=ArrivalConfig(process="offline"))
    metrics = dataclasses.replace(scenario.metrics, warmup_s=0.0, cooldown_s=0.0)
    return dataclasses.replace(scenario, workload=workload, metrics=metrics)


def measure_saturation(scenario: Scenario, summaries: Summaries, *,
                       num_requests: int) -> Saturation:
    """The saturation throughput of `scenario`'s system and workload (its arrival process is
    replaced by an offline one), run through `summaries` (a `RunPool`'s, so repeats are free)."""
    n = num_requests
    for _ in range(MAX_ATTEMPTS):
        (summary,) = summaries([offline_scenario(scenario, n)])
        rps = summary.get(STEADY_KEY)
        count = int(summary.get(STEADY_COUNT_KEY) or 0)
        if rps is not None and count >= MIN_WINDOW_SHARE * n:
            return Saturation(float(rps), n, count)
        n *= 4
    return Saturation(math.nan, n // 4, count)
