"""The standard figure set of one run (`simserve run --plots`) and writing it as PNG files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from simserve.engine.records import SimulationResult
from simserve.formatting import fmt_number
from simserve.metrics import request_metrics
from simserve.plots.canvas import save_figure
from simserve.plots.kv import kv_occupancy
from simserve.plots.latency import latency_cdf
from simserve.plots.timeline import step_timeline, token_timeline

if TYPE_CHECKING:
    from simserve.experiments.run import RunOutput

__all__ = ["run_figures", "write_run_figures"]


def _representative_requests(table: Mapping[str, np.ndarray]) -> tuple[list[int], list[str]]:
    """A typical request (median E2EL), the slowest stream (highest TPOT among requests of at
    least the median output length, so a two-token request cannot win by one gap) and the
    worst stall (largest gap), from the measured requests, each drawn once."""
    measured = np.flatnonzero(table["measured"] & (table["num_output_tokens"] > 0))
    if measured.size == 0:
        return [], []
    e2el = table["e2el_s"][measured]
    picks = [(int(measured[np.argmin(np.abs(e2el - np.median(e2el)))]), "median E2EL")]
    n = table["num_output_tokens"][measured]
    long_enough = measured[(n >= np.median(n)) & np.isfinite(table["tpot_s"][measured])]
    if long_enough.size:
        picks.append((int(long_enough[np.argmax(table["tpot_s"][long_enough])]),
                      "highest TPOT"))
    max_tbt = table["max_tbt_s"][measured]
    if np.any(np.isfinite(max_tbt)):
        picks.append((int(measured[np.nanargmax(max_tbt)]), "largest gap"))
    ids: list[int] = []
    labels: list[str] = []
    for rid, why in picks:
        if rid in ids:
            labels[ids.index(rid)] += f", {why}"
        else:
            ids.append(rid)
            labels.append(f"request {rid} ({why}")
    return ids, [label + ")" for label in labels]


def _measured_gaps_ms(result: SimulationResult, measured: np.ndarray) -> np.ndarray:
    """Every TBT gap (ms) of the measured requests, zeros inside bursts included (per token)."""
    offsets = result.token_offsets
    counts = np.diff(offsets)
    keep = np.repeat(measured, counts)
    times = result.token_times_s
    gaps = np.empty(times.size)
    if times.size:
        gaps[0] = np.nan
        np.subtract(times[1:], times[:-1], out=gaps[1:])
    gaps[offsets[:-1][counts > 0]] = np.nan  # a first token has no gap
    gaps = gaps[keep]
    return gaps[np.isfinite(gaps)] * 1e3


def _mid_run_timeline(result: SimulationResult, replica: int, label: str, what: str,
                      token_budget: int | None) -> Figure:
    """The step timeline of `window` steps from the middle of one instance's steps."""
    num_steps = int(np.count_nonzero(result.steps.replica == replica))
    window = 120
    start = max(0, num_steps // 2 - window // 2)
    return step_timeline(
        result,
        replica=replica,
        max_steps=window,
        start_step=start,
        token_budget=token_budget,
        instance_label=label,
        title=f"Who ran in which step: {what}, {label}, "
        f"steps {start + 1}-{min(start + window, num_steps)} of {num_steps} (mid-run)",
    )


def run_figures(output: RunOutput) -> dict[str, Figure]:
    """The standard figures of one run, keyed by file stem: a mid-run step timeline, token
    timelines of representative requests, TTFT/TPOT/TBT CDFs with the scenario's SLOs, and the
    KV occupancy (all for replica 0 where per replica).

    A disaggregated run gets the step timeline and KV occupancy of prefill instance 0 and of
    decode instance 0 (`*_prefill`, `*_decode`), and its token timeline shows the KV handoff.
    """
    result = output.result
    scenario = output.resolved.scenario
    slo = scenario.metrics.slo
    policy = output.resolved.pools[-1].setup.policy.name
    table = request_metrics(result, scenario.metrics)
    measured = table["measured"]
    pools = output.resolved.pools
    disaggregated = result.decode_replica is not None and len(pools) == 2

    figures: dict[str, Figure] = {}
    if disaggregated:
        first = 0
        instances: list[tuple[str, int, str, int]] = []  # role, index, label, pp
        for pool in pools:
            n = pool.setup.instances
            label = f"{pool.role} instance 0 of {n}"
            instances.append((pool.role, first, label, pool.pp))
            # A decode instance batches a handful of tokens per step: drawing its token budget
            # (only used by re-prefills after preemptions) would flatten the bars to nothing.
            figures[f"step_timeline_{pool.role}"] = _mid_run_timeline(
                result, first, label, f"{scenario.name}, {pool.setup.policy.name}",
                pool.setup.limits.max_num_batched_tokens if pool.role == "prefill" else None,
            )
            first += n
    else:
        num_replicas = scenario.cluster.num_replicas
        of_replicas = f" of {num_replicas}" if num_replicas > 1 else ""
        figures["step_timeline"] = _mid_run_timeline(
            result, 0, f"replica 0{of_replicas}", f"{scenario.name}, {policy}",
            pools[0].setup.limits.max_num_batched_tokens,
        )
    ids, labels = _representative_requests(table)
    figures["token_timeline"] = token_timeline(
        result,
        ids,
        labels=labels,
        title=f"Output tokens over time, representative requests ({scenario.name}, {policy})",
    )
    name = f"{policy}"
    figures["ttft_cdf"] = latency_cdf(
        {name: table["ttft_s"][measured] * 1e3},
        metric="TTFT",
        slo_ms=slo.ttft_ms,
        population="per request",
        title=f"TTFT distribution ({scenario.name}, measured requests)",
    )
    figures["tpot_cdf"] = latency_cdf(
        {name: table["tpot_s"][measured] * 1e3},
        metric="TPOT",
        slo_ms=slo.tpot_ms,
        population="per request",
        title=f"TPOT = (E2EL - TTFT) / (n - 1) distribution ({scenario.name})",
    )
    # NOTE: without a max-TBT SLO the TPOT target is the per-token target a gap is held to
    # (Sarathi-Serve's capacity rule puts P99 TBT under the same number).
    tbt_slo = slo.max_tbt_ms if slo.max_tbt_ms is not None else slo.tpot_ms
    figures["tbt_cdf"] = latency_cdf(
        {name: _measured_gaps_ms(result, measured)},
        metric="TBT",
        slo_ms=tbt_slo,
        slo_label=(None if tbt_slo is None else f"SLO {fmt_number(tbt_slo)} ms"
                   + ("" if slo.max_tbt_ms is not None else " (the TPOT target, per gap)")),
        log_x=True,
        population="per token",
        title=f"TBT (every gap between tokens) distribution ({scenario.name})",
    )
    if disaggregated:
        for role, index, label, pp in instances:
            figures[f"kv_occupancy_{role}"] = kv_occupancy(
                result, replica=index, instance_label=label, pp=pp
            )
    else:
        figures["kv_occupancy"] = kv_occupancy(
            result,
            replica=0,
            pp=pools[0].pp if pools else None,
        )
    return figures


def write_run_figures(output: RunOutput, run_dir: str | Path) -> list[Path]:
    """Render `run_figures` as `<name>.png` files in a run directory; returns their paths."""
    return [
        save_figure(fig, Path(run_dir) / f"{name}.png")
        for name, fig in run_figures(output).items()
    ]
