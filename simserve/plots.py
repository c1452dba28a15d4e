"""Teaching and report figures: simulation records -> matplotlib `Figure` objects.

Every function returns a `matplotlib.figure.Figure` built directly (no pyplot, no global backend
or rcParams change, never `show()`), so figures are safe in tests, servers and notebooks alike;
`save_figure` renders PNG through the Agg canvas. Each figure states what it shows in its title,
puts units on its axes, and draws the SLO where one applies, so it reads without the code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from simserve.engine.records import SimulationResult
from simserve.metrics import request_metrics

if TYPE_CHECKING:
    from simserve.experiments.run import RunOutput

__all__ = [
    "capacity_bars",
    "kv_occupancy",
    "latency_cdf",
    "metric_vs_rate",
    "run_figures",
    "save_figure",
    "step_timeline",
    "token_timeline",
    "write_run_figures",
]

# Okabe-Ito colour-blind-safe palette: one meaning per colour across all figures.
QUEUED_COLOR = "#BBBBBB"
PREFILL_COLOR = "#E69F00"
PREFILL_SPAN_COLOR = "#F6D58E"
DECODE_COLOR = "#0072B2"
RECOMPUTE_COLOR = "#8C5A00"
BURST_COLOR = "#CC79A7"
SLO_COLOR = "#D55E00"
PREEMPT_COLOR = "#D55E00"

DPI = 150
# ECDFs of more samples than this are drawn through this many quantiles (exact to the eye).
MAX_CDF_POINTS = 4000


def _figure(width_in: float, height_in: float) -> Figure:
    """A new stand-alone figure with constrained layout (no pyplot state involved)."""
    return Figure(figsize=(width_in, height_in), layout="constrained")


def _fmt(value: float) -> str:
    """A latency for a legend: 3 significant digits, never in e-notation."""
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _no_data(ax: Axes, message: str) -> None:
    """Say on the axes why they are empty, instead of drawing a blank plot."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _step_ends_s(result: SimulationResult) -> np.ndarray:
    """End time of every step, computed exactly as the engine stamps its tokens."""
    return result.steps.started_at + result.steps.duration_s


def _replica_step_ids(result: SimulationResult, replica: int) -> np.ndarray:
    """Indices of one replica's steps in time order."""
    ids = np.flatnonzero(result.steps.replica == replica)
    return ids[np.argsort(result.steps.started_at[ids], kind="stable")]


# --------------------------------------------------------------------------- step timeline


def _add_rects(ax: Axes, lefts: Sequence[float], widths: Sequence[float], rows: Sequence[int],
               height: float, color: str) -> None:
    """Horizontal bars as one PolyCollection (thousands of bars render in milliseconds)."""
    x0 = np.asarray(lefts, dtype=np.float64)
    x1 = x0 + np.asarray(widths, dtype=np.float64)
    y0 = np.asarray(rows, dtype=np.float64) - height / 2
    y1 = y0 + height
    verts = np.stack(
        [np.column_stack(c) for c in ((x0, y0), (x0, y1), (x1, y1), (x1, y0))], axis=1
    )
    ax.add_collection(
        PolyCollection(verts, facecolors=color, edgecolors="white", linewidths=0.3)
    )


@dataclass(frozen=True)
class _Gantt:
    """What a step-timeline window shows: its steps, rows and the bars of each kind."""

    window: np.ndarray  # step indices (one replica, time order)
    num_replica_steps: int
    t0: float
    t1: float
    rows: np.ndarray  # request ids, one row each (top to bottom)
    num_ran: int  # requests that ran in the window (rows are the first max_requests)
    num_waiting: int  # requests still only queued at the window's end (not drawn)
    bars: dict[str, list[tuple[int, float, float]]]  # kind -> (row, start_s, end_s)


GANTT_KINDS = ("queued", "prefill_span", "prefill", "recompute", "decode", "burst")


