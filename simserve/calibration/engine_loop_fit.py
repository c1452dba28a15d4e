"""Fit the engine loop's CPU terms (`simserve/costmodel/engine_loop.py`) on real serving runs only.

The kernel tables price the GPU; what a served engine adds per step is read from real runs by
replaying them through the kernel model and adjusting the loop terms until the replay's
statistics match the measured ones: p50 and p90 TTFT (the prefill path and the queue, whose
tail says how close the run is to saturation) and mean TPOT (the decode pace), as relative
(log) errors, by bounded least squares
(`scipy.optimize.least_squares`, terms >= 0). Per engine generation:

- V0: DistServe's vLLM runs of OPT-13B on one A100 (prefill-first, vLLM behind Ray: the engine
  and its worker are Ray actors, so every step is a remote call carrying every running
  sequence's metadata). Fitted on the runs below the knee (1, 2, 3 req/s); the 4 req/s run is
  held out (it checks the knee). Terms: per step, per running sequence, per scheduled token.
- V1: the vLLM 0.19 runs on RTX PRO 6000 (Llama-3.1-8B TP1, Qwen3-32B TP2; chunked prefill).
  Terms: per step (serial) and per running sequence (overlapped with the GPU). V1 prepares
  inputs with vectorised array code, so no per-token term is fitted (0). Fitted on the TP1 run
  only, where the kernel tables price everything but the loop; the TP2 run is held out: its
  all-reduces took about 3x what the all-reduce table measured (its decode steps' extra grows
  with the step's all-reduces, `simserve/calibration/v1_steps.py`, REPORT §7.7), a property of
  that server's GPU link, not of the engine loop, which a loop term would carry to every
  deployment.

Leave-one-run-out: each run is predicted by terms fitted on the others (V0: the other two runs
below the knee; V1: the other run). The shipped values (`engine_loop.yaml`, written by
`simserve calibrate engine-loop`) use all fit runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import least_squares

from simserve.calibration.online import vllm_traces
from simserve.calibration.paths import VALIDATION_SCENARIOS
from simserve.calibration.replay import DEFAULT_SCENARIO, ReplayResult, replay_trace, trace_rate
from simserve.calibration.served_v1 import V1_RUNS, v1_runs
from simserve.costmodel.engine_loop import loop_terms_path
from simserve.costmodel.kernel_tables import kernels_dir
from simserve.formatting import fmt_number

__all__ = [
    "FIT_METRICS",
    "LoopFit",
    "LoopRun",
    "fit_loop",
    "loop_runs",
    "loro_pool",
    "replay_run",
    "write_loop_terms",
]

FIT_METRICS = ("TTFT p50", "TTFT p90", "TPOT mean")
TERMS = {"v0": ("per_step_us", "per_seq_us", "per_token_us"),
         "v1": ("per_step_us", "per_seq_us")}
# Coarse grid the least-squares search starts from (the replays' statistics are piecewise
# constant in the terms, so a local search needs a good start), and each term's scale (us).
_GRID = {
    "v0": {"per_step_us": (0.0, 3000.0, 6000.0), "per_seq_us": (400.0, 600.0, 800.0),
           "per_token_us": (15.0, 30.0, 45.0)},
    "v1": {"per_step_us": (0.0, 3000.0, 6000.0, 10000.0), "per_seq_us": (0.0, 150.0, 300.0)},
}
_SCALE = {"per_step_us": 1000.0, "per_seq_us": 100.0, "per_token_us": 10.0}
V1_SCENARIOS_DIR = VALIDATION_SCENARIOS
# The V0 replays price with the kernels, not the shipped OPT-13B profile or its online term.
V0_OVERRIDES = ("cost_model.kind=kernels", "cost_model.profile=null",
                "cost_model.serving_per_seq_ms=0", "engine.version=v0")
# V1 runs in no shipped fit, and why (REPORT §7.7 gives the step-level evidence).
# NOTE: a loop term fitted on this run would price its slow PCIe all-reduces into every V1
# deployment, including TP1 and NVLink ones where the all-reduce tables apply.
V1_HELD_OUT = {
    "Qwen3-32B": "its TP2 all-reduces ran about 3x slower than the all-reduce table measured",
}


@dataclass(frozen=True)
class LoopRun:
    """One real run the loop terms are fitted or checked on."""

    label: str
    version: str
    trace: Path
    scenario: Path
    overrides: tuple[str, ...]
    fit: bool  # used to fit (else held out: `held_out` says why)
    held_out: str = ""


def loop_runs() -> list[LoopRun]:
    """Every real run of both engine generations."""
    runs = [LoopRun(f"OPT-13B A100 {fmt_number(trace_rate(t))} req/s", "v0", t, DEFAULT_SCENARIO,
                    V0_OVERRIDES, trace_rate(t) < 4,
                    "" if trace_rate(t) < 4 else "beyond the knee (it checks the knee)")
            for t in vllm_traces()]
    for run in v1_runs():
        why = V1_HELD_OUT.get(run.name, "")
        runs.append(LoopRun(f"{run.name} RTX PRO 6000", "v1", run.csv_path,
                            V1_SCENARIOS_DIR / V1_RUNS[run.name], (), not why, why))
    return runs


def loro_pool(runs: Sequence[LoopRun], version: str) -> list[LoopRun]:
    """The runs leave-one-run-out rotates over: V0's runs below the knee; both V1 runs (the
    held-out TP2 run too: predicting each from the other shows how far apart they are)."""
    return [r for r in runs if r.version == version and (r.fit or version == "v1")]


def _term_overrides(version: str, values: dict[str, float]) -> list[str]:
    return [f"cost_model.loop_{k}={v:.6f}" for k, v in values.items()] + [
        f"engine.version={version}"]


def replay_run(run: LoopRun, values: dict[str, float] | None = None) -> ReplayResult:
    """Replay `run` with loop terms `values` (None: the shipped ones)."""
    extra = _term_overrides(run.version, values) if values is not None else []
    return replay_trace(run.trace, scenario=run.scenario,
                        overrides=[*run.overrides, *extra])


@dataclass(frozen=True)
class LoopFit:
    """Fitted terms of one engine generation and the replays at them."""

    version: str
    terms: dict[str, float]
    fitted_on: tuple[str, ...]
    replays: dict[str, ReplayResult] = field(default_factory=dict)
    num_evaluations: int = 0


def fit_loop(version: str, runs: Sequence[LoopRun]) -> LoopFit:
    """Least-squares loop terms of `version` on `runs` (log errors of FIT_METRICS)."""
    names = TERMS[version]
    evaluations = 0

    def residuals(x: np.ndarray) -> np.ndarray:
        nonlocal evaluations
        evaluations += 1
        values = {n: float(v) * _SCALE[n] for n, v in zip(names, x, strict=True)}
        out = []
        for run in runs:
            r = replay_run(run, values)
            out += [np.log(r.simulated[m] / r.measured[m]) for m in FIT_METRICS]
        return np.asarray(out)

    grid = np.array(np.meshgrid(*(np.asarray(_GRID[version][n]) / _SCALE[n] for n in names)))
    starts = grid.reshape(len(names), -1).T
    x0 = min(starts, key=lambda x: float(np.sum(residuals(x) ** 2)))
    sol = least_squares(residuals, x0, bounds=(0.0, np.inf), diff_step=0.05, xtol=1e-3,
                        ftol=1e-4, max_nfev=40)
    terms = {n: round(float(v) * _SCALE[n], 1) for n, v in zip(names, sol.x, strict=True)}
    replays = {run.label: replay_run(run, terms) for run in runs}
    return LoopFit(version, terms, tuple(r.label for r in runs), replays, evaluations)


def _fitted_range(fit: LoopFit) -> dict[str, int]:
    """The largest batch and step of the fit's replays: past them runs warn that the loop's
    per-sequence and per-token terms are extrapolated."""
    steps = [r.output.result.steps for r in fit.replays.values()]
    if not steps:
        return {}
    return {
        "fitted_max_seqs": max(int(np.max(s.num_seqs)) for s in steps),
        "fitted_max_tokens": max(int(np.max(np.asarray(s.num_prefill_tokens)
                                            + np.asarray(s.num_decode_tokens))) for s in steps),
    }


def write_loop_terms(fits: Sequence[LoopFit], path: Path | None = None) -> Path:
    """The shipped loop terms (one entry per engine generation)."""
    # NOTE: relative to the working directory (a checkout's root: the repository's
    # calibration/kernels/), never into an installed package.
    path = path or Path("calibration") / loop_terms_path().relative_to(kernels_dir().parent)
    data = {
        "format": "simserve-engine-loop/1",
        "note": "CPU time of a vLLM engine step around its forward pass, fitted on real "
                "serving runs only (simserve/calibration/engine_loop_fit.py; REPORT.md §7)",
        "versions": {f.version: {**{k: f.terms.get(k, 0.0) for k in
                                    ("per_step_us", "per_seq_us", "per_token_us")},
                                 "fitted_on": ", ".join(f.fitted_on),
                                 **_fitted_range(f)} for f in fits},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=100, allow_unicode=True),
                    encoding="utf-8")
    return path
