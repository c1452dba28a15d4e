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
KV_WAIT_COLOR = "#A8DCC9"
KV_TRANSFER_COLOR = "#009E73"

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


def _role(result: SimulationResult, replica: int) -> str:
    """What an instance does: "replica" (co-located), "prefill" or "decode" (disaggregated).

    A disaggregated run's `replica` column holds prefill instances only and `decode_replica`
    decode instances only, so the records alone tell them apart.
    """
    if result.decode_replica is None:
        return "replica"
    return "decode" if np.any(result.decode_replica == replica) else "prefill"


def _instance_label(result: SimulationResult, replica: int) -> str:
    """"replica 2", "prefill instance 0" or "decode instance 1" (numbered within its pool).

    NOTE: decode instances follow the prefill pool's; its size is taken as the highest prefill
    instance that served a request, + 1 (`run_figures` passes exact labels instead).
    """
    role = _role(result, replica)
    if role == "replica":
        return f"replica {replica}"
    if role == "prefill":
        return f"prefill instance {replica}"
    routed = result.replica[result.replica >= 0]
    first_decode = int(routed.max()) + 1 if routed.size else 0
    return f"decode instance {replica - first_decode}"


@dataclass(frozen=True)
class _Handoff:
    """Per request, the KV handoff of a disaggregated run (s; NaN where there was none)."""

    first_token: np.ndarray  # end of the prefill on the prefill instance
    start: np.ndarray  # KV transfer starts (after waiting for a decode slot/blocks, the link)
    end: np.ndarray  # transfer ends: prefill instance frees the blocks, decode gets them


def _handoff(result: SimulationResult) -> _Handoff | None:
    """KV handoff times of every request, or None for a co-located run."""
    start = result.kv_transfer_started_at
    if start is None or result.kv_transfer_s is None:
        return None
    return _Handoff(result.first_token_at, start, start + result.kv_transfer_s)


class _StepLookup:
    """Which of one instance's steps emitted a token at a given time (token times are step
    end times exactly). Pipeline-parallel virtual engines overlap, so this searches the steps
    sorted by end time; for sequential steps that is their start order."""

    def __init__(self, result: SimulationResult, step_ids: np.ndarray) -> None:
        ends = _step_ends_s(result)[step_ids]
        order = np.argsort(ends, kind="stable")
        self.ends = ends[order]
        self.ids = step_ids[order]

    def __call__(self, times: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self.ends, times)
        return self.ids[np.clip(at, 0, self.ends.size - 1)]


def _has_virtual_engines(result: SimulationResult, step_ids: np.ndarray) -> bool:
    """True when one instance's steps overlap in time: pipeline-parallel virtual engines, each
    with its own share of the KV blocks, take turns in its step log."""
    if step_ids.size < 2:
        return False
    ends = _step_ends_s(result)[step_ids]
    return bool(np.any(result.steps.started_at[step_ids[1:]] < ends[:-1] - 1e-12))


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
    role: str = "replica"  # "replica" (co-located), "prefill" or "decode"
    kv_done: tuple[tuple[int, float], ...] = ()  # (row, time) a KV transfer ended


GANTT_KINDS = ("queued", "prefill_span", "prefill", "kv_wait", "kv_transfer", "recompute",
               "decode", "burst")