def _gantt(result: SimulationResult, replica: int, start_step: int, max_steps: int,
           max_requests: int) -> _Gantt | None:
    """Reconstruct which request took part in which step of a window, and as what.

    A request took part in a step if it got a token at that step's end (token times are the
    step end times exactly); its first token closes its prefill. Prefill chunks that emit no
    token leave no per-request trace, so first-scheduled -> start of the first token's step is
    one "prefill in progress" span. None if the window holds no step.
    """
    step_ids = _replica_step_ids(result, replica)
    lo_step = max(start_step, 0)
    window = step_ids[lo_step : lo_step + max(max_steps, 1)]
    if window.size == 0:
        return None
    steps = result.steps
    t0 = float(steps.started_at[window[0]])
    t1 = float(steps.started_at[window[-1]] + steps.duration_s[window[-1]])
    rep_ends = _step_ends_s(result)[step_ids]

    arrived = result.arrived_at
    finished = np.where(np.isnan(result.finished_at), np.inf, result.finished_at)
    sched_at = np.where(np.isnan(result.first_scheduled_at), np.inf, result.first_scheduled_at)
    on_replica = result.replica == replica
    # Rows: requests that ran (scheduled by the window's end, not finished before it began);
    # requests still only queued at its end are counted, not drawn.
    ran = np.flatnonzero(on_replica & (sched_at <= t1) & (finished >= t0))
    num_waiting = int(np.count_nonzero(on_replica & (arrived <= t1) & (sched_at > t1)))
    rows = ran[:max_requests]
    bars: dict[str, list[tuple[int, float, float]]] = {k: [] for k in GANTT_KINDS}

    def add(kind: str, row: int, lo: float, hi: float) -> None:
        lo, hi = max(lo, t0), min(hi, t1)
        if hi > lo:
            bars[kind].append((row, lo, hi))

    for row, rid in enumerate(rows.tolist()):
        sched = float(sched_at[rid])
        add("queued", row, float(arrived[rid]), min(sched, t1))
        tokens = result.tokens_of(rid)
        if tokens.size == 0:
            add("prefill_span", row, sched, t1)
            continue
        first_step = int(step_ids[min(int(np.searchsorted(rep_ends, tokens[0])),
                                      rep_ends.size - 1)])
        add("prefill_span", row, sched, float(steps.started_at[first_step]))
        inside = tokens[(tokens > t0) & (tokens <= t1)]
        at = np.clip(np.searchsorted(rep_ends, inside), 0, rep_ends.size - 1)
        emit_steps, per_step = np.unique(step_ids[at], return_counts=True)
        for s, count in zip(emit_steps.tolist(), per_step.tolist(), strict=True):
            lo = float(steps.started_at[s])
            hi = lo + float(steps.duration_s[s])
            if s == first_step:
                add("prefill", row, lo, hi)
            elif steps.num_decode_tokens[s] == 0:
                # NOTE: a later token from a step without decodes can only come from a
                # recompute prefill finishing (vLLM recompute preemption re-prefills the
                # prompt plus the generated tokens and then emits the next one).
                add("recompute", row, lo, hi)
            else:
                add("burst" if count > 1 else "decode", row, lo, hi)
    return _Gantt(window, int(step_ids.size), t0, t1, rows, int(ran.size), num_waiting, bars)


