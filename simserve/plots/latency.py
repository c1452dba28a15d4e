"""Latency figures: empirical CDFs of one metric for several systems, and the sweep views
(a metric against arrival rate, capacity per SLO rule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from simserve.plots.canvas import SLO_COLOR, _figure, _fmt, _no_data

__all__ = ["capacity_bars", "latency_cdf", "metric_vs_rate"]

# ECDFs of more samples than this are drawn through this many quantiles (exact to the eye).
MAX_CDF_POINTS = 4000


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
