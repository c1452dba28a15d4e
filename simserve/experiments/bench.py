"""`simserve bench`: simulated requests and steps per wall-clock second, and peak memory."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

from simserve.config import Scenario
from simserve.experiments.run import seed_streams, simulate_resolved
from simserve.metrics import summarize
from simserve.resolve import resolve
from simserve.workload import build_workload

__all__ = ["BenchResult", "run_bench"]


@dataclass(frozen=True)
class BenchResult:
    num_requests: int
    num_steps: int
    build_s: float
    simulate_s: float
    metrics_s: float
    peak_rss_mib: float
    completed: int

    def format(self) -> str:
        sim = self.simulate_s or float("nan")
        total = self.build_s + self.simulate_s + self.metrics_s
        return "\n".join(
            [
                f"requests simulated:          {self.num_requests} ({self.completed} completed)",
                f"engine steps:                {self.num_steps}",
                f"workload build (s):          {self.build_s:.3f}",
                f"simulation (s):              {self.simulate_s:.3f}",
                f"metrics (s):                 {self.metrics_s:.3f}",
                f"simulated requests/s:        {self.num_requests / sim:,.0f} (engine only)",
                f"simulated requests/s:        {self.num_requests / total:,.0f} (end to end)",
                f"steps/s:                     {self.num_steps / sim:,.0f}",
                f"peak RSS (MiB):              {self.peak_rss_mib:.0f}",
            ]
        )


def run_bench(scenario: Scenario) -> BenchResult:
    """Time one run of `scenario`, phase by phase, in this process."""
    resolved = resolve(scenario)
    t0 = time.perf_counter()
    rngs = seed_streams(scenario.seed)
    build_workload(scenario.workload, rngs["arrivals"], rngs["lengths"])
    t1 = time.perf_counter()
    workload, result = simulate_resolved(resolved, seed_streams(scenario.seed))
    t2 = time.perf_counter()
    summary = summarize(result, scenario.metrics)
    t3 = time.perf_counter()
    # ru_maxrss is in KiB on Linux.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    build_s = t1 - t0
    return BenchResult(
        num_requests=len(workload),
        num_steps=len(result.steps),
        build_s=build_s,
        simulate_s=max(t2 - t1 - build_s, 0.0),  # simulate_resolved rebuilds the workload
        metrics_s=t3 - t2,
        peak_rss_mib=peak_mib,
        completed=int(summary["completed"]),
    )
