"""One figure per catalog entry: the unfair and the fair setup side by side, and the verdict.

Figures are drawn from the same plain data as verdicts.json and report.md (never from the runs),
so a figure cannot show a number the report does not. The left and middle panels show what each
evaluator looks at: bars with 95% intervals for a single rate, bars up to the first failing
rate for a capacity (with each system's saturation, the ceiling no steady-state capacity can
pass), lines with interval bands for a sweep. The right panel shows what carries the verdict:
the candidate's advantage in each setup with its paired 95% interval (or the range the
bisection brackets allow), against the tie band; for an entry about a dependence (ES3), each
system's factor per doubling against the flat band. Panel titles are one line; what each
evaluator did is in the report. Matplotlib `Figure` objects are built directly (Agg, no pyplot).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter

from simserve.formatting import fmt_interval, fmt_number, fmt_percent, fmt_ratio
from simserve.plots.canvas import (
    SLO_COLOR,
    figure_png,
    number_ticks,
    plain_log_ticks,
    system_colors,
)

__all__ = ["entry_figure", "entry_png", "save_entry_figure"]

DPI = 130
SATURATION_COLOR = "0.15"
RATIO_TICKS = (0.05, 0.1, 0.2, 0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0,
               10.0, 20.0)


def _number(value: Any) -> float:
    if value == "inf":
        return math.inf
    return float(value) if isinstance(value, int | float) else math.nan


def _bars(ax: Axes, names: Sequence[str], values: Sequence[float | None],
          errors: Sequence[tuple[float, float] | None], colors: Sequence[str],
          hatches: Sequence[str] = ()) -> np.ndarray:
    """Bars with asymmetric whiskers and the value printed on each; returns the bar centres."""
    xs = np.arange(len(names))
    heights = np.array([v if v is not None and math.isfinite(v) else np.nan for v in values])
    ax.bar(xs, np.nan_to_num(heights), color=colors, width=0.6,
           hatch=list(hatches) or None, edgecolor="white")
    for x, height, error in zip(xs, heights, errors, strict=True):
        top = height if np.isfinite(height) else 0.0
        if error is not None and np.isfinite(height):
            low, high = error
            ax.errorbar([x], [height], yerr=[[max(height - low, 0.0)], [max(high - height, 0.0)]],
                        color="0.2", capsize=5, linewidth=1.2)
        label = "n/a" if np.isnan(height) else fmt_number(float(height))
        # The value sits on its bar (whiskers and reference lines may cross above it).
        ax.annotate(label, (x + 0.06, top), xytext=(0, 3), textcoords="offset points",
                    ha="left", va="bottom", fontsize=8,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                          "edgecolor": "none", "alpha": 0.85})
    ax.set_xticks(xs, list(names))
    ax.margins(y=0.15)
    ax.set_ylim(bottom=0)
    return xs


def _point_panel(ax: Axes, setup: Mapping[str, Any], names: Sequence[str],
                 colors: Sequence[str]) -> str:
    key = setup["verdict_metric"]
    values = [setup["systems"][n]["point"]["values"][key] for n in names]
    _bars(ax, names, [v["value"] for v in values],
          [tuple(v["ci"]) if v["ci"] else None for v in values], colors)
    ax.set_ylabel(setup["metric_info"][key]["axis_label"])
    point = setup["systems"][names[0]]["point"]
    where = ("offline (all at t = 0)" if point["rate_rps"] is None
             else f"at {fmt_number(point['rate_rps'], 'req/s')}")
    return f"{setup['metric_info'][key]['label']} {where}"


def _capacity_panel(ax: Axes, setup: Mapping[str, Any], names: Sequence[str],
                    colors: Sequence[str]) -> str:
    caps = [setup["systems"][n]["capacity"] for n in names]
    per_gpu = setup["verdict_metric"] == "capacity_per_gpu_rps"
    values, errors, saturations = [], [], []
    for cap in caps:
        # NOTE: per GPU, every number of a system (capacity, first failing rate, saturation) is
        # divided by the GPUs that system occupies.
        scale = 1.0 / cap["num_gpus"] if per_gpu and cap.get("num_gpus") else 1.0
        value = cap["capacity_rps"] if cap["bounded"] else None
        values.append(None if value is None else value * scale)
        high = cap["high_rps"]
        errors.append((value * scale, high * scale) if value is not None and high else None)
        sat = cap.get("saturation_rps")
        saturations.append(None if sat is None else sat * scale)
    hatches = ["//" if cap.get("capped") else "" for cap in caps]
    xs = _bars(ax, names, values, errors, colors, hatches)
    for x, sat in zip(xs, saturations, strict=True):
        if sat is not None:
            ax.hlines(sat, x - 0.38, x + 0.38, color=SATURATION_COLOR, linestyles="--",
                      linewidth=1.3)
    handles = [Line2D([], [], color=SATURATION_COLOR, linestyle="--",
                      label="its saturation: no steady-state capacity is higher")]
    if any(hatches):
        handles.append(Patch(facecolor="0.55", hatch="//", edgecolor="white",
                             label="capped by the overload guard, not the SLO"))
    censored = [n for n, cap in zip(names, caps, strict=True) if not cap["bounded"]]
    if censored:
        handles.append(Patch(facecolor="none", edgecolor="none",
                             label=f"n/a: censored ({', '.join(censored)})"))
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.07),
              ncols=2, frameon=False)
    ax.set_ylim(top=max([ax.get_ylim()[1]] + [1.12 * s for s in saturations if s]))
    unit = "req/s per GPU" if per_gpu else "req/s"
    ax.set_ylabel(f"capacity{' per GPU' if per_gpu else ''} ({unit})")
    return f"capacity, {caps[0].get('rule_words') or caps[0]['rule']}"


def _sweep_panel(ax: Axes, setup: Mapping[str, Any], names: Sequence[str],
                 colors: Sequence[str]) -> str:
    key = setup["verdict_metric"]
    axis = setup["measure"]["axis"]
    x_key = "num_requests" if axis == "requests" else "rate_rps"
    summary_index = next((p["index"] for p in setup.get("per_point", []) if p["summary"]), -1)
    for name, color in zip(names, colors, strict=True):
        points = setup["systems"][name]["sweep"]
        xs = np.array([p[x_key] for p in points], dtype=float)
        values = np.array([np.nan if p["values"][key]["value"] is None
                           else p["values"][key]["value"] for p in points])
        over = np.array([bool(p.get("overloaded")) for p in points])
        ax.plot(xs, np.where(over, np.nan, values), marker="o", markersize=4, color=color,
                label=name)
        if over.any():
            # Past saturation: hollow points on a dotted line (not a steady state).
            tail = slice(max(int(np.argmax(over)) - 1, 0), None)
            ax.plot(xs[tail], values[tail], linestyle=":", color=color, linewidth=1.0)
            ax.plot(xs[over], values[over], linestyle="none", marker="o", markersize=5,
                    markerfacecolor="white", color=color)
        cis = [p["values"][key]["ci"] for p in points]
        if all(ci is not None for ci in cis):
            ax.fill_between(xs, [c[0] for c in cis], [c[1] for c in cis], color=color,
                            alpha=0.2, linewidth=0)
        ax.plot([xs[summary_index]], [values[summary_index]], marker="o", markersize=10,
                markerfacecolor="none", markeredgecolor="0.2")
    first = setup["systems"][names[0]]["sweep"]
    if axis == "requests":
        ax.set_xscale("log", base=2)
        ticks = [p[x_key] for p in first]
        ax.set_xticks(ticks, [fmt_number(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("requests simulated")
        where = (f"{setup['metric_info'][key]['label']} at "
                 f"{fmt_number(first[0]['rate_rps'], 'req/s')} vs the run length")
    else:
        ax.set_xlabel("arrival rate (req/s)")
        where = f"{setup['metric_info'][key]['label']} vs the arrival rate"
    ax.set_ylabel(setup["metric_info"][key]["axis_label"])
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="o", markersize=9, markerfacecolor="none",
                          markeredgecolor="0.2", linestyle="none", label="verdict point"))
    if any(p.get("overloaded") for n in names for p in setup["systems"][n]["sweep"]):
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white",
                              linestyle=":", label="past its saturation"))
    ax.legend(handles=handles, fontsize=7)
    ax.set_ylim(bottom=0)
    return where


def _advantage_rows(entry: Mapping[str, Any]) -> list[tuple[str, float, tuple | None, str]]:
    """(label, ratio, interval, interval kind) of the candidate's advantage in each setup."""
    rows = []
    for key in ("unfair", "fair"):
        c = entry[key]["conclusion"]
        ratio = _number(c["ratio"]) if c["ratio"] is not None else math.nan
        ci = None if c["ratio_ci"] is None else (_number(c["ratio_ci"][0]),
                                                 _number(c["ratio_ci"][1]))
        rows.append((key, ratio, ci, c["ratio_ci_kind"]))
    return rows


