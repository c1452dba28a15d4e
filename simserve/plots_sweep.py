"""Sweep figures: latency vs arrival rate per policy with SLO lines and 95% confidence bands
over seeds (log scale, `experiments.replications`), capacity bars, and the Pareto front of
throughput vs P99 TBT over the points that meet the SLO.

Input is a sweep directory's summary.csv (one row per run) and sweep.json (its axes, mode and
SLO rule); output is matplotlib `Figure` objects drawn with the Agg canvas (never `show()`), so
this works headless and touches no global pyplot state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from simserve.errors import InputError
from simserve.experiments.atomic import OutputKind, write_dir_atomically
from simserve.experiments.capacity import SloRule, parse_slo_rule
from simserve.experiments.replications import seed_estimate
from simserve.experiments.sweep import STATE_FILE, SUMMARY_CSV, read_csv_rows
from simserve.formatting import fmt_number, key_label
from simserve.plots.canvas import (
    SLO_COLOR,
    number_ticks,
    plain_log_ticks,
    save_figure,
    system_colors,
)

__all__ = [
    "SweepTable",
    "capacity_figure",
    "latency_vs_rate_figure",
    "load_sweep_table",
    "pareto_figure",
    "write_sweep_plots",
]

PLOTS_DIR = OutputKind("sweep figure directory",
                       legacy_files=("latency_vs_rate.png", "capacity.png", "pareto.png"))
RATE_KEY = "workload.arrival.rate"
DEFAULT_METRICS = ("p99_ttft_ms", "p99_tbt_ms", "median_scheduling_delay_ms", "mean_tpot_ms")
DEFAULT_RULE = "sarathi"


@dataclass(frozen=True)
class SweepTable:
    """A finished sweep's rows and what sweep.json says about them."""

    rows: list[dict[str, Any]]
    axes: tuple[str, ...]
    mode: str
    slo: str | None
    name: str


def load_sweep_table(sweep_dir: str | Path) -> SweepTable:
    """Read summary.csv and sweep.json of a sweep directory (InputError if it is not one)."""
    sweep_dir = Path(sweep_dir)
    state_file = sweep_dir / STATE_FILE
    if not state_file.is_file():
        raise InputError("is not a sweep directory (no sweep.json)", source=str(sweep_dir))
    summary = sweep_dir / SUMMARY_CSV
    if not summary.is_file():
        raise InputError("has no summary.csv yet: finish the sweep with `simserve sweep SPEC "
                         "--resume --out DIR`", source=str(sweep_dir))
    state = json.loads(state_file.read_text())
    rows = read_csv_rows(summary)
    if not rows:
        raise InputError("summary.csv has no rows", source=str(sweep_dir))
    return SweepTable(rows=rows, axes=tuple(state.get("axes", ())), mode=state.get("mode", "runs"),
                      slo=state.get("slo"), name=state.get("name", sweep_dir.name))


# --------------------------------------------------------------------------- helpers


def _label(key: str) -> str:
    """An axis label with units, e.g. 'P99 TBT (ms)', 'arrival rate (req/s)'."""
    if key == RATE_KEY:
        return "arrival rate (req/s)"
    return key_label(key)


def _number(value: Any) -> float | None:
    """A finite number as float, else None (missing, text, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _series_colors(groups: Mapping[str, Sequence[Mapping[str, Any]]],
                   keys: Sequence[str]) -> dict[str, str]:
    """A colour per series: its policy's project-wide colour when the policy tells the series
    apart (one series per policy), else one of the other colours per series."""
    policy = "engine.policy"
    if policy in keys:
        policies = {label: str(rows[0].get(policy)) for label, rows in groups.items() if rows}
        if len(set(policies.values())) == len(policies):
            palette = system_colors(policies.values())
            return {label: palette[p] for label, p in policies.items()}
    return system_colors(groups)


def _mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """The value over seeds and its 95% interval (`experiments.replications`: log scale for
    positive numbers, so a band never crosses zero; zero width for one seed)."""
    estimate = seed_estimate(values)
    if estimate is None:
        return math.nan, math.nan, math.nan
    if estimate.interval is None:
        return estimate.value, estimate.value, estimate.value
    return estimate.value, estimate.low, estimate.high  # type: ignore[return-value]


def _short(key: str) -> str:
    """The last part of a dotted field, for labels."""
    return key.split(".")[-1]


def _series_keys(table: SweepTable, x: str | None) -> list[str]:
    """The axes that tell curves apart: every axis but the x axis and the seed."""
    return [a for a in table.axes if a not in (x, "seed")]


def _value_text(value: Any) -> str:
    """An axis value for a label; a user's class (`path/file.py:Class`) by its class name,
    replica groups (`cluster.groups`) by their GPUs."""
    text = str(value)
    groups = _group_lines(text)
    if groups is not None:
        return " + ".join(groups)
    source, sep, name = text.rpartition(":")
    return name if isinstance(value, str) and sep and source and name.isidentifier() else text


def _group_lines(text: str) -> list[str] | None:
    """A `cluster.groups` value (JSON in summary.csv) as one line per group, `2 x l40s (tp 2)`;
    None for any other value."""
    if not text.startswith("[{"):
        return None
    try:
        groups = json.loads(text)
    except ValueError:
        return None
    if not all(isinstance(g, dict) and {"replicas", "hardware"} & g.keys() for g in groups):
        return None
    return [f"{g.get('replicas', 1)} x {g.get('hardware', 'scenario GPU')}"
            + (f" (tp {g['tp']})" if g.get("tp", 1) != 1 else "") for g in groups]


def _series_label(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    """A curve's legend label from its axis values."""
    if not keys:
        return "all"
    if len(keys) == 1:
        return _value_text(row.get(keys[0]))
    return ", ".join(f"{_short(k)}={_value_text(row.get(k))}" for k in keys)


