"""One figure per catalog entry: the unfair and the fair setup side by side, from verdicts data.

Figures are drawn from the same plain data as verdicts.json and report.md (never from the runs),
so a figure cannot show a number the report does not. Each panel shows what its evaluator looks
at: bars with 95% confidence intervals for a single rate, bars with the bisection bracket for a
capacity, lines with confidence bands for a sweep; SLO lines and the saturation throughput are
drawn where they apply. Matplotlib `Figure` objects are built directly (Agg, no pyplot).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["entry_figure", "save_entry_figure"]

# Okabe-Ito colour-blind-safe palette, one colour per system in catalog order.
COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")
SLO_COLOR = "#D55E00"
DPI = 130


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _short_verdict(conclusion: Mapping[str, Any]) -> str:
    ratio = conclusion["ratio"]
    if ratio is None:
        return "no verdict"
    ratio = math.inf if ratio == "inf" else float(ratio)
    if conclusion["winner"] is None:
        return f"no clear winner ({ratio:.2f}x)"
    magnitude = ratio if ratio >= 1 else 1.0 / ratio
    text = "unboundedly" if math.isinf(magnitude) else f"{magnitude:.2f}x"
    return f"verdict: {conclusion['winner']} {text} better"


def _bars(ax: Axes, names: Sequence[str], means: Sequence[float | None],
          errors: Sequence[tuple[float, float] | None], colors: Sequence[str],
          prefixes: Sequence[str]) -> None:
    """Bars with asymmetric error bars and the value printed on each."""
    xs = np.arange(len(names))
    heights = np.array([m if m is not None and math.isfinite(m) else np.nan for m in means])
    ax.bar(xs, np.nan_to_num(heights), color=colors, width=0.6)
    for x, height, error, prefix in zip(xs, heights, errors, prefixes, strict=True):
        if error is not None and np.isfinite(height):
            low, high = error
            ax.errorbar([x], [height], yerr=[[max(height - low, 0.0)], [max(high - height, 0.0)]],
                        color="0.2", capsize=5, linewidth=1.2)
        label = "n/a" if np.isnan(height) else prefix + _fmt(float(height))
        top = height if np.isfinite(height) else 0.0
        if error is not None and np.isfinite(height):
            top = max(top, error[1])
        ax.annotate(label, (x, top), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, list(names))
    ax.margins(y=0.15)
    ax.set_ylim(bottom=0)


def _point_panel(ax: Axes, setup: Mapping[str, Any], names: Sequence[str],
                 colors: Sequence[str]) -> str:
    key = setup["verdict_metric"]
    values = [setup["systems"][n]["point"]["values"][key] for n in names]
    means = [v["mean"] for v in values]
    errors = [tuple(v["ci"]) if v["ci"] else None for v in values]
    _bars(ax, names, means, errors, colors, [""] * len(names))
    ax.set_ylabel(setup["metric_info"][key]["axis_label"])
    point = setup["systems"][names[0]]["point"]
    where = "offline" if point["rate_rps"] is None else f"at {point['rate_rps']:g} req/s"
    return f"{where}, {point['num_requests']} requests; bars: mean, whiskers: 95% CI"


def _capacity_panel(ax: Axes, setup: Mapping[str, Any], names: Sequence[str],
                    colors: Sequence[str]) -> str:
    caps = [setup["systems"][n]["capacity"] for n in names]
    per_gpu = setup["verdict_metric"] == "capacity_per_gpu_rps"
    means, errors, prefixes = [], [], []
    for cap in caps:
        # NOTE: per GPU, every number of a system (capacity, first failing rate) is divided
        # by the GPUs that system occupies.
        scale = 1.0 / cap["num_gpus"] if per_gpu and cap.get("num_gpus") else 1.0
        value = 0.0 if cap["status"] == "below_range" else cap["capacity_rps"]
        value = None if value is None else value * scale
        means.append(value)
        high = None if cap["high_rps"] is None else cap["high_rps"] * scale
        errors.append((value, high) if value is not None and high is not None else None)
        prefixes.append(">= " if cap["status"] == "above_range" else "")
    _bars(ax, names, means, errors, colors, prefixes)
    reference = setup["systems"][setup["reference_system"]]["capacity"]
    saturation, unit = setup["saturation_rps"], "req/s"
    if per_gpu and reference.get("num_gpus"):
        saturation, unit = saturation / reference["num_gpus"], "req/s per GPU"
    ax.axhline(saturation, color="0.4", linestyle=":", linewidth=1.0,
               label=f"offline saturation of {setup['reference_system']} "
                     f"({_fmt(saturation)} {unit})")
    ax.legend(fontsize=7, loc="upper right")
    what = "capacity per GPU (req/s per GPU)" if per_gpu else "capacity (req/s)"
    ax.set_ylabel(f"{what} under {caps[0]['rule']}")
    return f"bars: {what.split(' (')[0]}, whiskers: up to the first failing rate"


def _sweep_panel(ax: Axes, setup: Mapping[str, Any], names: Sequence[str],
                 colors: Sequence[str]) -> str:
    key = setup["verdict_metric"]
    axis = setup["measure"]["axis"]
    x_key = "num_requests" if axis == "requests" else "rate_rps"
    summary_index = next((p["index"] for p in setup.get("per_point", []) if p["summary"]), -1)
    for name, color in zip(names, colors, strict=True):
        points = setup["systems"][name]["sweep"]
        xs = np.array([p[x_key] for p in points], dtype=float)
        means = np.array([np.nan if p["values"][key]["mean"] is None
                          else p["values"][key]["mean"] for p in points])
        ax.plot(xs, means, marker="o", markersize=4, color=color, label=name)
        cis = [p["values"][key]["ci"] for p in points]
        if all(ci is not None for ci in cis):
            ax.fill_between(xs, [c[0] for c in cis], [c[1] for c in cis], color=color,
                            alpha=0.2, linewidth=0)
        ax.plot([xs[summary_index]], [means[summary_index]], marker="o", markersize=10,
                markerfacecolor="none", markeredgecolor="0.2")
    if axis == "requests":
        ax.set_xscale("log", base=2)
        ticks = [p[x_key] for p in setup["systems"][names[0]]["sweep"]]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("requests simulated")
    else:
        ax.set_xlabel("arrival rate (req/s)")
    ax.set_ylabel(setup["metric_info"][key]["axis_label"])
    ax.legend(fontsize=7)
    ax.set_ylim(bottom=0)
    return "lines: mean, bands: 95% CI, ring: point of the verdict"


def entry_figure(entry: Mapping[str, Any]) -> Figure:
    """Unfair (left) and fair (right) panels of one entry's verdicts data."""
    names = list(entry["systems"])
    colors = [COLORS[i % len(COLORS)] for i in range(len(names))]
    fig = Figure(figsize=(12.0, 5.0), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("unfair", "fair"), strict=True):
        setup = entry[key]
        kind = setup["measure"]["kind"]
        if kind == "point":
            note = _point_panel(ax, setup, names, colors)
        elif kind == "capacity":
            note = _capacity_panel(ax, setup, names, colors)
        else:
            note = _sweep_panel(ax, setup, names, colors)
        slo = setup.get("slo_line")
        if slo:
            ax.axhline(slo[0], color=SLO_COLOR, linestyle="--", linewidth=1.2, label=slo[1])
            ax.legend(fontsize=7)
            ax.set_ylim(top=max(ax.get_ylim()[1], slo[0] * 1.15))
        ax.grid(axis="y", alpha=0.3)
        heading = "Unfair setup" if key == "unfair" else "Fair setup"
        description = textwrap.fill(setup["description"], 80)
        ax.set_title(f"{heading}: {_short_verdict(setup['conclusion'])}\n{description}\n"
                     f"({note})", fontsize=8)
    unfair, fair = entry["unfair"], entry["fair"]
    if (unfair["verdict_metric"] == fair["verdict_metric"]
            and unfair["measure"]["kind"] == fair["measure"]["kind"]):
        # One metric on both sides: one y scale, so the panels compare at a glance; for a
        # sweep a log scale when one side is more than 10x the other (a queue that never
        # drains); separate scales when two workloads differ in scale (ES1).
        tops = [ax.get_ylim()[1] for ax in axes]
        if unfair["measure"]["kind"] != "sweep" and max(tops) > 3 * min(tops):
            pass
        elif unfair["measure"]["kind"] == "sweep" and max(tops) > 10 * min(tops):
            for ax in axes:
                ax.set_yscale("log")
                ax.autoscale(axis="y")
            lows = [ax.get_ylim()[0] for ax in axes]
            tops = [ax.get_ylim()[1] for ax in axes]
            for ax in axes:
                ax.set_ylim(min(lows), max(tops))
        else:
            for ax in axes:
                ax.set_ylim(0, max(tops))
    fig.suptitle(f"{entry['id']}: {entry['title']} (outcome: {entry['outcome']})",
                 fontsize=11)
    return fig


def save_entry_figure(entry: Mapping[str, Any], path: str | Path) -> Path:
    """Draw and write an entry's figure as PNG."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    entry_figure(entry).savefig(out, format="png", dpi=DPI)
    return out
