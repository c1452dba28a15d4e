"""KV-cache occupancy of one instance over time, with the steps that preempted."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from simserve.engine.records import SimulationResult
from simserve.formatting import fmt_number, fmt_percent
from simserve.plots.canvas import (
    DECODE_COLOR,
    KV_TRANSFER_COLOR,
    PREEMPT_COLOR,
    _figure,
    _no_data,
)
from simserve.plots.instances import (
    _handoff,
    _has_virtual_engines,
    _instance_label,
    _replica_step_ids,
    _role,
    _step_ends_s,
)

__all__ = ["kv_occupancy"]


def _preemption_steps(result: SimulationResult, step_ids: np.ndarray) -> np.ndarray:
    """The steps among `step_ids` (one instance's, time order) planned with a preemption."""
    return step_ids[result.steps.num_preempted[step_ids] > 0]


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
    """KV-cache blocks in use (% of the replica's blocks) after every step, with the steps that
    preempted marked, above the number of running and queued requests, so memory pressure and
    what it does to batching can be seen together.

    On a disaggregated run a prefill instance's KV includes prompts held until their transfer
    to a decode instance ends (not preemptions), and the lower panel counts those; a decode
    instance's includes blocks reserved for transfers in flight. With `pp` > 1 pipeline stages
    (None: inferred from overlapping steps) the instance runs `pp` virtual engines, each with
    its own share of the blocks: every step is a dot (% of that engine's blocks). Preemptions
    are the engine's own per-step count (`steps.num_preempted`) on this instance.
    """
    step_ids = _replica_step_ids(result, replica)
    label = instance_label or _instance_label(result, replica)
    role = _role(result, replica)
    # A panel of prefix-cache hits, where any prompt found any (not a flat 0 otherwise).
    cached = result.cached_tokens is not None and role != "decode" \
        and bool(result.cached_tokens.any())
    fig = _figure(10.0, 7.5 if cached else 5.5)
    if cached:
        ax, ax_n, ax_hit = fig.subplots(3, 1, sharex=True, height_ratios=(2, 1, 1))
        ax_n.tick_params(labelbottom=False)
    else:
        ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
        ax_hit = None
    ax.set_ylabel("KV blocks used (%)")
    ax_n.set_xlabel("time (s)")
    ax_n.set_ylabel("requests")
    if role == "decode":
        assert result.decode_replica is not None
        on_replica = result.decode_replica == replica
    else:
        on_replica = result.replica == replica
    num_preemptions = int(result.steps.num_preempted[step_ids].sum())
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
                   label=f"capacity ({fmt_number(total.max())} blocks per virtual engine)")
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
                   label=f"capacity ({fmt_number(total.max())} blocks)")
        ax_n.step(x, np.concatenate((seqs, seqs[-1:])), where="post", color=DECODE_COLOR,
                  linewidth=1.0, label="sequences in the step")
    marked = _preemption_steps(result, step_ids)
    if marked.size:
        t_marked = _step_ends_s(result)[marked]
        pct_marked = 100.0 * steps.kv_blocks_used[marked] / np.maximum(steps.kv_blocks_total[
            marked], 1)
        ax.plot(t_marked, pct_marked, linestyle="none", marker="x", color=PREEMPT_COLOR,
                markersize=6, label="step that preempted (recompute: KV freed, request requeued)")
    ax.set_ylim(0.0, 105.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    plural = "s" if num_preemptions != 1 else ""
    default = (f"KV-cache occupancy of {label}: peak {fmt_percent(used_pct.max() / 100)}, "
               f"{num_preemptions} preemption{plural}" + (" here" if role != "replica" else ""))
    if role == "prefill":
        default += "\n(each prompt's KV stays until its transfer to a decode instance ends)"
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
    if ax_hit is not None:
        ax_n.set_xlabel("")
        ax_hit.set_xlabel("time (s)")
        _plot_hit_rate(ax_hit, result, on_replica)
    return fig


def _plot_hit_rate(ax: Axes, result: SimulationResult, on_replica: np.ndarray) -> None:
    """Prefix-cache hits of the requests first admitted here, over time: the share of their
    prompt tokens found cached, over a moving window of admissions (recomputes excluded)."""
    assert result.cached_tokens is not None
    admitted = on_replica & np.isfinite(result.first_scheduled_at)
    order = np.argsort(result.first_scheduled_at[admitted], kind="stable")
    at = result.first_scheduled_at[admitted][order]
    hit = result.cached_tokens[admitted][order].astype(np.float64)
    prompt = result.prompt_len[admitted][order].astype(np.float64)
    ax.set_ylabel("prefix-cache\nhits (%)")
    ax.set_ylim(0.0, 105.0)
    ax.grid(alpha=0.3)
    if at.size == 0:
        _no_data(ax, "no request admitted here")
        return
    window = max(1, min(50, at.size // 10))
    hits = np.convolve(hit, np.ones(window), mode="valid")
    tokens = np.convolve(prompt, np.ones(window), mode="valid")
    ax.plot(at[window - 1:], 100.0 * hits / tokens, color=DECODE_COLOR, linewidth=1.0,
            label=f"prompt tokens found cached\n(last {window} admissions)")
    total = 100.0 * hit.sum() / prompt.sum()
    ax.axhline(total, color="0.3", linestyle=":", linewidth=1,
               label=f"whole run: {fmt_percent(total / 100)}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