def _group(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, list]:
    """Rows by series label, in first-seen order."""
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(_series_label(row, keys), []).append(row)
    return groups


def _point_means(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict]:
    """One row per sweep point with the mean over seeds of every numeric column."""
    by_point: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_point.setdefault(row.get("point"), []).append(row)
    out = []
    for group in by_point.values():
        merged: dict[str, Any] = {k: group[0].get(k) for k in keys}
        for key in group[0]:
            if key in merged:
                continue
            numbers = [_number(r.get(key)) for r in group]
            finite = [v for v in numbers if v is not None]
            merged[key] = float(np.mean(finite)) if len(finite) == len(group) else None
        out.append(merged)
    return out


def _rule_words(text: Any, rule: SloRule | None) -> str:
    """A capacity rule in words ('P99 TBT ≤ 200 ms'): the rule a sweep's rows were searched
    under (their `slo_rule` text), else `rule`."""
    if isinstance(text, str) and text:
        try:
            return parse_slo_rule(text).words()
        except InputError:
            return text
    return rule.words() if rule is not None else ""


def _slo_lines(ax: Any, rule: SloRule | None, key: str, horizontal: bool = True) -> None:
    if rule is None:
        return
    for cond in rule.conditions:
        if cond.key != key:
            continue
        label = f"SLO: {cond.words()}"
        if horizontal:
            ax.axhline(cond.threshold, color=SLO_COLOR, linestyle="--", linewidth=1.2,
                       label=label)
        else:
            ax.axvline(cond.threshold, color=SLO_COLOR, linestyle="--", linewidth=1.2,
                       label=label)


def _default_x(table: SweepTable) -> str | None:
    """The arrival rate if it is an axis, else the first numeric axis."""
    if RATE_KEY in table.axes:
        return RATE_KEY
    for key in table.axes:
        if all(_number(r.get(key)) is not None for r in table.rows):
            return key
    return None


# --------------------------------------------------------------------------- figures


def latency_vs_rate_figure(
    table: SweepTable, metrics: Sequence[str], x: str, rule: SloRule | None
) -> Figure:
    """One panel per metric: the mean over seeds vs `x` per series, a 95% confidence band over
    seeds, and the rule's threshold on that metric as a dashed line."""
    ncols = 2 if len(metrics) > 1 else 1
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(6.4 * ncols, 4.2 * nrows), layout="constrained")
    keys = _series_keys(table, x)
    groups = _group(table.rows, keys)
    colors = _series_colors(groups, keys)
    # Long labels (several axes) squeeze every panel's legend into its plot: one legend of
    # the series under the figure instead, the SLO lines keeping theirs.
    shared_legend = len(metrics) > 1 and max(map(len, groups), default=0) > 40
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        positive = True
        all_means: list[float] = []
        for label, rows in groups.items():
            by_x: dict[float, list[float]] = {}
            for row in rows:
                xv, yv = _number(row.get(x)), _number(row.get(metric))
                if xv is not None and yv is not None:
                    by_x.setdefault(xv, []).append(yv)
            if not by_x:
                continue
            xs = sorted(by_x)
            stats = [_mean_ci(by_x[v]) for v in xs]
            means = [s[0] for s in stats]
            positive &= all(v > 0 for v in means)
            (line,) = ax.plot(xs, means, marker="o", markersize=4, label=label,
                              color=colors.get(label))
            ax.fill_between(xs, [s[1] for s in stats], [s[2] for s in stats],
                            color=line.get_color(), alpha=0.2, linewidth=0)
            all_means.extend(means)
        _slo_lines(ax, rule, metric)
        ax.set_xlabel(_label(x))
        ax.set_ylabel(_label(metric))
        ax.set_title(f"{_label(metric)} vs {_label(x).split(' (')[0]}")
        if positive and all_means and max(all_means) / min(all_means) > 50:
            # Curves spanning decades (a saturated policy next to healthy ones) stay readable.
            ax.set_yscale("log")
            ax.set_ylim(bottom=min(all_means) / 3)
            plain_log_ticks(ax.yaxis)
        ax.grid(alpha=0.3)
        slo_lines = [line for line in ax.get_lines() if line.get_label().startswith("SLO")]
        if shared_legend and slo_lines:
            ax.legend(handles=slo_lines, fontsize="small")
        elif ax.has_data() and not shared_legend:
            ax.legend(fontsize="small")
    if shared_legend:
        handles = [line for line in fig.axes[0].get_lines()
                   if not line.get_label().startswith("SLO")]
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(f"{table.name}: mean over seeds, 95% confidence band")
    return fig