def _trend_rows(entry: Mapping[str, Any]) -> list[tuple[str, float, tuple | None, str]]:
    """(label, factor per doubling, None, "") of every system in each setup."""
    rows = []
    for key in ("unfair", "fair"):
        for name, t in entry[key]["trend"]["systems"].items():
            factor = t["per_doubling"]
            rows.append((f"{key}: {name}", math.nan if factor is None else factor, None, ""))
    return rows


def _verdict_panel(ax: Axes, band: float, title: str, xlabel: str,
                   rows: Sequence[tuple[str, float, tuple | None, str]], missing: str) -> None:
    """Ratios on a log axis (one row each, top to bottom) with their intervals, against a
    shaded band around 1 inside which a ratio means "no difference"."""
    ys = np.arange(len(rows))[::-1]
    values = [r for _l, r, _c, _k in rows if math.isfinite(r) and r > 0]
    values += [v for _l, _r, c, _k in rows if c for v in c if math.isfinite(v) and v > 0]
    lo = min([*values, 1.0 / (1.0 + band)]) / 1.4
    hi = max([*values, 1.0 + band]) * 1.8  # room for the label of the rightmost ratio
    ax.axvspan(1.0 / (1.0 + band), 1.0 + band, color="0.85", linewidth=0,
               label=f"within ±{fmt_percent(band)} of 1")
    ax.axvline(1.0, color="0.3", linewidth=1.0)
    for y, (_label, ratio, ci, kind) in zip(ys, rows, strict=True):
        if not (math.isfinite(ratio) and ratio > 0):
            ax.annotate(missing, (1.0, y), ha="center", va="center", fontsize=8, color="0.3")
            continue
        if ci is not None and all(math.isfinite(v) and v > 0 for v in ci):
            ax.errorbar([ratio], [y], xerr=[[max(ratio - ci[0], 0.0)], [max(ci[1] - ratio, 0.0)]],
                        color="0.1", capsize=4, linewidth=1.3, marker="o", markersize=6)
            text = f"{fmt_ratio(ratio)} ({fmt_interval(ci[0], ci[1], what=kind, ratio=True)})"
        else:
            ax.plot([ratio], [y], marker="o", color="0.1", markersize=6)
            text = fmt_ratio(ratio)
        ax.annotate(text, (ratio, y), xytext=(0, 9), textcoords="offset points", ha="center",
                    fontsize=7.5)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    # Ratios read best at round values, whatever the span (a log axis over less than a decade
    # has no labelled decade ticks).
    ticks = [t for t in RATIO_TICKS if lo <= t <= hi]
    while len(ticks) > 7:  # thin out, keeping 1 (the axis always holds the tie band)
        one = ticks.index(1.0)
        ticks = [t for i, t in enumerate(ticks) if (i - one) % 2 == 0]
    ax.set_xticks(ticks, [fmt_number(t) for t in ticks], fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3, which="both")


