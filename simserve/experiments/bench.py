"""`simserve bench`: simulated requests and steps per wall-clock second, and peak memory.

Phases are timed separately (workload build, engine, metrics), each once, in this process.
The engine's counters say where its time goes: steps simulated, SimPy events waited for (one
per step, or one per fast-forwarded run of identical decode steps) and their ratio.
"""

from __future__ import annotations

import cProfile
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from simserve.config import Scenario
from simserve.experiments.run import build_scenario_workload, seed_streams, simulate_resolved
from simserve.formatting import fmt_number
from simserve.metrics import summarize
from simserve.resolve import resolve

__all__ = ["BenchResult", "run_bench"]


@dataclass(frozen=True)
class BenchResult:
    num_requests: int
    num_steps: int
    num_events: int
    build_s: float
    simulate_s: float
    metrics_s: float
    peak_rss_mib: float
    completed: int
    fast_forward: bool

    def format(self) -> str:
        sim = self.simulate_s or float("nan")
        total = self.build_s + self.simulate_s + self.metrics_s
        ff = "on" if self.fast_forward else "off"
        return "\n".join(
            [
                f"requests simulated:          {self.num_requests} ({self.completed} completed)",
                f"engine steps:                {self.num_steps}",
                f"engine events:               {self.num_events} (fast-forward {ff}: "
                f"{fmt_number(self.num_steps / max(self.num_events, 1))} steps per event)",
                f"workload build (s):          {fmt_number(self.build_s)}",
                f"simulation (s):              {fmt_number(self.simulate_s)}",
                f"metrics (s):                 {fmt_number(self.metrics_s)}",
                f"simulated requests/s:        {fmt_number(self.num_requests / sim)} (engine only)",
                f"simulated requests/s:        {fmt_number(self.num_requests / total)} "
                "(end to end)",
                f"steps/s:                     {fmt_number(self.num_steps / sim)}",
                f"events/s:                    {fmt_number(self.num_events / sim)}",
                f"peak RSS (MiB):              {fmt_number(self.peak_rss_mib)}",
            ]
        )


def run_bench(scenario: Scenario, *, fast_forward: bool = True,
              profile_to: str | Path | None = None) -> BenchResult:
    """Time one run of `scenario`, phase by phase, in this process. With `profile_to`, the
    engine phase runs under cProfile and its statistics are written there (pstats format:
    `python -m pstats FILE`, or snakeviz)."""
    resolved = resolve(scenario)
    t0 = time.perf_counter()
    build_scenario_workload(resolved, seed_streams(scenario.seed))
    t1 = time.perf_counter()
    profiler = cProfile.Profile() if profile_to is not None else None
    if profiler is not None:
        profiler.enable()
    workload, result = simulate_resolved(resolved, seed_streams(scenario.seed),
                                         fast_forward=fast_forward,
                                         show_progress=profiler is None)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(profile_to))
    t2 = time.perf_counter()
    summary = summarize(result, scenario.metrics)
    t3 = time.perf_counter()
    # ru_maxrss is in KiB on Linux.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    build_s = t1 - t0
    return BenchResult(
        num_requests=len(workload),
        num_steps=len(result.steps),
        num_events=result.num_step_events,
        build_s=build_s,
        simulate_s=max(t2 - t1 - build_s, 0.0),  # simulate_resolved rebuilds the workload
        metrics_s=t3 - t2,
        peak_rss_mib=peak_mib,
        completed=int(summary["completed"]),
        fast_forward=fast_forward,
    )
