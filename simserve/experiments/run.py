"""One run: scenario -> workload -> simulation -> metrics, and its run directory on disk.

Randomness comes from one `numpy.random.Generator` per purpose, spawned from the scenario seed
(DESIGN §9), so two policies run with the same seed see the same requests (common random
numbers) and the same scenario and seed give byte-identical summaries.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from simserve import __version__
from simserve.config import Scenario, scenario_to_mapping
from simserve.costmodel import envelope_report, envelope_warnings
from simserve.engine.policies import make_policy
from simserve.engine.records import SimulationResult
from simserve.engine.simulation import simulate
from simserve.errors import InputError
from simserve.experiments.atomic import write_dir_atomically
from simserve.metrics import request_metrics, summarize
from simserve.metrics.speculative import spec_decode_summary
from simserve.resolve import ResolvedScenario, resolve
from simserve.workload import Workload, build_workload

__all__ = ["RunOutput", "run_scenario", "seed_streams", "simulate_resolved", "write_run_dir"]

STREAMS = ("arrivals", "lengths", "acceptance", "routing")


def seed_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per purpose, spawned from one seed."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {
        name: np.random.Generator(np.random.PCG64(s))
        for name, s in zip(STREAMS, children, strict=True)
    }


@dataclass(frozen=True)
class RunOutput:
    """Everything one run produced, in memory."""

    resolved: ResolvedScenario
    workload: Workload
    result: SimulationResult
    summary: dict[str, object]


def simulate_resolved(
    resolved: ResolvedScenario, rngs: dict[str, np.random.Generator]
) -> tuple[Workload, SimulationResult]:
    """Build the workload and run the engine for a resolved scenario."""
    scenario = resolved.scenario
    workload = build_workload(scenario.workload, rngs["arrivals"], rngs["lengths"])
    result = simulate(
        workload,
        lambda: make_policy(scenario.engine.policy),
        resolved.cost_model,
        resolved.limits,
        num_replicas=scenario.cluster.replicas,
        router=scenario.cluster.router,
        speculative=scenario.engine.speculative,
        acceptance_rng=rngs["acceptance"],
    )
    return workload, result


def run_scenario(scenario: Scenario) -> RunOutput:
    """Simulate a scenario and summarise it (pure: no files are written)."""
    resolved = resolve(scenario)
    workload, result = simulate_resolved(resolved, seed_streams(scenario.seed))
    warnings = envelope_warnings(resolved.cost_model, result.steps)
    if warnings:
        result = dataclasses.replace(result, warnings=tuple(warnings))
    summary = summarize(result, scenario.metrics)
    summary.update(spec_decode_summary(result))
    summary.update(_run_metadata(resolved))
    envelope = envelope_report(resolved.cost_model, result.steps)
    if envelope:
        summary["envelope"] = envelope
    return RunOutput(resolved, workload, result, summary)


def _run_metadata(resolved: ResolvedScenario) -> dict[str, object]:
    s = resolved.scenario
    return {
        "simserve_version": __version__,
        "scenario": s.name,
        "seed": s.seed,
        "model_id": resolved.model.name,
        "hardware": resolved.gpu.name,
        "tp": s.tp,
        "policy": s.engine.policy,
        "replicas": s.cluster.replicas,
        "num_gpu_blocks": resolved.limits.num_blocks,
        "block_size": resolved.limits.block_size,
        "max_model_len": resolved.limits.max_model_len,
        "cost_model": resolved.cost_model.describe(),
    }


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    names = list(columns)
    rows = zip(*(np.asarray(columns[k]).tolist() for k in names), strict=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)


def step_columns(result: SimulationResult) -> dict[str, np.ndarray]:
    """Per-step table for steps.csv."""
    st = result.steps
    return {
        "step": np.arange(len(st)),
        "replica": st.replica,
        "started_at": st.started_at,
        "duration_s": st.duration_s,
        "num_prefill_tokens": st.num_prefill_tokens,
        "num_decode_tokens": st.num_decode_tokens,
        "num_seqs": st.num_seqs,
        "kv_blocks_used": st.kv_blocks_used,
        "kv_blocks_total": st.kv_blocks_total,
    }


def write_run_dir(
    output: RunOutput,
    out_dir: str | Path,
    *,
    extra_writers: Sequence[Callable[[Path], object]] = (),
) -> Path:
    """Write scenario.yaml, summary.json, requests.csv, steps.csv atomically.

    Files go to a temporary sibling directory that is renamed into place at the end, so a crash
    never leaves a half-written run that looks complete. An existing simserve run directory at
    `out_dir` is replaced; any other existing path is refused. Each of `extra_writers` (e.g.
    figures, a trace) is called with the temporary directory before the rename, so its files
    are part of the same atomic write.
    """
    out = Path(out_dir)
    replaceable = out.is_dir() and ((out / "summary.json").exists() or not any(out.iterdir()))
    if out.exists() and not replaceable:
        raise InputError(
            "exists and is not a simserve run directory; refusing to overwrite",
            field="--out",
            source=str(out),
        )

    def write(tmp: Path) -> None:
        scenario_map = scenario_to_mapping(output.resolved.scenario)
        scenario_map = {"simserve_version": __version__, **scenario_map}
        (tmp / "scenario.yaml").write_text(yaml.safe_dump(scenario_map, sort_keys=False))
        (tmp / "summary.json").write_text(json.dumps(output.summary, indent=2) + "\n")
        _write_csv(
            tmp / "requests.csv", request_metrics(output.result, output.resolved.scenario.metrics)
        )
        _write_csv(tmp / "steps.csv", step_columns(output.result))
        for writer in extra_writers:
            writer(tmp)

    return write_dir_atomically(out, write)