def entry_figure(entry: Mapping[str, Any]) -> Figure:
    """Unfair (left) and fair (middle) panels of one entry's verdicts data, and the verdict
    (right)."""
    names = list(entry["systems"])
    palette = system_colors(names)
    colors = [palette[n] for n in names]
    fig = Figure(figsize=(15.0, 5.0), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=(1.0, 1.0, 0.75))
    for ax, key in zip(axes[:2], ("unfair", "fair"), strict=True):
        setup = entry[key]
        kind = setup["measure"]["kind"]
        if kind == "point":
            what = _point_panel(ax, setup, names, colors)
        elif kind == "capacity":
            what = _capacity_panel(ax, setup, names, colors)
        else:
            what = _sweep_panel(ax, setup, names, colors)
        slo = setup.get("slo_line")
        if slo:
            ax.axhline(slo[0], color=SLO_COLOR, linestyle="--", linewidth=1.2, label=slo[1])
            ax.legend(fontsize=7)
            ax.set_ylim(top=max(ax.get_ylim()[1], slo[0] * 1.15))
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{key.capitalize()} setup: {what}", fontsize=9)
        if ax.get_yscale() == "linear":
            number_ticks(ax.yaxis)
    _share_scale(entry, axes[:2])
    if entry.get("outcome_on") == "trend":
        axis = entry["unfair"]["measure"]["axis"]
        what = "the requests simulated" if axis == "requests" else "the arrival rate"
        _verdict_panel(axes[2], entry["trend_margin"], "What the entry is about: the dependence",
                       f"factor per doubling of {what}", _trend_rows(entry), "undetermined")
    else:
        _verdict_panel(axes[2], entry["tie_margin"], "Verdict of each setup",
                       f"advantage of {entry['candidate']} (> 1: better)",
                       _advantage_rows(entry), "could not be decided")
    items = ", ".join(entry["checklist"])
    fig.suptitle(f"{entry['id']}: {entry['title']} (outcome: {entry['outcome']}; "
                 f"checklist {items})", fontsize=11)
    return fig