def step_timeline(
    result: SimulationResult,
    *,
    replica: int = 0,
    max_steps: int = 200,
    start_step: int = 0,
    max_requests: int = 80,
    token_budget: int | None = None,
    title: str | None = None,
) -> Figure:
    """Gantt chart of a window of one replica's steps: which request ran in which step, and as
    what (queued, prefill, decode, burst), above the step's prefill/decode token counts.

    Membership is reconstructed from token times (see `_gantt`); gaps in a row are steps the
    request sat out (stalls, preemptions). `start_step`/`max_steps` count this replica's steps;
    at most `max_requests` rows are drawn (earliest arrivals first); `token_budget` draws
    `max_num_batched_tokens` on the lower panel.
    """
    fig = _figure(11.0, 6.0)
    ax, ax_tok = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    ax.set_ylabel("request id")
    ax_tok.set_xlabel("time (s)")
    ax_tok.set_ylabel("tokens in step")
    gantt = _gantt(result, replica, start_step, max_steps, max_requests)
    if gantt is None:
        _no_data(ax, f"replica {replica} ran no steps in this window")
        ax.set_title(title or f"Step timeline of replica {replica}: no steps")
        return fig
    steps = result.steps
    window, rows, t0, t1 = gantt.window, gantt.rows, gantt.t0, gantt.t1
    starts = steps.started_at[window]
    durations = steps.duration_s[window]

    style = {
        "queued": (QUEUED_COLOR, "queued (arrived, not yet scheduled)"),
        "prefill_span": (PREFILL_SPAN_COLOR, "prefill in progress (chunks / waiting between)"),
        "prefill": (PREFILL_COLOR, "step that finished the prefill (1st token)"),
        "recompute": (RECOMPUTE_COLOR, "re-prefill after a preemption (prefill-only step)"),
        "decode": (DECODE_COLOR, "decode step (1 token)"),
        "burst": (BURST_COLOR, "step emitting >1 token (speculative burst)"),
    }
    handles = []
    for kind, segments in gantt.bars.items():
        if not segments:
            continue
        color, label = style[kind]
        ys, lefts, rights = (np.array(c) for c in zip(*segments, strict=True))
        _add_rects(ax, lefts, rights - lefts, ys, 0.45 if kind == "queued" else 0.8, color)
        handles.append(Patch(facecolor=color, label=label))
    ax.set_ylim(len(rows) - 0.5, -0.5)
    if len(rows) <= 40:
        ax.set_yticks(range(len(rows)), [str(r) for r in rows.tolist()], fontsize=7)
    else:
        ticks = list(range(0, len(rows), max(1, len(rows) // 20)))
        ax.set_yticks(ticks, [str(rows[i]) for i in ticks], fontsize=7)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    shown = (f"{len(rows)} requests" if rows.size == gantt.num_ran
             else f"first {len(rows)} of {gantt.num_ran} requests")
    first, last = max(start_step, 0) + 1, max(start_step, 0) + window.size
    ax.set_title(
        title
        or f"Who ran in which step: replica {replica}, steps {first}-{last} of "
        f"{gantt.num_replica_steps}"
    )
    note = f"{shown} shown"
    if gantt.num_waiting:
        note += f"; {gantt.num_waiting} more still queued at the end of the window (not shown)"
    ax.text(0.0, -0.01, note, transform=ax.transAxes, ha="left", va="top", fontsize=7,
            color="0.35")

    pre = steps.num_prefill_tokens[window]
    dec = steps.num_decode_tokens[window]
    ax_tok.bar(starts, pre, width=durations, align="edge", color=PREFILL_COLOR,
               edgecolor="white", linewidth=0.3, label="prefill tokens")
    ax_tok.bar(starts, dec, width=durations, bottom=pre, align="edge", color=DECODE_COLOR,
               edgecolor="white", linewidth=0.3, label="decode tokens")
    if token_budget is not None:
        ax_tok.axhline(token_budget, color="0.3", linestyle="--", linewidth=1,
                       label=f"token budget ({token_budget})")
    ax_tok.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax_tok.set_xlim(t0, t1)
    return fig


# --------------------------------------------------------------------------- token timeline


def token_timeline(
    result: SimulationResult,
    request_ids: Sequence[int],
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Cumulative output tokens against time since arrival, one staircase per request, so a
    steady stream is a smooth ramp, a stall a plateau and a speculative burst a tall step."""
    if labels is not None and len(labels) != len(request_ids):
        raise ValueError(f"got {len(labels)} labels for {len(request_ids)} requests")
    fig = _figure(8.0, 4.8)
    ax = fig.subplots()
    ax.set_xlabel("time since arrival (s)")
    ax.set_ylabel("output tokens received")
    drawn = 0
    for i, rid in enumerate(request_ids):
        rid = int(rid)
        times = result.tokens_of(rid) - result.arrived_at[rid]
        name = labels[i] if labels is not None else f"request {rid}"
        if times.size == 0:
            ax.plot([], [], label=f"{name}: no tokens")
            continue
        gaps = np.diff(times)
        detail = f"TTFT {times[0] * 1e3:.0f} ms, {times.size} tokens"
        if gaps.size:
            detail += f", largest gap {gaps.max() * 1e3:.0f} ms"
        x = np.concatenate(([0.0], times))
        y = np.arange(x.size)
        (line,) = ax.step(x, y, where="post", linewidth=1.5, label=f"{name}: {detail}")
        ax.plot(times[0], 1, marker="o", color=line.get_color(), markersize=5)
        drawn += 1
    if not drawn:
        _no_data(ax, "no tokens to draw")
    ax.set_xlim(left=0.0)
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.3", marker="o", linestyle="none",
                          label="first token (TTFT)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    ax.set_title(
        title or "Output tokens received over time (plateau = stall, tall step = burst)"
    )
    return fig


# --------------------------------------------------------------------------- latency CDFs


def _ecdf_points(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) of the empirical CDF, thinned to quantiles for very large samples."""
    n = sorted_values.size
    if n <= MAX_CDF_POINTS:
        return sorted_values, np.arange(1, n + 1) / n
    probs = np.linspace(0.0, 1.0, MAX_CDF_POINTS)
    return np.quantile(sorted_values, probs), probs


def latency_cdf(
    samples_ms: Mapping[str, np.ndarray],
    *,
    metric: str,
    slo_ms: float | None = None,
    log_x: bool = False,
    population: str | None = None,
    title: str | None = None,
) -> Figure:
    """Empirical CDFs of one latency metric (ms) for several systems, with P50/P99 markers and
    the SLO, so tails and the share of samples within the SLO can be read off directly.

    Percentiles use numpy's linear interpolation, as the summary does. `population` (e.g.
    "per request", "per token") is stated on the y axis. On a log axis, zeros (TBT inside a
    speculative burst) cannot be drawn and are pinned to the left edge, as the title says.
    """
    fig = _figure(8.0, 4.8)
    ax = fig.subplots()
    ax.set_xlabel(f"{metric} (ms)")
    ax.set_ylabel(f"fraction of samples ≤ x ({population})" if population
                  else "fraction of samples ≤ x")
    cleaned = {name: np.asarray(v, dtype=np.float64) for name, v in samples_ms.items()}
    cleaned = {name: np.sort(v[np.isfinite(v)]) for name, v in cleaned.items()}
    positive = [v[v > 0] for v in cleaned.values()]
    floor = min((float(p[0]) for p in positive if p.size), default=1.0) / 2.0
    num_zeros = 0
    drawn = 0
    for name, values in cleaned.items():
        if values.size == 0:
            ax.plot([], [], label=f"{name}: no samples")
            continue
        p50, p99 = np.percentile(values, [50.0, 99.0])
        label = f"{name}: P50 {_fmt(p50)} ms, P99 {_fmt(p99)} ms"
        if slo_ms is not None:
            label += f", {np.mean(values <= slo_ms):.1%} ≤ SLO"
        label += f" (n={values.size})"
        x, y = _ecdf_points(values)
        if log_x:
            num_zeros += int(np.count_nonzero(values <= 0))
            x = np.maximum(x, floor)
        x = np.concatenate(([x[0]], x))
        y = np.concatenate(([0.0], y))
        (line,) = ax.step(x, y, where="post", linewidth=1.5, label=label)
        color = line.get_color()
        marks = np.maximum([p50, p99], floor) if log_x else np.array([p50, p99])
        ax.plot(marks[0], 0.5, marker="o", color=color, markersize=6, linestyle="none")
        ax.plot(marks[1], 0.99, marker="v", color=color, markersize=7, linestyle="none")
        drawn += 1
    if slo_ms is not None:
        ax.axvline(slo_ms, color=SLO_COLOR, linestyle="--", linewidth=1.2,
                   label=f"SLO {_fmt(slo_ms)} ms")
    if log_x:
        ax.set_xscale("log")
    if not drawn:
        _no_data(ax, "no samples")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="0.3", marker="o", linestyle="none", label="P50"),
        Line2D([], [], color="0.3", marker="v", linestyle="none", label="P99"),
    ]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    text = title or f"Distribution of {metric} (empirical CDF)"
    if log_x and num_zeros:
        text += (f"\n({num_zeros} zero samples, e.g. inside speculative bursts, "
                 "drawn at the left edge)")
    ax.set_title(text)
    return fig


# --------------------------------------------------------------------------- sweeps


def metric_vs_rate(
    rates: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    title: str = "",
    slo: float | None = None,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    log_y: bool = False,
) -> Figure:
    """One line per system of a metric against arrival rate (req/s), with optional confidence
    bands (lower, upper) and the SLO as a horizontal line, to show where each system's knee is.

    NaN values (e.g. no completed request) leave gaps rather than being drawn as zeros.
    """
    rates_arr = np.asarray(rates, dtype=np.float64)
    fig = _figure(8.0, 4.8)
    ax = fig.subplots()
    for name, values in series.items():
        values_arr = np.asarray(values, dtype=np.float64)
        if values_arr.shape != rates_arr.shape:
            raise ValueError(f"series {name!r} has {values_arr.size} values for "
                             f"{rates_arr.size} rates")
        (line,) = ax.plot(rates_arr, values_arr, marker="o", markersize=4, label=name)
        if bands and name in bands:
            lower, upper = (np.asarray(b, dtype=np.float64) for b in bands[name])
            ax.fill_between(rates_arr, lower, upper, color=line.get_color(), alpha=0.2,
                            linewidth=0)
    if slo is not None:
        ax.axhline(slo, color=SLO_COLOR, linestyle="--", linewidth=1.2, label=f"SLO {slo:g}")
    if log_y:
        ax.set_yscale("log")
    if not series:
        _no_data(ax, "no series")
    ax.set_xlabel("arrival rate (req/s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    suffix = " (shaded: confidence band)" if bands else ""
    ax.set_title((title or f"{ylabel} vs arrival rate") + suffix)
    return fig


def capacity_bars(
    capacities: Mapping[str, Mapping[str, float]],
    *,
    ylabel: str = "capacity (req/s)",
    title: str = "",
    xlabel: str = "SLO rule",
) -> Figure:
    """Grouped bars of capacity: one group per rule (outer key), one bar per system (inner key),
    values printed on the bars, so a rule that reorders the systems is visible at a glance.

    A missing or non-finite value (no rate met the rule) is marked "n/a" instead of a bar.
    """
    groups = list(capacities)
    systems: list[str] = []
    for inner in capacities.values():
        systems += [s for s in inner if s not in systems]
    fig = _figure(max(6.0, 1.2 + 0.9 * len(groups) * max(len(systems), 1) * 0.6), 4.8)
    ax = fig.subplots()
    width = 0.8 / max(len(systems), 1)
    for j, system in enumerate(systems):
        xs = np.arange(len(groups)) + (j - (len(systems) - 1) / 2) * width
        values = np.array([capacities[g].get(system, np.nan) for g in groups], dtype=float)
        values = np.where(np.isfinite(values), values, np.nan)
        bars = ax.bar(xs, np.nan_to_num(values), width=width * 0.95, label=system)
        for x, v, bar in zip(xs, values, bars, strict=True):
            text = "n/a" if np.isnan(v) else _fmt(v)
            ax.annotate(text, (x, bar.get_height()), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.12)
    if systems:
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no capacities")
    ax.set_title(title or "Capacity (highest arrival rate meeting the rule) per SLO rule")
    return fig


# --------------------------------------------------------------------------- KV cache


def _preemption_steps(result: SimulationResult, step_ids: np.ndarray) -> np.ndarray:
    """Steps (of one replica, time order) in which KV blocks were freed while no request
    finished: only a preemption frees blocks otherwise (a lower bound on preemption steps).

    NOTE: blocks are freed only by finishing or preempting requests (speculative rejections
    free blocks allocated in the same step, so a step never nets a drop from them), so a drop
    without a finish is a preemption; a preemption hidden by growth in the same step is missed.
    """
    if step_ids.size < 2:
        return np.zeros(0, dtype=np.int64)
    used = result.steps.kv_blocks_used[step_ids]
    ends = _step_ends_s(result)[step_ids]
    replica = int(result.steps.replica[step_ids[0]])
    fin = result.finished_at[(result.replica == replica) & np.isfinite(result.finished_at)]
    at = np.searchsorted(ends, fin)
    finishes = np.bincount(np.clip(at, 0, ends.size - 1), minlength=ends.size)
    dropped = np.concatenate(([False], np.diff(used) < 0))
    return step_ids[dropped & (finishes == 0)]


def kv_occupancy(result: SimulationResult, *, replica: int = 0, title: str | None = None
                 ) -> Figure:
    """KV-cache blocks in use (% of the replica's blocks) after every step, with steps that must
    have preempted marked, above the number of running and queued requests, so memory
    pressure and what it does to batching can be seen together."""
    step_ids = _replica_step_ids(result, replica)
    fig = _figure(10.0, 5.5)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    ax.set_ylabel("KV blocks used (%)")
    ax_n.set_xlabel("time (s)")
    ax_n.set_ylabel("requests")
    on_replica = result.replica == replica
    num_preemptions = int(result.num_preemptions[on_replica].sum())
    if step_ids.size == 0:
        _no_data(ax, f"replica {replica} ran no steps")
        ax.set_title(title or f"KV-cache occupancy of replica {replica}: no steps")
        return fig
    steps = result.steps
    ends = _step_ends_s(result)[step_ids]
    total = steps.kv_blocks_total[step_ids]
    used_pct = 100.0 * steps.kv_blocks_used[step_ids] / np.maximum(total, 1)
    starts = steps.started_at[step_ids]
    # Blocks are allocated when a step begins and stay until a later step frees them, so the
    # level after step i holds from its start to the next step's start (idle gaps included).
    x = np.concatenate((starts, ends[-1:]))
    y = np.concatenate((used_pct, used_pct[-1:]))
    ax.step(x, y, where="post", color=DECODE_COLOR, linewidth=1.0, label="KV blocks used")
    ax.fill_between(x, y, step="post", color=DECODE_COLOR, alpha=0.2)
    ax.axhline(100.0, color="0.3", linestyle="--", linewidth=1,
               label=f"capacity ({int(total.max())} blocks)")
    marked = _preemption_steps(result, step_ids)
    if marked.size:
        t_marked = _step_ends_s(result)[marked]
        pct_marked = 100.0 * steps.kv_blocks_used[marked] / np.maximum(steps.kv_blocks_total[
            marked], 1)
        ax.plot(t_marked, pct_marked, linestyle="none", marker="x", color=PREEMPT_COLOR,
                markersize=6, label="preemption (KV freed, no request finished)")
    ax.set_ylim(0.0, 105.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(
        title
        or f"KV-cache occupancy of replica {replica}: peak {used_pct.max():.0f}%, "
        f"{num_preemptions} preemption{'s' if num_preemptions != 1 else ''}"
    )

    seqs = steps.num_seqs[step_ids]
    ax_n.step(x, np.concatenate((seqs, seqs[-1:])), where="post", color=DECODE_COLOR,
              linewidth=1.0, label="sequences in the step")
    sched = result.first_scheduled_at[on_replica]
    arrived = result.arrived_at[on_replica]
    # Queued = arrived and not yet scheduled for the first time (re-queued preempted
    # requests are not counted), sampled at the start of every step.
    sched_sorted = np.sort(np.where(np.isnan(sched), np.inf, sched))
    queued = np.searchsorted(np.sort(arrived), starts, side="right") - np.searchsorted(
        sched_sorted, starts, side="right"
    )
    ax_n.step(starts, queued, where="post", color="0.45", linewidth=1.0,
              label="queued (arrived, never scheduled yet)")
    ax_n.set_ylim(bottom=0)
    ax_n.grid(alpha=0.3)
    ax_n.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


# --------------------------------------------------------------------------- saving, run set


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG (150 dpi, tight bounding box), creating parent directories."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI, bbox_inches="tight")
    return out


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


def run_figures(output: RunOutput) -> dict[str, Figure]:
    """The standard figures of one run, keyed by file stem: a mid-run step timeline, token
    timelines of representative requests, TTFT/TPOT/TBT CDFs with the scenario's SLOs, and the
    KV occupancy (all for replica 0 where per replica)."""
    result = output.result
    scenario = output.resolved.scenario
    slo = scenario.metrics.slo
    policy = scenario.engine.policy
    table = request_metrics(result, scenario.metrics)
    measured = table["measured"]
    num_replicas = scenario.cluster.replicas
    of_replicas = f" of {num_replicas}" if num_replicas > 1 else ""

    num_steps = int(np.count_nonzero(result.steps.replica == 0))
    window = 120
    start = max(0, num_steps // 2 - window // 2)
    figures: dict[str, Figure] = {}
    figures["step_timeline"] = step_timeline(
        result,
        replica=0,
        max_steps=window,
        start_step=start,
        token_budget=scenario.engine.max_num_batched_tokens,
        title=f"Who ran in which step: {scenario.name}, {policy}, replica 0{of_replicas}, "
        f"steps {start + 1}-{min(start + window, num_steps)} of {num_steps} (mid-run)",
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
    figures["tbt_cdf"] = latency_cdf(
        {name: _measured_gaps_ms(result, measured)},
        metric="TBT",
        slo_ms=slo.max_tbt_ms,
        log_x=True,
        population="per token",
        title=f"TBT (every gap between tokens) distribution ({scenario.name})",
    )
    figures["kv_occupancy"] = kv_occupancy(
        result,
        replica=0,
    )
    return figures


def write_run_figures(output: RunOutput, run_dir: str | Path) -> list[Path]:
    """Render `run_figures` as `<name>.png` files in a run directory; returns their paths."""
    return [
        save_figure(fig, Path(run_dir) / f"{name}.png")
        for name, fig in run_figures(output).items()
    ]
