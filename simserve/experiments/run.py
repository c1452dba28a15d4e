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

# Imported now, before any command claims its output directory: numpy loads numpy.random
# lazily, and a SIGTERM whose handler raises while that extension module initialises is lost
# (seen in 1 of 8 runs killed at once; the run then finished and wrote its output).
import numpy.random
import yaml

from simserve import __version__
from simserve.config import Scenario, scenario_to_mapping
from simserve.costmodel import CostModel, envelope_report, envelope_warnings
from simserve.engine.queues import FCFSQueue
from simserve.engine.records import SimulationResult, StepRecords
from simserve.engine.simulation import simulate
from simserve.errors import InputError
from simserve.experiments.atomic import OutputKind, write_dir_atomically
from simserve.metrics.energy import PoolUse, cost_summary
from simserve.metrics.groups import group_requests
from simserve.metrics.requests import request_table
from simserve.metrics.speculative import spec_decode_summary
from simserve.metrics.summary import summarize_table
from simserve.pricing import gpu_rates
from simserve.progress import progress_bar
from simserve.resolve import ResolvedPool, ResolvedScenario, resolve
from simserve.workload import Workload, build_workload
from simserve.workload.classes import ClassLabels

__all__ = [
    "RUN_DIR",
    "RunOutput",
    "build_scenario_workload",
    "run_dir_writer",
    "run_scenario",
    "seed_streams",
    "simulate_resolved",
    "write_run_dir",
]

# NOTE: a stream is only ever appended: SeedSequence children are numbered, so the streams
# before it stay the same and older runs reproduce.
STREAMS = ("arrivals", "lengths", "acceptance", "routing", "classes", "prefix", "sessions")


def seed_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per purpose, spawned from one seed."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {
        name: np.random.Generator(np.random.PCG64(s))
        for name, s in zip(STREAMS, children, strict=True)
    }


@dataclass(frozen=True)
class RunOutput:
    """Everything one run produced, in memory: the records, the per-request table
    (`requests.csv`), each request's Etalon deadline-miss rate, and the summary."""

    resolved: ResolvedScenario
    workload: Workload
    result: SimulationResult
    summary: dict[str, object]
    requests: dict[str, np.ndarray]
    deadline_miss_rate: np.ndarray


def simulate_resolved(
    resolved: ResolvedScenario,
    rngs: dict[str, np.random.Generator],
    *,
    fast_forward: bool = True,
    show_progress: bool = False,
) -> tuple[Workload, SimulationResult]:
    """Build the workload and run the engine for a resolved scenario (`fast_forward=False`
    waits for every step as its own event: slower, same records). `show_progress`: a bar of
    the requests sent, on a terminal, for runs longer than a couple of seconds."""
    scenario = resolved.scenario
    workload = build_scenario_workload(resolved, rngs)
    _check_block_ids(workload, scenario)
    bar = progress_bar(len(workload), desc="simulating", unit="req", delay_s=2.0, leave=False,
                       enabled=None if show_progress else False)
    sent = 0

    def advance(num_sent: int) -> None:
        nonlocal sent
        bar.update(num_sent - sent)
        sent = num_sent

    try:
        result = simulate(workload, resolved.engine_setup, acceptance_rng=rngs["acceptance"],
                          fast_forward=fast_forward, progress=advance if show_progress else None)
    finally:
        bar.close()
    return workload, result


def build_scenario_workload(resolved: ResolvedScenario,
                            rngs: dict[str, np.random.Generator]) -> Workload:
    """The workload of a resolved scenario, each purpose drawing from its own stream."""
    scenario = resolved.scenario
    return build_workload(scenario.workload, rngs["arrivals"], rngs["lengths"], rngs["classes"],
                          scenario.metrics, prefix_rng=rngs["prefix"],
                          session_rng=rngs["sessions"],
                          max_model_len=resolved.limits.max_model_len)


def _check_block_ids(workload: Workload, scenario: Scenario) -> None:
    """A trace's prompt block ids name whole KV blocks only if the engine's block size divides
    their block (a one-line error naming the field otherwise)."""
    if workload.content is not None:
        try:
            workload.content.check(len(workload), scenario.engine.block_size)
        except ValueError as exc:
            raise InputError(f"{exc}: the trace's block ids need whole KV blocks",
                             field="engine.block_size") from None