def _share_scale(entry: Mapping[str, Any], axes: Sequence[Axes]) -> None:
    """One metric on both sides: one y scale, so the panels compare at a glance; for a sweep a
    log scale when one side is more than 10x the other (a queue that never drains); separate
    scales when two workloads differ in scale (ES1)."""
    unfair, fair = entry["unfair"], entry["fair"]
    if (unfair["verdict_metric"] != fair["verdict_metric"]
            or unfair["measure"]["kind"] != fair["measure"]["kind"]):
        return
    tops = [ax.get_ylim()[1] for ax in axes]
    if unfair["measure"]["kind"] != "sweep" and max(tops) > 3 * min(tops):
        return
    if unfair["measure"]["kind"] == "sweep" and max(tops) > 10 * min(tops):
        for ax in axes:
            ax.set_yscale("log")
            ax.autoscale(axis="y")
        lows = [ax.get_ylim()[0] for ax in axes]
        tops = [ax.get_ylim()[1] for ax in axes]
        for ax in axes:
            ax.set_ylim(min(lows), max(tops))
            plain_log_ticks(ax.yaxis)
        return
    for ax in axes:
        ax.set_ylim(0, max(tops))


def entry_png(entry: Mapping[str, Any]) -> bytes:
    """An entry's figure drawn as PNG bytes (drawn as its entry finishes, written with the
    report)."""
    return figure_png(entry_figure(entry), dpi=DPI, crop=False)


def save_entry_figure(entry: Mapping[str, Any], path: str | Path,
                      png: bytes | None = None) -> Path:
    """Write an entry's figure as PNG (`png`: already drawn by `entry_png`)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(entry_png(entry) if png is None else png)
    return out
