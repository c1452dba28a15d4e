"""Latency figures: empirical CDFs of one metric for several systems, and the sweep views
(a metric against arrival rate, capacity per SLO rule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from simserve.formatting import fmt_number, fmt_percent
from simserve.plots.canvas import (
    SLO_COLOR,
    _figure,
    _no_data,
    number_ticks,
    plain_log_ticks,
    system_colors,
)

__all__ = ["OVERLOAD_TEXT", "capacity_bars", "latency_cdf", "metric_vs_rate"]

# ECDFs of more samples than this are drawn through this many quantiles (exact to the eye).
MAX_CDF_POINTS = 4000
# How a point past a system's saturation throughput is explained in a legend.
OVERLOAD_TEXT = "hollow: past saturation (the queue grows with the run: not a steady state)"
CAPPED_TEXT = ("hatched: capped by the overload guard (the next rate is past saturation), "
               "not by the SLO")


# --------------------------------------------------------------------------- latency CDFs


def _ecdf_points(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, F(x)) of the empirical CDF, thinned to quantiles for very large samples."""
    n = sorted_values.size
    if n <= MAX_CDF_POINTS:
        return sorted_values, np.arange(1, n + 1) / n
    probs = np.linspace(0.0, 1.0, MAX_CDF_POINTS)
    return np.quantile(sorted_values, probs), probs


def _mark_slo(ax: Axes, slo_ms: float, label: str, x_max: float) -> None:
    """The SLO as a vertical line, or, when it lies right of the data, an arrow at the right
    edge pointing to it (the axis stays fitted to the data, not stretched to the SLO)."""
    if slo_ms <= x_max:
        ax.axvline(slo_ms, color=SLO_COLOR, linestyle="--", linewidth=1.2, label=label)
        return
    ax.annotate(f"{label} →", xy=(1.0, 0.5), xycoords="axes fraction", ha="right",
                va="center", color=SLO_COLOR, fontsize=9,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": SLO_COLOR})
    ax.plot([], [], color=SLO_COLOR, linestyle="--", linewidth=1.2,
            label=f"{label} (right of every sample)")


def latency_cdf(
    samples_ms: Mapping[str, np.ndarray],
    *,
    metric: str,
    slo_ms: float | None = None,
    slo_label: str | None = None,
    log_x: bool = False,
    population: str | None = None,
    title: str | None = None,
) -> Figure:
    """Empirical CDFs of one latency metric (ms) for several systems, with P50/P99 markers and
    the SLO, so tails and the share of samples within the SLO can be read off directly.

    The x axis fits the samples (up to the largest); an SLO beyond them is marked at the right
    edge instead of stretching the axis. Percentiles use numpy's linear interpolation, as the
    summary does. `population` (e.g. "per request", "per token") is stated on the y axis. On a
    log axis, zeros (TBT inside a speculative burst) cannot be drawn and are pinned to the left
    edge, as the title says. Systems keep their project-wide colours (`system_colors`).
    """
    fig = _figure(8.0, 4.8)
    ax = fig.subplots()
    ax.set_xlabel(f"{metric} (ms)")
    ax.set_ylabel(f"fraction of samples ≤ x ({population})" if population
                  else "fraction of samples ≤ x")
    cleaned = {name: np.asarray(v, dtype=np.float64) for name, v in samples_ms.items()}
    cleaned = {name: np.sort(v[np.isfinite(v)]) for name, v in cleaned.items()}
    colors = system_colors(cleaned)
    positive = [v[v > 0] for v in cleaned.values()]
    floor = min((float(p[0]) for p in positive if p.size), default=1.0) / 2.0
    num_zeros = 0
    drawn = 0
    x_max = 0.0
    for name, values in cleaned.items():
        if values.size == 0:
            ax.plot([], [], color=colors[name], label=f"{name}: no samples")
            continue
        p50, p99 = np.percentile(values, [50.0, 99.0])
        label = f"{name}: P50 {fmt_number(p50)} ms, P99 {fmt_number(p99)} ms"
        if slo_ms is not None:
            label += f", {fmt_percent(np.mean(values <= slo_ms))} ≤ SLO"
        label += f" (n={fmt_number(values.size)})"
        x, y = _ecdf_points(values)
        if log_x:
            num_zeros += int(np.count_nonzero(values <= 0))
            x = np.maximum(x, floor)
        x = np.concatenate(([x[0]], x))
        y = np.concatenate(([0.0], y))
        color = colors[name]
        ax.step(x, y, where="post", linewidth=1.5, color=color, label=label)
        marks = np.maximum([p50, p99], floor) if log_x else np.array([p50, p99])
        ax.plot(marks[0], 0.5, marker="o", color=color, markersize=6, linestyle="none")
        ax.plot(marks[1], 0.99, marker="v", color=color, markersize=7, linestyle="none")
        x_max = max(x_max, float(values[-1]))
        drawn += 1
    if log_x:
        ax.set_xscale("log")
    if drawn:
        if log_x:
            # Zeros are pinned at `floor`, half the smallest positive sample; without zeros
            # the axis starts at the data.
            low = floor if num_zeros else 2.0 * floor
            ax.set_xlim(low / 1.2, max(x_max, low) * 1.2)
            plain_log_ticks(ax.xaxis)
        else:
            ax.set_xlim(0.0, x_max * 1.03 if x_max > 0 else 1.0)
    if slo_ms is not None:
        _mark_slo(ax, slo_ms, slo_label or f"SLO {fmt_number(slo_ms)} ms",
                  x_max * (1.2 if log_x else 1.03) if drawn else np.inf)
    if not drawn:
        _no_data(ax, "no samples")
    ax.set_ylim(0.0, 1.02)
    if not log_x:
        number_ticks(ax.xaxis)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="0.3", marker="o", linestyle="none", label="P50"),
        Line2D([], [], color="0.3", marker="v", linestyle="none", label="P99"),
    ]
    # Below the axes: inside, it covers the rise of some curve whatever corner it takes.
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=2, frameon=False)
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
    slo_label: str | None = None,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    log_y: bool = False,
    colors: Mapping[str, str] | None = None,
    linestyles: Mapping[str, str] | None = None,
    overloaded: Mapping[str, Sequence[bool]] | None = None,
) -> Figure:
    """One line per series of a metric against arrival rate (req/s), with optional confidence
    bands (lower, upper) and the SLO as a horizontal line, to show where each system's knee is.

    `overloaded` flags, per series, the rates past that system's saturation throughput: those
    points are drawn hollow on a dotted line (its queue grows with the run, so the value is not
    a property of the system), and the legend says so. Series are coloured by `colors` (default:
    each name's project-wide system colour). NaN values leave gaps rather than zeros.
    """
    rates_arr = np.asarray(rates, dtype=np.float64)
    fig = _figure(8.0, 4.8)
    ax = fig.subplots()
    palette = dict(colors) if colors is not None else system_colors(series)
    any_overloaded = False
    for name, values in series.items():
        values_arr = np.asarray(values, dtype=np.float64)
        if values_arr.shape != rates_arr.shape:
            raise ValueError(f"series {name!r} has {values_arr.size} values for "
                             f"{rates_arr.size} rates")
        over = np.zeros(rates_arr.shape, dtype=bool)
        if overloaded is not None and name in overloaded:
            over = np.asarray(overloaded[name], dtype=bool)
        color = palette.get(name)
        style = (linestyles or {}).get(name, "-")
        steady = np.where(over, np.nan, values_arr)
        (line,) = ax.plot(rates_arr, steady, marker="o", markersize=4, color=color,
                          linestyle=style, label=name)
        if over.any():
            any_overloaded = True
            first = int(np.argmax(over))
            tail = slice(max(first - 1, 0), None)
            ax.plot(rates_arr[tail], values_arr[tail], linestyle=":", color=line.get_color(),
                    linewidth=1.0)
            ax.plot(rates_arr[over], values_arr[over], linestyle="none", marker="o",
                    markersize=5, markerfacecolor="white", color=line.get_color())
        if bands and name in bands:
            lower, upper = (np.asarray(b, dtype=np.float64) for b in bands[name])
            ax.fill_between(rates_arr, lower, upper, color=line.get_color(), alpha=0.2,
                            linewidth=0)
    if slo is not None:
        ax.axhline(slo, color=SLO_COLOR, linestyle="--", linewidth=1.2,
                   label=slo_label or f"SLO {fmt_number(slo)}")
    if log_y:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    else:
        number_ticks(ax.yaxis)
    number_ticks(ax.xaxis)
    if not series:
        _no_data(ax, "no series")
    ax.set_xlabel("arrival rate (req/s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if any_overloaded:
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white",
                              linestyle=":", label=OVERLOAD_TEXT))
    ax.legend(handles=handles, fontsize=8)
    suffix = " (shaded: confidence band)" if bands else ""
    ax.set_title((title or f"{ylabel} vs arrival rate") + suffix)
    return fig