def _pool_steps(
    resolved: ResolvedScenario, steps: StepRecords
) -> list[tuple[str, CostModel, StepRecords]]:
    """Each pool's name (role or replica group), cost model and steps (instances are
    numbered pool by pool)."""
    if len(resolved.pools) == 1:
        return [(resolved.pools[0].name, resolved.pools[0].setup.cost_model, steps)]
    out = []
    first = 0
    for pool in resolved.pools:
        last = first + pool.setup.instances
        mask = (steps.replica >= first) & (steps.replica < last)
        subset = StepRecords(
            **{f.name: getattr(steps, f.name)[mask] for f in dataclasses.fields(steps)}
        )
        out.append((pool.name, pool.setup.cost_model, subset))
        first = last
    return out


def run_scenario(scenario: Scenario, *, fast_forward: bool = True,
                 show_progress: bool = False) -> RunOutput:
    """Simulate a scenario and summarise it (pure: no files are written)."""
    resolved = resolve(scenario)
    workload, result = simulate_resolved(
        resolved, seed_streams(scenario.seed), fast_forward=fast_forward,
        show_progress=show_progress,
    )
    by_pool = _pool_steps(resolved, result.steps)
    warnings = []
    for name, cost_model, steps in by_pool:
        prefix = f"{name}: " if resolved.grouped else f"{name} pool: " if len(by_pool) > 1 \
            else ""
        warnings += [prefix + w for w in envelope_warnings(cost_model, steps)]
    if warnings:
        result = dataclasses.replace(result, warnings=tuple(warnings))
    classes = None
    if workload.class_id is not None:
        classes = ClassLabels.of(scenario.workload.classes, scenario.metrics.slo,
                                 workload.class_id)
    table, token_pass = request_table(result, scenario.metrics, for_summary=True,
                                      classes=classes)
    summary = summarize_table(result, scenario.metrics, table, token_pass, classes=classes)
    summary.update(spec_decode_summary(result))
    summary.update(_run_metadata(resolved))
    if resolved.grouped:
        _add_group_requests(summary, resolved, table)
    if scenario.cost is not None:
        summary.update(_cost_keys(resolved, [steps for _role, _cm, steps in by_pool], result))
    reports = {name: envelope_report(cm, steps) for name, cm, steps in by_pool}
    if len(by_pool) == 1 and not resolved.grouped:
        envelope = reports["replica"]
    else:
        envelope = {role: r for role, r in reports.items() if r} or None
    if envelope:
        summary["envelope"] = envelope
    return RunOutput(resolved, workload, result, summary, table, token_pass.deadline_miss_rate)


def _cost_keys(resolved: ResolvedScenario, steps: list[StepRecords],
               result: SimulationResult) -> dict[str, object]:
    """GPU-hours, cost and energy of the run (`scenario.cost` set; its figures were checked
    by `resolve`)."""
    pools = [
        PoolUse(p.name, p.gpu, p.num_gpus, p.tp, p.pp, gpu_rates(p.gpu, resolved.scenario.cost),
                pool_steps)
        for p, pool_steps in zip(resolved.pools, steps, strict=True)
    ]
    offsets = result.tokens.offsets
    return cost_summary(pools, resolved.model, int(offsets[-1] - offsets[0]))


def _run_metadata(resolved: ResolvedScenario) -> dict[str, object]:
    s = resolved.scenario
    meta: dict[str, object] = {
        "simserve_version": __version__,
        "scenario": s.name,
        "seed": s.seed,
        "model_id": resolved.model.name,
        "hardware": resolved.gpu.name,
        "tp": s.tp,
        # The class's own name (a user's class is referred to by a path in the scenario).
        "policy": " + ".join(dict.fromkeys(p.setup.policy.name for p in resolved.pools))
        if resolved.grouped else resolved.pools[-1].setup.policy.name,
        "replicas": s.cluster.num_replicas,
        "num_gpu_blocks": resolved.limits.num_blocks,
        "block_size": resolved.limits.block_size,
        "max_model_len": resolved.limits.max_model_len,
        "cost_model": resolved.cost_model.describe(),
        "num_gpus": resolved.num_gpus,
    }
    if resolved.grouped:
        # NOTE: the groups' KV capacities and cost models differ: each group states its own.
        del meta["num_gpu_blocks"], meta["cost_model"]
        meta["groups"] = {p.name: _pool_settings(p) for p in resolved.pools}
    if any(p.setup.prefix_caching for p in resolved.pools):
        meta["prefix_caching"] = True
    # Like pp and the cluster mode, the queue order is named only where it is not the default.
    queue = resolved.pools[-1].setup.queue
    if queue is not FCFSQueue:
        meta["queue"] = queue.name
    if s.pp > 1 or s.cluster.mode == "disaggregated":
        meta["pp"] = s.pp
        meta["cluster_mode"] = s.cluster.mode
    if s.cluster.mode == "disaggregated":
        assert resolved.kv_link is not None
        # NOTE: a pool names its GPU where the pools' GPUs are not all the scenario's (older
        # summaries, whose pools all ran on `hardware`, stay as they were).
        mixed = any(p.gpu.name != resolved.gpu.name for p in resolved.pools)
        meta["pools"] = {
            p.role: {
                **({"hardware": p.gpu.name} if mixed else {}),
                "instances": p.setup.instances,
                **_pool_settings(p, with_router=True),
            }
            for p in resolved.pools
        }
        link = resolved.kv_link
        meta["kv_link"] = {
            "name": link.name,
            "bandwidth_gbps": link.bandwidth_gbps,
            "latency_us": link.latency_us,
        }
        if mixed and s.cluster.link.name is None:
            meta["kv_link"]["chosen_by"] = (
                "cluster.link.name unset: the slower interconnect of the pools' GPUs")
    return meta