def _swept_capacity(rows: Sequence[Mapping[str, Any]], x: str, rule: SloRule) -> tuple[float, str]:
    """Largest swept rate up to which the rule holds at every rate (on means over seeds)."""
    by_x: dict[float, list[Mapping[str, Any]]] = {}
    for row in rows:
        xv = _number(row.get(x))
        if xv is not None:
            by_x.setdefault(xv, []).append(row)
    best, note = 0.0, "none meets"
    for rate in sorted(by_x):
        passed, _values = rule.evaluate(by_x[rate])
        if not passed:
            return best, note
        best, note = rate, ""
    return best, f"≥ {fmt_number(best)}" if best else "none meets"


def capacity_figure(table: SweepTable, rule: SloRule | None, x: str | None,
                    per: str = "auto") -> Figure | None:
    """Capacity per series: the searched capacity (capacity sweeps, bracket as error bar) or the
    largest swept rate meeting the rule (rate sweeps). None when neither applies.

    `per`: `auto` shows capacity per GPU where the points occupy different numbers of GPUs;
    `gpu` always per GPU; `usd` (capacity sweeps) requests served per dollar of GPU rental at
    capacity, points ranked from the best."""
    if per == "usd":
        return _per_usd_figure(table, rule)
    if table.mode == "capacity":
        num_bars = len(table.rows)
    elif rule is not None and x is not None:
        num_bars = len(_group(table.rows, _series_keys(table, x)))
    else:
        return None
    fig = Figure(figsize=(min(16.0, max(7.0, 1.9 * num_bars + 1.5)), 4.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    per_gpu = False
    if table.mode == "capacity":
        keys = _series_keys(table, None)
        labels = [_series_label(r, keys) for r in table.rows]
        # NOTE: points of different GPU counts (placements, TP, replicas) are ranked per GPU,
        # DistServe's goodput per GPU; the whole cluster's capacity would favour the biggest.
        gpus = [_number(r.get("num_gpus")) for r in table.rows]
        per_gpu = all(g is not None and g > 0 for g in gpus) and (
            len(set(gpus)) > 1 or per == "gpu")
        scale = [1.0 / g if per_gpu and g else 1.0 for g in gpus]
        if per_gpu:
            labels = [f"{label}\n({fmt_number(g)} GPUs)"
                      for label, g in zip(labels, gpus, strict=True)]
        caps = [(_number(r.get("capacity_rps")) or 0.0) * f
                for r, f in zip(table.rows, scale, strict=True)]
        highs = [_number(r.get("capacity_high_rps")) for r in table.rows]
        highs = [h * f if h is not None else None for h, f in zip(highs, scale, strict=True)]
        upper = [max(0.0, (h if h is not None else c) - c) for c, h in zip(caps, highs,
                                                                          strict=True)]
        colors = _colors_by_first_axis(table.rows, keys)
        ax.bar(range(len(caps)), caps, color=colors, yerr=[[0.0] * len(caps), upper],
               capsize=4)
        for i, row in enumerate(table.rows):
            status = row.get("capacity_status")
            if status and status != "ok":
                ax.annotate(str(status), (i, caps[i]), ha="center", va="bottom", fontsize=8)
        rule_text = _rule_words(table.rows[0].get("slo_rule"), rule)
        what = "Capacity per GPU" if per_gpu else "Capacity"
        ax.set_title(f"{what} under {rule_text}\nbisection; error bar up to the first "
                     "failing rate", fontsize="medium")
    else:
        assert rule is not None and x is not None
        groups = _group(table.rows, _series_keys(table, x))
        series_colors = _series_colors(groups, _series_keys(table, x))
        labels, caps = [], []
        for label, rows in groups.items():
            cap, note = _swept_capacity(rows, x, rule)
            labels.append(label)
            caps.append(cap)
            ax.annotate(note, (len(caps) - 1, cap), ha="center", va="bottom", fontsize=8)
        ax.bar(range(len(caps)), caps, color=[series_colors[label] for label in labels])
        ax.set_title(f"Capacity under {rule.words()}: the largest swept rate up to which\n"
                     "every rate meets it (resolution: the rate grid; ≥: all meet it)",
                     fontsize="medium")
    labels = [label.replace(", ", "\n") for label in labels]
    crowded = len(labels) > 4 and max(len(x) for line in labels for x in line.split("\n")) > 8
    ax.set_xticks(range(len(labels)), labels, rotation=30 if crowded else 0,
                  ha="right" if crowded else "center", fontsize="small")
    ax.set_ylabel("capacity per GPU: arrival rate (req/s per GPU)" if per_gpu
                  else "capacity: arrival rate (req/s)")
    number_ticks(ax.yaxis)
    ax.set_xlabel(", ".join(_short(k) for k in _series_keys(table, x)) or "sweep")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _per_usd_figure(table: SweepTable, rule: SloRule | None) -> Figure:
    """Requests per dollar at capacity per point of a capacity sweep, best first: the capacity
    x 3600 s/h over what the point's GPUs rent for per hour (`capacity_per_usd`)."""
    values = [_number(r.get("capacity_per_usd")) for r in table.rows]
    prices = [_number(r.get("usd_per_hour")) for r in table.rows]
    if table.mode != "capacity" or any(p is None for p in prices):
        raise InputError("ranking per dollar needs a capacity sweep whose every point's GPUs "
                         "have a price (catalog or cost.gpu_hour_usd)", field="--per")
    keys = _series_keys(table, None)
    colors = _colors_by_first_axis(table.rows, keys)
    order = sorted(range(len(values)), key=lambda i: -(values[i] or 0.0))
    labels, bars, upper, bar_colors = [], [], [], []
    for i in order:
        row, price = table.rows[i], prices[i]
        assert price is not None
        value = values[i] or 0.0
        high = _number(row.get("capacity_high_rps"))
        lines = [line for k in keys for line in _compact(_short(k), row.get(k))]
        labels.append("\n".join([*lines, f"({fmt_number(price, 'USD/h')})"]))
        bars.append(value)
        upper.append(max(0.0, high * 3600.0 / price - value) if high is not None else 0.0)
        bar_colors.append(colors[i])
    fig = Figure(figsize=(min(18.0, max(7.0, 2.4 * len(bars) + 1.5)), 5.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(bars)), bars, color=bar_colors, yerr=[[0.0] * len(bars), upper], capsize=4)
    if keys:
        # One colour per value of the first axis (as _colors_by_first_axis), named.
        firsts = [str(r.get(keys[0])) for r in table.rows]
        handles = [Patch(color=colors[firsts.index(v)], label=f"{_short(keys[0])}={v}")
                   for v in dict.fromkeys(firsts)]
        ax.legend(handles=handles, fontsize="small")
    for j, i in enumerate(order):
        status = table.rows[i].get("capacity_status")
        if status and status != "ok":
            ax.annotate(str(status), (j, bars[j]), ha="center", va="bottom", fontsize=8)
    rule_text = _rule_words(table.rows[0].get("slo_rule"), rule)
    ax.set_title(f"Capacity per dollar under {rule_text}, best first\nrequests served per USD "
                 "of GPU rental at capacity; error bar up to the first failing rate",
                 fontsize="medium")
    ax.set_xticks(range(len(labels)), labels, fontsize="small")
    ax.set_ylabel("capacity per dollar (requests per USD)")
    ax.set_xlabel(", ".join(_short(k) for k in keys) or "sweep")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _compact(axis: str, value: Any) -> list[str]:
    """An axis value as short label lines: a mapping (a summary.csv cell holds it as JSON) as
    one `key=value` line per entry, replica groups as one line per group, anything else as
    `axis=value`."""
    groups = _group_lines(value) if isinstance(value, str) else None
    if groups is not None:
        return groups
    if isinstance(value, str) and value.startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return [f"{k}={v}" for k, v in parsed.items()]
    return [f"{axis}={value}"]


def _colors_by_first_axis(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    """One colour per value of the first axis (a system's own colour when it is a policy)."""
    if not keys:
        return [system_colors(["all"])["all"]] * len(rows)
    palette = system_colors(str(r.get(keys[0])) for r in rows)
    return [palette[str(r.get(keys[0]))] for r in rows]


def pareto_figure(table: SweepTable, rule: SloRule | None, x_metric: str = "p99_tbt_ms",
                  y_metric: str = "output_throughput") -> Figure:
    """Every sweep point (mean over seeds) as throughput vs P99 TBT, coloured by series, and
    the Pareto front (no other point has both more throughput and a lower P99 TBT) over the
    points that meet the SLO rule only: a point that misses it (drawn hollow) is not a way to
    serve, however much throughput it has (e.g. static batching's huge batches)."""
    x = _default_x(table) if table.mode != "capacity" else None
    series_keys = _series_keys(table, x)
    points = _point_means(table.rows, list(table.axes))
    fig = Figure(figsize=(6.8, 4.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    groups = _group(points, series_keys)
    colors = _series_colors(groups, series_keys)
    meeting = []
    for label, rows in groups.items():
        kept = [r for r in rows
                if _number(r.get(x_metric)) is not None and _number(r.get(y_metric)) is not None]
        if not kept:
            continue
        meets = [rule is None or rule.evaluate([r])[0] for r in kept]
        color = colors[label]
        xs = [float(r[x_metric]) for r in kept]
        ys = [float(r[y_metric]) for r in kept]
        ax.scatter(xs, ys, s=30, label=label, facecolors=[color if m else "none" for m in meets],
                   edgecolors=color)
        meeting.extend((px, py) for px, py, m in zip(xs, ys, meets, strict=True) if m)
    if meeting:
        front = []
        best_y = -math.inf
        for px, py in sorted(meeting, key=lambda p: (p[0], -p[1])):
            if py > best_y:
                front.append((px, py))
                best_y = py
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black",
                linewidth=1.0, alpha=0.7, label="Pareto front of the points meeting the SLO")
    _slo_lines(ax, rule, x_metric, horizontal=False)
    ax.set_xlabel(_label(x_metric))
    ax.set_ylabel(_label(y_metric))
    number_ticks(ax.yaxis)
    where = " at capacity" if table.mode == "capacity" else ""
    hollow = (f"; hollow: misses {rule.words()}, left out of the front" if rule is not None
              else "")
    ax.set_title(f"{_label(y_metric).split(' (')[0]} vs {_label(x_metric).split(' (')[0]}{where}"
                 f"\n(mean over seeds{hollow})", fontsize="medium")
    ax.grid(alpha=0.3)
    if ax.collections:
        ax.legend(fontsize="small")
    if not meeting:
        ax.text(0.5, 0.5, "no point meets the SLO: no front", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    return fig


def write_sweep_plots(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    slo: str | None = None,
    x: str | None = None,
    metrics: Sequence[str] | None = None,
    per: str = "auto",
) -> list[Path]:
    """Draw the sweep's figures as PNG files (default: SWEEP_DIR/plots/) and return their paths.

    `per` chooses what the capacity figure divides the capacity by (`capacity_figure`).

    The SLO rule drawn is `slo`, else the sweep's own (`slo:` or `capacity.slo` in the spec),
    else `sarathi` (P99 TBT <= 200 ms and median scheduling delay <= 2 s).
    """
    table = load_sweep_table(sweep_dir)
    rule = parse_slo_rule(slo or table.slo or DEFAULT_RULE)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "plots"
    columns = set().union(*(row.keys() for row in table.rows))
    if x is not None and x not in columns:
        raise InputError(f"is not a column of summary.csv (axes: {', '.join(table.axes)})",
                         field="--x")
    for metric in metrics or ():
        if metric not in columns:
            raise InputError("is not a column of summary.csv", field=f"--metric {metric}")
    figures: dict[str, Figure | None] = {}
    if table.mode != "capacity":
        x = x or _default_x(table)
        if x is not None:
            chosen = list(metrics or dict.fromkeys(
                [k for k in rule.keys if k in columns] + list(DEFAULT_METRICS)))[:6]
            figures["latency_vs_rate.png"] = latency_vs_rate_figure(table, chosen, x, rule)
    figures["capacity.png"] = capacity_figure(table, rule, x, per)
    figures["pareto.png"] = pareto_figure(table, rule)
    drawn = {name: fig for name, fig in figures.items() if fig is not None}

    def write(tmp: Path) -> None:
        for name, fig in drawn.items():
            save_figure(fig, tmp / name, dpi=120)

    write_dir_atomically(out, write, PLOTS_DIR)
    return [out / name for name in drawn]