def _gantt(result: SimulationResult, replica: int, start_step: int, max_steps: int,
           max_requests: int) -> _Gantt | None:
    """Reconstruct which request took part in which step of a window, and as what.

    A request took part in a step if it got a token at that step's end (token times are the
    step end times exactly); its first token closes its prefill. Prefill chunks that emit no
    token leave no per-request trace, so first-scheduled -> start of the first token's step is
    one "prefill in progress" span. None if the window holds no step.

    Disaggregated: a prefill instance's rows end when their KV transfer does (the blocks are
    held until then), with the wait for the handoff and the transfer drawn after the first
    token; a decode instance's rows are the requests handed to it, from their first token
    (made on the prefill instance) through the wait and transfer to their decode steps.
    """
    step_ids = _replica_step_ids(result, replica)
    lo_step = max(start_step, 0)
    window = step_ids[lo_step : lo_step + max(max_steps, 1)]
    if window.size == 0:
        return None
    steps = result.steps
    t0 = float(steps.started_at[window[0]])
    t1 = float(np.max(_step_ends_s(result)[window]))
    step_of = _StepLookup(result, step_ids)
    role = _role(result, replica)
    hand = _handoff(result)

    arrived = result.arrived_at
    finished = np.where(np.isnan(result.finished_at), np.inf, result.finished_at)
    sched_at = np.where(np.isnan(result.first_scheduled_at), np.inf, result.first_scheduled_at)
    if role == "decode":
        assert hand is not None and result.decode_replica is not None
        # Rows: requests handed to this instance (at their first token) by the window's end
        # and not finished before it began.
        on_replica = result.decode_replica == replica
        entered = np.where(np.isnan(hand.first_token), np.inf, hand.first_token)
        ran = np.flatnonzero(on_replica & (entered <= t1) & (finished >= t0))
        num_waiting = 0
    else:
        on_replica = result.replica == replica
        left = finished
        if hand is not None:  # a prefill instance holds the KV until the transfer ends
            left = np.where(np.isnan(hand.end), finished, hand.end)
        # Rows: requests that ran (scheduled by the window's end, not gone before it began);
        # requests still only queued at its end are counted, not drawn.
        ran = np.flatnonzero(on_replica & (sched_at <= t1) & (left >= t0))
        num_waiting = int(np.count_nonzero(on_replica & (arrived <= t1) & (sched_at > t1)))
    rows = ran[:max_requests]
    bars: dict[str, list[tuple[int, float, float]]] = {k: [] for k in GANTT_KINDS}
    kv_done: list[tuple[int, float]] = []

    def add(kind: str, row: int, lo: float, hi: float) -> None:
        lo, hi = max(lo, t0), min(hi, t1)
        if hi > lo:
            bars[kind].append((row, lo, hi))

    def add_handoff(row: int, rid: int) -> None:
        assert hand is not None
        first, start, end = (float(a[rid]) for a in (hand.first_token, hand.start, hand.end))
        if np.isfinite(end):
            add("kv_wait", row, first, start)
            add("kv_transfer", row, start, end)
            if t0 <= end <= t1:
                kv_done.append((row, end))

    for row, rid in enumerate(rows.tolist()):
        tokens = result.tokens_of(rid)
        if role == "decode":
            add_handoff(row, rid)
            later = tokens[1:]
            first_step = -1
        else:
            sched = float(sched_at[rid])
            add("queued", row, float(arrived[rid]), min(sched, t1))
            if tokens.size == 0:
                add("prefill_span", row, sched, t1)
                continue
            first_step = int(step_of(tokens[:1])[0])
            add("prefill_span", row, sched, float(steps.started_at[first_step]))
            if role == "prefill":
                add_handoff(row, rid)
                later = tokens[:1]  # later tokens come from a decode instance
            else:
                later = tokens
        inside = later[(later > t0) & (later <= t1)]
        emit_steps, per_step = np.unique(step_of(inside), return_counts=True)
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
    return _Gantt(window, int(step_ids.size), t0, t1, rows, int(ran.size), num_waiting, bars,
                  role, tuple(kv_done))


_GANTT_STYLE = {
    "queued": (QUEUED_COLOR, "queued (arrived, not yet scheduled)"),
    "prefill_span": (PREFILL_SPAN_COLOR, "prefill in progress (chunks / waiting between)"),
    "prefill": (PREFILL_COLOR, "step that finished the prefill (1st token)"),
    "kv_wait": (KV_WAIT_COLOR, "waiting to hand off the KV (decode slot/blocks, then link)"),
    "kv_transfer": (KV_TRANSFER_COLOR, "KV transfer to the decode instance"),
    "recompute": (RECOMPUTE_COLOR, "re-prefill after a preemption (prefill-only step)"),
    "decode": (DECODE_COLOR, "decode step (1 token)"),
    "burst": (BURST_COLOR, "step emitting >1 token (speculative burst)"),
}
# Legend labels that differ on a disaggregated instance.
_GANTT_ROLE_LABELS = {
    "prefill": {
        "kv_wait": "prefill done, KV held: waiting for\na decode slot/blocks, then the link",
        "kv_transfer": "KV transfer to a decode instance (blocks held until it ends)",
    },
    "decode": {
        "kv_wait": "handed over (1st token done): waiting for\n"
        "a slot/KV blocks here, then the link",
        "kv_transfer": "KV transfer from the prefill instance",
        "recompute": "re-prefill here after a preemption (prefill-only step)",
    },
}
_KV_DONE_LABELS = {
    "prefill": "transfer done: KV blocks freed here",
    "decode": "KV arrived: joins the next decode step",
}
_THIN_KINDS = ("queued", "kv_wait")