def capacity_bars(
    capacities: Mapping[str, Mapping[str, float]],
    *,
    ylabel: str = "capacity (req/s)",
    title: str = "",
    xlabel: str = "SLO rule",
    capped: Mapping[str, Mapping[str, bool]] | None = None,
    colors: Mapping[str, str] | None = None,
) -> Figure:
    """Grouped bars of capacity: one group per rule (outer key), one bar per system (inner key),
    values printed on the bars, so a rule that reorders the systems is visible at a glance.

    `capped` (rule -> system -> bool) marks capacities limited by the overload guard rather
    than by the SLO: those bars are hatched and the legend says why. A missing or non-finite
    value (no rate met the rule) is marked "n/a" instead of a bar.
    """
    groups = list(capacities)
    systems: list[str] = []
    for inner in capacities.values():
        systems += [s for s in inner if s not in systems]
    palette = dict(colors) if colors is not None else system_colors(systems)
    fig = _figure(max(6.0, 1.2 + 0.9 * len(groups) * max(len(systems), 1) * 0.6), 4.8)
    ax = fig.subplots()
    width = 0.8 / max(len(systems), 1)
    any_capped = False
    for j, system in enumerate(systems):
        xs = np.arange(len(groups)) + (j - (len(systems) - 1) / 2) * width
        values = np.array([capacities[g].get(system, np.nan) for g in groups], dtype=float)
        values = np.where(np.isfinite(values), values, np.nan)
        hatches = ["//" if capped and capped.get(g, {}).get(system) else "" for g in groups]
        any_capped |= any(hatches)
        bars = ax.bar(xs, np.nan_to_num(values), width=width * 0.95, label=system,
                      color=palette.get(system), hatch=hatches, edgecolor="white")
        for x, v, bar in zip(xs, values, bars, strict=True):
            text = "n/a" if np.isnan(v) else fmt_number(v)
            ax.annotate(text, (x, bar.get_height()), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(groups)), groups)
    number_ticks(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.12)
    if systems:
        # Plain patches (a system's first bar may be hatched), below the axes so the legend
        # never covers a bar or its value.
        handles = [Patch(facecolor=palette.get(s, "0.5"), label=s) for s in systems]
        if any_capped:
            handles.append(Patch(facecolor="0.55", hatch="//", edgecolor="white",
                                 label=CAPPED_TEXT))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3),
                   fontsize=8, frameon=False)
    else:
        _no_data(ax, "no capacities")
    ax.set_title(title or "Capacity (highest arrival rate meeting the rule) per SLO rule")
    return fig
