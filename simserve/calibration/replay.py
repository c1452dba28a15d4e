"""End-to-end validation: replay a real serving run's arrivals and lengths through the simulator
and put the measured and simulated TTFT/TPOT side by side.

The ground-truth files (DistServe's vLLM runs of OPT-13B on one A100-80GB) hold per request the
arrival time, prompt and output length and the measured `ttft_ms`, `tpot_ms`; the simulator
replays exactly those requests (`workload.trace`, `arrival.process: trace`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simserve.calibration.paths import VALIDATION_SCENARIOS
from simserve.calibration.served_run import read_run_columns
from simserve.config import load_scenario
from simserve.experiments.run import RunOutput, run_scenario

__all__ = [
    "REPLAY_METRICS",
    "ReplayResult",
    "measured_stats",
    "replay_trace",
    "tpot_ratio_per_request",
    "trace_rate",
]

DEFAULT_SCENARIO = VALIDATION_SCENARIOS / "opt13b-a100-vllm.yaml"

# (label, measured column, statistic, simulated summary key)
REPLAY_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("TTFT p50", "ttft_ms", "p50", "median_ttft_ms"),
    ("TTFT p90", "ttft_ms", "p90", "p90_ttft_ms"),
    ("TTFT mean", "ttft_ms", "mean", "mean_ttft_ms"),
    ("TPOT p50", "tpot_ms", "p50", "median_tpot_ms"),
    ("TPOT mean", "tpot_ms", "mean", "mean_tpot_ms"),
)


@dataclass(frozen=True)
class ReplayResult:
    """Measured and simulated statistics (ms) of one replayed run."""

    trace: str
    profile: str
    num_requests: int
    measured: dict[str, float]
    simulated: dict[str, float]
    output: RunOutput

    def error_pct(self, label: str) -> float:
        """Relative error of the simulation, in percent of the measured value."""
        return 100.0 * (self.simulated[label] / self.measured[label] - 1.0)


def trace_rate(path: str | Path) -> float:
    """The request rate in a ground-truth file name `<engine>-...-<N>-<rate>.csv`."""
    return float(Path(path).stem.split("-")[-1])


def measured_stats(path: str | Path) -> tuple[int, dict[str, float]]:
    """Row count and the measured TTFT/TPOT statistics of a ground-truth CSV."""
    values = read_run_columns(path, ("ttft_ms", "tpot_ms"),
                              "a ground-truth file has measured ttft_ms and tpot_ms")
    stats = {}
    for label, col, stat, _ in REPLAY_METRICS:
        v = values[col]
        stats[label] = float(np.mean(v) if stat == "mean" else np.percentile(v, int(stat[1:])))
    return int(values["ttft_ms"].size), stats


def replay_trace(
    trace: str | Path,
    *,
    profile: str | None = None,
    scenario: str | Path = DEFAULT_SCENARIO,
    overrides: list[str] | None = None,
) -> ReplayResult:
    """Replay one ground-truth run through the validation scenario (optionally another profile)."""
    num_requests, measured = measured_stats(trace)
    items = [f"workload.trace={Path(trace).resolve()}", f"workload.num_requests={num_requests}"]
    if profile is not None:
        items.append(f"cost_model.profile={profile}")
    sc = load_scenario(scenario, items + list(overrides or []))
    output = run_scenario(sc)
    simulated = {label: float(output.summary[key]) for label, _, _, key in REPLAY_METRICS}
    return ReplayResult(str(trace), sc.cost_model.profile or sc.cost_model.kind, num_requests,
                        measured, simulated, output)


def tpot_ratio_per_request(run: ReplayResult) -> tuple[np.ndarray, np.ndarray]:
    """Simulated over measured TPOT of every request with more than one output token, and
    its arrival time (s), in trace order.

    TPOT is vLLM's: (finish - first token) / (output tokens - 1). A replay keeps the trace's
    requests in order, so row i of the trace is request i of the simulation.
    """
    values = read_run_columns(run.trace, ("arrival_s", "output_len", "tpot_ms"),
                              "a ground-truth file has arrival_s, output_len and tpot_ms")
    r = run.output.result
    if r.num_requests != values["tpot_ms"].size or np.any(r.output_len != values["output_len"]):
        raise ValueError(f"{run.trace}: the simulation does not hold the trace's requests in order")
    keep = (r.output_len > 1) & (values["tpot_ms"] > 0)
    simulated_ms = 1e3 * (r.finished_at - r.first_token_at)[keep] / (r.output_len[keep] - 1)
    return simulated_ms / values["tpot_ms"][keep], values["arrival_s"][keep]
