"""Timelines of one run: the step timeline (a Gantt chart of which request ran in which step
of one instance, and as what) and the token timeline (output tokens of a few requests over
time, with a zoom on the KV handoff of a disaggregated run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from simserve.engine.records import SimulationResult
from simserve.formatting import fmt_number
from simserve.plots.canvas import (
    BURST_COLOR,
    DECODE_COLOR,
    KV_TRANSFER_COLOR,
    KV_WAIT_COLOR,
    PREFILL_COLOR,
    PREFILL_SPAN_COLOR,
    QUEUED_COLOR,
    RECOMPUTE_COLOR,
    _figure,
    _no_data,
)
from simserve.plots.instances import (
    _Handoff,
    _handoff,
    _instance_label,
    _replica_step_ids,
    _role,
    _step_ends_s,
)

__all__ = ["step_timeline", "token_timeline"]


# --------------------------------------------------------------------------- step timeline


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
                       label=f"token budget ({fmt_number(token_budget)})")
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
    colors: Sequence[str] | None = None,
) -> Figure:
    """Cumulative output tokens against time since arrival, one staircase per request, so a
    steady stream is a smooth ramp, a stall a plateau and a speculative burst a tall step.
    `colors` (one per request) gives each staircase its system's colour.

    On a disaggregated run each request's KV transfer (prefill -> decode instance) is shaded
    between its first and second token, and a lower panel zooms in on that handoff (wait,
    transfer, then the first decode step), which is usually far too short to see in seconds.
    """
    if labels is not None and len(labels) != len(request_ids):
        raise ValueError(f"got {len(labels)} labels for {len(request_ids)} requests")
    if colors is not None and len(colors) != len(request_ids):
        raise ValueError(f"got {len(colors)} colors for {len(request_ids)} requests")
    line_colors = None if colors is None else list(colors)
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
        detail = f"TTFT {fmt_number(times[0] * 1e3)} ms, {times.size} tokens"
        if gaps.size:
            detail += f", largest gap {fmt_number(gaps.max() * 1e3)} ms"
        x = np.concatenate(([0.0], times))
        y = np.arange(x.size)
        (line,) = ax.step(x, y, where="post", linewidth=1.5, label=f"{name}: {detail}",
                          color=None if line_colors is None else line_colors[i])
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