def _pool_settings(pool: ResolvedPool, *, with_router: bool = False) -> dict[str, object]:
    """A pool's engine settings for the summary (a disaggregated pool's with its router); a
    replica group's also its GPU and size."""
    setup = pool.setup
    return {
        **({"hardware": pool.gpu.name, "replicas": setup.instances,
            "num_gpus": pool.num_gpus} if pool.group is not None else {}),
        "tp": pool.tp,
        "pp": pool.pp,
        "policy": setup.policy.name,
        **({"queue": setup.queue.name} if setup.queue is not FCFSQueue else {}),
        **({"router": setup.router} if with_router else {}),
        "max_num_seqs": setup.limits.max_num_seqs,
        "max_num_batched_tokens": setup.limits.max_num_batched_tokens,
        "num_gpu_blocks": setup.limits.num_blocks,
        "cost_model": setup.cost_model.describe(),
    }


def _add_group_requests(summary: dict[str, object], resolved: ResolvedScenario,
                        table: dict[str, np.ndarray]) -> None:
    """Each replica group's share of the requests, in `summary["groups"]` (instances are
    numbered group by group)."""
    groups = summary["groups"]
    assert isinstance(groups, dict)
    first = 0
    for pool in resolved.pools:
        last = first + pool.setup.instances
        groups[pool.name].update(group_requests(table, first, last))
        first = last


# Rows converted to Python values at a time when writing a CSV (bounds the temporaries: a
# million-row table at once would take ~0.6 GB of Python objects).
CSV_ROWS_PER_BLOCK = 1 << 16


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Columns as CSV, block by block of rows; numbers as Python writes them (repr)."""
    names = list(columns)
    arrays = [np.asarray(columns[k]) for k in names]
    num_rows = arrays[0].size if arrays else 0
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(names)
        for start in range(0, num_rows, CSV_ROWS_PER_BLOCK):
            block = slice(start, start + CSV_ROWS_PER_BLOCK)
            writer.writerows(zip(*(a[block].tolist() for a in arrays), strict=True))


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
        "num_preempted": st.num_preempted,
    }


RUN_DIR = OutputKind(
    "run directory",
    legacy_files=("scenario.yaml", "summary.json", "requests.csv", "steps.csv", "trace.json",
                  "*.png"),
    legacy_required=("scenario.yaml", "summary.json", "requests.csv", "steps.csv"),
)


def run_dir_writer(
    output: RunOutput, extra_writers: Sequence[Callable[[Path], object]] = ()
) -> Callable[[Path], None]:
    """What fills a run directory: scenario.yaml, summary.json, requests.csv, steps.csv, then
    each of `extra_writers` (e.g. figures, a trace), all in the same atomic write."""

    def write(tmp: Path) -> None:
        scenario_map = scenario_to_mapping(output.resolved.scenario)
        scenario_map = {"simserve_version": __version__, **scenario_map}
        (tmp / "scenario.yaml").write_text(yaml.safe_dump(scenario_map, sort_keys=False))
        (tmp / "summary.json").write_text(json.dumps(output.summary, indent=2) + "\n")
        _write_csv(tmp / "requests.csv", output.requests)
        _write_csv(tmp / "steps.csv", step_columns(output.result))
        for writer in extra_writers:
            writer(tmp)

    return write


def write_run_dir(
    output: RunOutput,
    out_dir: str | Path,
    *,
    extra_writers: Sequence[Callable[[Path], object]] = (),
) -> Path:
    """Write a run directory atomically (`run_dir_writer`; `atomic.claim_output_dir` says which
    existing directories it may replace: only simserve run directories it can prove it wrote).

    Commands that simulate for long claim the directory first and call `claim.write` with
    `run_dir_writer`, so a bad `--out` fails before the simulation.
    """
    return write_dir_atomically(out_dir, run_dir_writer(output, extra_writers), RUN_DIR)