def step_timeline(
    result: SimulationResult,
    *,
    replica: int = 0,
    max_steps: int = 200,
    start_step: int = 0,
    max_requests: int = 80,
    token_budget: int | None = None,
    title: str | None = None,
    instance_label: str | None = None,
) -> Figure:
    """Gantt chart of a window of one replica's steps: which request ran in which step, and as
    what (queued, prefill, decode, burst), above the step's prefill/decode token counts.

    Membership is reconstructed from token times (see `_gantt`); gaps in a row are steps the
    request sat out (stalls, preemptions). `start_step`/`max_steps` count this replica's steps;
    at most `max_requests` rows are drawn (earliest arrivals first); `token_budget` draws
    `max_num_batched_tokens` on the lower panel. On a disaggregated run the instance's rows
    also show each request's KV handoff (wait, then transfer); `instance_label` (e.g. "decode
    instance 0 of 2") names the instance in the default title.
    """
    label = instance_label or _instance_label(result, replica)
    fig = _figure(11.0, 6.0)
    ax, ax_tok = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    ax.set_ylabel("request id")
    ax_tok.set_xlabel("time (s)")
    ax_tok.set_ylabel("tokens in step")
    gantt = _gantt(result, replica, start_step, max_steps, max_requests)
    if gantt is None:
        _no_data(ax, f"{label} ran no steps in this window")
        ax.set_title(title or f"Step timeline of {label}: no steps")
        return fig
    steps = result.steps
    window, rows, t0, t1 = gantt.window, gantt.rows, gantt.t0, gantt.t1
    starts = steps.started_at[window]
    durations = steps.duration_s[window]

    role_labels = _GANTT_ROLE_LABELS.get(gantt.role, {})
    handles = []
    for kind, segments in gantt.bars.items():
        if not segments:
            continue
        color, text = _GANTT_STYLE[kind]
        ys, lefts, rights = (np.array(c) for c in zip(*segments, strict=True))
        _add_rects(ax, lefts, rights - lefts, ys, 0.45 if kind in _THIN_KINDS else 0.8, color)
        handles.append(Patch(facecolor=color, label=role_labels.get(kind, text)))
    if gantt.kv_done:
        # A marker as well as the bar: transfers often last far less than a pixel.
        ys, xs = (np.array(c) for c in zip(*gantt.kv_done, strict=True))
        ax.plot(xs, ys, linestyle="none", marker="D", markersize=3.0,
                markerfacecolor=KV_TRANSFER_COLOR, markeredgecolor="black",
                markeredgewidth=0.4)
        handles.append(Line2D([], [], linestyle="none", marker="D", markersize=4,
                              markerfacecolor=KV_TRANSFER_COLOR, markeredgecolor="black",
                              markeredgewidth=0.4, label=_KV_DONE_LABELS[gantt.role]))
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
        or f"Who ran in which step: {label}, steps {first}-{last} of "
        f"{gantt.num_replica_steps}"
    )
    note = f"{shown} shown"
    if gantt.num_waiting:
        note += f"; {gantt.num_waiting} more still queued at the end of the window (not shown)"
    if gantt.role == "decode":
        note += ("; rows start at the first token, made on a prefill instance; "
                 "blank stretches: steps the request sat out (e.g. preempted, waiting to "
                 "recompute)")
    elif gantt.role == "prefill":
        note += "; later tokens come from a decode instance (not shown here)"
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
    steady stream is a smooth ramp, a stall a plateau and a speculative burst a tall step.

    On a disaggregated run each request's KV transfer (prefill -> decode instance) is shaded
    between its first and second token, and a lower panel zooms in on that handoff (wait,
    transfer, then the first decode step), which is usually far too short to see in seconds.
    """
    if labels is not None and len(labels) != len(request_ids):
        raise ValueError(f"got {len(labels)} labels for {len(request_ids)} requests")
    hand = _handoff(result)
    handed = [int(r) for r in request_ids
              if hand is not None and np.isfinite(hand.end[int(r)])]
    if handed:
        fig = _figure(8.0, 6.6)
        ax, ax_kv = fig.subplots(2, 1, height_ratios=(3, 1.1))
    else:
        fig = _figure(8.0, 4.8)
        ax = fig.subplots()
        ax_kv = None
    ax.set_xlabel("time since arrival (s)")
    ax.set_ylabel("output tokens received")
    drawn = 0
    colors: dict[int, str] = {}
    names: dict[int, str] = {}
    for i, rid in enumerate(request_ids):
        rid = int(rid)
        times = result.tokens_of(rid) - result.arrived_at[rid]
        name = labels[i] if labels is not None else f"request {rid}"
        names[rid] = name
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
        colors[rid] = line.get_color()
        ax.plot(times[0], 1, marker="o", color=line.get_color(), markersize=5)
        if rid in handed:
            assert hand is not None
            lo, hi = (float(v[rid] - result.arrived_at[rid]) for v in (hand.start, hand.end))
            ax.fill_between([lo, hi], 0.0, 2.0, color=KV_TRANSFER_COLOR, alpha=0.35,
                            linewidth=0)
            ax.plot(hi, 1, marker="D", markersize=4, markerfacecolor=KV_TRANSFER_COLOR,
                    markeredgecolor="black", markeredgewidth=0.4, linestyle="none")
        drawn += 1
    if not drawn:
        _no_data(ax, "no tokens to draw")
    ax.set_xlim(left=0.0)
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.3", marker="o", linestyle="none",
                          label="first token (TTFT)"))
    if handed:
        handles.append(Patch(facecolor=KV_TRANSFER_COLOR, alpha=0.35,
                             label="KV transfer to the decode instance (zoomed below)"))
    # Staircases climb from the lower left, so a long legend goes to the lower right.
    ax.legend(handles=handles, fontsize=8, loc="lower right" if handed else "upper left")
    ax.set_title(
        title or "Output tokens received over time (plateau = stall, tall step = burst)"
    )
    if ax_kv is not None:
        assert hand is not None
        _handoff_panel(ax_kv, result, hand, handed, names, colors)
    return fig


def _handoff_panel(ax: Axes, result: SimulationResult, hand: _Handoff, request_ids: list[int],
                   names: Mapping[int, str], colors: Mapping[int, str]) -> None:
    """Zoom on each request's first -> second token (ms after the first token): the wait for a
    decode slot/blocks and the link, the KV transfer, then the decode step that emits token 2."""
    second = {}
    for rid in request_ids:
        tokens = result.tokens_of(rid)
        if tokens.size > 1:
            second[rid] = (tokens[1] - hand.first_token[rid]) * 1e3
    waits = [(hand.start[r] - hand.first_token[r]) * 1e3 for r in request_ids]
    transfers = [(hand.end[r] - hand.start[r]) * 1e3 for r in request_ids]
    rows = np.arange(len(request_ids))
    ax.barh(rows, waits, height=0.45, color=KV_WAIT_COLOR, edgecolor="0.5", linewidth=0.4,
            label="wait for a decode slot/KV blocks, then the link")
    ax.barh(rows, transfers, left=waits, height=0.8, color=KV_TRANSFER_COLOR,
            label="KV transfer")
    for row, rid in enumerate(request_ids):
        if rid in second:
            ax.plot(second[rid], row, marker="o", color=colors.get(rid, "0.3"), markersize=5,
                    linestyle="none")
    ax.plot([], [], marker="o", color="0.3", linestyle="none",
            label="second token (first decode step done)")
    ax.set_yticks(rows, [names[r].split(" (")[0] for r in request_ids], fontsize=7)
    ax.set_ylim(len(request_ids) - 0.5, -0.5)
    ax.set_xlim(left=0.0)
    ax.set_xlabel("time after the first token (ms)")
    ax.set_ylabel("request")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.42), ncols=3,
              frameon=False)
    ax.set_title("KV handoff zoomed in: first token (prefill instance) -> second token "
                 "(decode instance)", fontsize=9)


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


def _kv_release_times(result: SimulationResult, replica: int) -> tuple[np.ndarray, np.ndarray]:
    """When an instance freed KV blocks other than by preempting: (finish times, ends of KV
    transfers out of it). A co-located replica or a decode instance frees blocks when its
    requests finish; a prefill instance when a one-token request finishes there or when a
    request's KV transfer to a decode instance ends."""
    role = _role(result, replica)
    done = np.isfinite(result.finished_at)
    none = np.zeros(0)
    if role == "replica":
        return result.finished_at[(result.replica == replica) & done], none
    assert result.decode_replica is not None
    if role == "decode":
        return result.finished_at[(result.decode_replica == replica) & done], none
    hand = _handoff(result)
    assert hand is not None
    here = result.replica == replica
    transferred = here & np.isfinite(hand.end)
    return result.finished_at[here & ~transferred & done], hand.end[transferred]


def _preemption_steps(result: SimulationResult, step_ids: np.ndarray) -> np.ndarray:
    """Steps (of one replica, time order) in which KV blocks were freed while no request
    finished (nor, on a prefill instance, handed its KV off): only a preemption frees blocks
    otherwise (a lower bound on preemption steps).

    NOTE: blocks are freed only by finishing or preempting requests (speculative rejections
    free blocks allocated in the same step, so a step never nets a drop from them), and on a
    prefill instance by KV transfers ending between steps, so a drop without one of those is a
    preemption; a preemption hidden by growth in the same step is missed. A transfer that ends
    exactly at a step's end may land before or after that step's record, so it explains a drop
    in either. Steps of pipeline-parallel virtual engines (each with its own blocks) interleave
    in one instance's log, so their drops mean nothing: callers skip those instances (and
    an instance whose steps overlap in time gets none).
    """
    if step_ids.size < 2 or _has_virtual_engines(result, step_ids):
        return np.zeros(0, dtype=np.int64)
    used = result.steps.kv_blocks_used[step_ids]
    ends = _step_ends_s(result)[step_ids]
    replica = int(result.steps.replica[step_ids[0]])
    fin, released = _kv_release_times(result, replica)
    last = ends.size - 1
    at = np.searchsorted(ends, fin)
    explained = np.bincount(np.clip(at, 0, last), minlength=ends.size) > 0
    for side in ("left", "right"):
        at = np.searchsorted(ends, released, side=side)
        explained |= np.bincount(np.clip(at, 0, last), minlength=ends.size) > 0
    dropped = np.concatenate(([False], np.diff(used) < 0))
    return step_ids[dropped & ~explained]


def _count_between(lo: np.ndarray, hi: np.ndarray, at: np.ndarray) -> np.ndarray:
    """How many of the intervals [lo, hi) contain each time in `at` (NaN bounds never do)."""
    keep = np.isfinite(lo)
    lo, hi = np.sort(lo[keep]), np.sort(np.where(np.isnan(hi[keep]), np.inf, hi[keep]))
    return np.searchsorted(lo, at, side="right") - np.searchsorted(hi, at, side="right")


def _plot_handed_over(ax: Axes, result: SimulationResult, on_replica: np.ndarray,
                      times_s: np.ndarray, label: str) -> None:
    """Requests between their first token and the end of their KV transfer, over time."""
    hand = _handoff(result)
    assert hand is not None
    count = _count_between(hand.first_token[on_replica], hand.end[on_replica], times_s)
    ax.step(times_s, count, where="post", color=KV_TRANSFER_COLOR, linewidth=1.0, label=label)


def kv_occupancy(result: SimulationResult, *, replica: int = 0, title: str | None = None,
                 instance_label: str | None = None, pp: int | None = None) -> Figure:
    """KV-cache blocks in use (% of the replica's blocks) after every step, with steps that must
    have preempted marked, above the number of running and queued requests, so memory
    pressure and what it does to batching can be seen together.

    On a disaggregated run a prefill instance's KV includes prompts held until their transfer
    to a decode instance ends (not preemptions), and the lower panel counts those; a decode
    instance's includes blocks reserved for transfers in flight. With `pp` > 1 pipeline stages
    (None: inferred from overlapping steps) the instance runs `pp` virtual engines, each with
    its own share of the blocks: every step is a dot (% of that engine's blocks) and no
    preemption is inferred, the count coming from the request records.
    """
    step_ids = _replica_step_ids(result, replica)
    label = instance_label or _instance_label(result, replica)
    role = _role(result, replica)
    fig = _figure(10.0, 5.5)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    ax.set_ylabel("KV blocks used (%)")
    ax_n.set_xlabel("time (s)")
    ax_n.set_ylabel("requests")
    if role == "decode":
        assert result.decode_replica is not None
        on_replica = result.decode_replica == replica
    else:
        on_replica = result.replica == replica
    num_preemptions = int(result.num_preemptions[on_replica].sum())
    if step_ids.size == 0:
        _no_data(ax, f"{label} ran no steps")
        ax.set_title(title or f"KV-cache occupancy of {label}: no steps")
        return fig
    virtual = pp > 1 if pp is not None else _has_virtual_engines(result, step_ids)
    steps = result.steps
    ends = _step_ends_s(result)[step_ids]
    total = steps.kv_blocks_total[step_ids]  # per virtual engine with pipeline parallelism
    used_pct = 100.0 * steps.kv_blocks_used[step_ids] / np.maximum(total, 1)
    starts = steps.started_at[step_ids]
    seqs = steps.num_seqs[step_ids]
    if virtual:
        # Virtual engines take turns in the log: a line through them would zigzag.
        dots = {"linestyle": "none", "marker": ".", "markersize": 2.5, "color": DECODE_COLOR}
        ax.plot(ends, used_pct, **dots,
                label="KV blocks used by the virtual engine\nthat ran the step (1 dot per step)")
        ax.axhline(100.0, color="0.3", linestyle="--", linewidth=1,
                   label=f"capacity ({int(total.max())} blocks per virtual engine)")
        marked = np.zeros(0, dtype=np.int64)
        ax_n.plot(ends, seqs, **dots, label="sequences in the step")
        x = starts
    else:
        # Blocks are allocated when a step begins and stay until a later step frees them, so
        # the level after step i holds from its start to the next step's start (idle gaps
        # included).
        x = np.concatenate((starts, ends[-1:]))
        y = np.concatenate((used_pct, used_pct[-1:]))
        ax.step(x, y, where="post", color=DECODE_COLOR, linewidth=1.0, label="KV blocks used")
        ax.fill_between(x, y, step="post", color=DECODE_COLOR, alpha=0.2)
        ax.axhline(100.0, color="0.3", linestyle="--", linewidth=1,
                   label=f"capacity ({int(total.max())} blocks)")
        marked = _preemption_steps(result, step_ids)
        ax_n.step(x, np.concatenate((seqs, seqs[-1:])), where="post", color=DECODE_COLOR,
                  linewidth=1.0, label="sequences in the step")
    if marked.size:
        t_marked = _step_ends_s(result)[marked]
        pct_marked = 100.0 * steps.kv_blocks_used[marked] / np.maximum(steps.kv_blocks_total[
            marked], 1)
        why = ("KV freed, no request finished or handed off" if role == "prefill"
               else "KV freed, no request finished")
        ax.plot(t_marked, pct_marked, linestyle="none", marker="x", color=PREEMPT_COLOR,
                markersize=6, label=f"preemption ({why})")
    ax.set_ylim(0.0, 105.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    plural = "s" if num_preemptions != 1 else ""
    if role == "prefill":
        # NOTE: `num_preemptions` is per request and does not say on which instance it
        # happened, so a prefill instance states the preemption steps found in its own log
        # (partial prefills are preempted when KV held for transfers fills it).
        found = (f"{marked.size} step{'s' if marked.size != 1 else ''} with a preemption"
                 if marked.size else "no preemption found")
        default = (f"KV-cache occupancy of {label}: peak {used_pct.max():.0f}%, {found}\n"
                   "(each prompt's KV stays until its transfer to a decode instance ends)")
    elif role == "decode":
        default = (f"KV-cache occupancy of {label}: peak {used_pct.max():.0f}%, "
                   f"{num_preemptions} preemption{plural} of its requests")
        if num_preemptions:
            default += ("\n(counted per request: includes any during their prefill on a "
                        "prefill instance)")
    else:
        default = (f"KV-cache occupancy of {label}: peak {used_pct.max():.0f}%, "
                   f"{num_preemptions} preemption{plural}")
    if virtual:
        default += (f"\n({pp} pipeline-parallel virtual engines" if pp is not None
                    else "\n(pipeline-parallel virtual engines") + ", each with its own blocks)"
    ax.set_title(title or default)

    if role == "decode":
        _plot_handed_over(ax_n, result, on_replica, x,
                          "handed over, KV not arrived yet\n(waiting or in transfer)")
    else:
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
        if role == "prefill":
            _plot_handed_over(ax_n, result, on_replica, starts,
                              "prefill done, KV held until\nits transfer ends")
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
    policy = scenario.engine.policy
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
                result, first, label, f"{scenario.name}, {pool.setup.policy}",
                pool.setup.limits.max_num_batched_tokens if pool.role == "prefill" else None,
            )
            first += n
    else:
        num_replicas = scenario.cluster.replicas
        of_replicas = f" of {num_replicas}" if num_replicas > 1 else ""
        figures["step_timeline"] = _mid_run_timeline(
            result, 0, f"replica 0{of_replicas}", f"{scenario.name}, {policy}",
            scenario.engine.max_num_batched_tokens,
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
