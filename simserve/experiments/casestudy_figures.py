"""The seven figures of the speculative-decoding case study (DESIGN §8), from `simserve.plots`.

Each function takes a `SpecDecStudy` and returns a matplotlib Figure; `specdec_figures` returns
them keyed by file stem in the report's order. Sweep figures mark each system's saturation
throughput and draw the points past it hollow: there a queue grows for the whole run, so the
value depends on the run length (DESIGN §7 ES3), not on the system. Systems keep their
project-wide colours (`plots.system_colors`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from simserve import plots
from simserve.engine.records import FlatTokenTimes, SimulationResult
from simserve.experiments.casestudy import BASELINE, RULES, SPEC, SpecDecStudy
from simserve.experiments.run import RunOutput
from simserve.formatting import fmt_number, fmt_percent

__all__ = ["FIGURE_FILES", "figure_request", "measured_gaps_ms", "run_table", "specdec_figures"]

FIGURE_FILES: tuple[str, ...] = (
    "fig1_token_timeline",
    "fig2_tbt_cdf",
    "fig3_naive_view",
    "fig4_p99_tbt",
    "fig5_deadline_view",
    "fig6_speedup",
    "fig7_capacity",
)


def _mark_saturation(fig: Figure, study: SpecDecStudy, extra: Sequence[Artist] = ()) -> None:
    """Vertical lines at each system's saturation throughput (past it, a point is drawn hollow:
    not a steady state) and one legend below the axes, so it never hides the data."""
    ax = fig.axes[0]
    colors = plots.system_colors([BASELINE, SPEC])
    for system, style in ((BASELINE, ":"), (SPEC, "-.")):
        sat = study.saturation_rps(system)
        if math.isfinite(sat):
            ax.axvline(sat, color=colors[system], linestyle=style, linewidth=1.0, alpha=0.8,
                       label=f"{system}: saturation {fmt_number(sat, 'req/s')}")
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    handles, labels = ax.get_legend_handles_labels()
    handles += list(extra)
    labels += [str(h.get_label()) for h in extra]
    if any(study.overloaded_pair(SPEC)):
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white",
                              linestyle=":"))
        labels.append(plots.OVERLOAD_TEXT)
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8, frameon=False)


def _overloaded(study: SpecDecStudy, system: str) -> list[bool]:
    return [study.overloaded(system, r) for r in study.rates]


def run_table(run: RunOutput) -> dict[str, np.ndarray]:
    """Per-request metrics of a run under its own metrics config (its warm-up windows)."""
    return run.requests


def measured_gaps_ms(result: SimulationResult, measured: np.ndarray) -> np.ndarray:
    """Every token gap (ms) of the measured requests, zeros inside bursts included."""
    offsets = np.asarray(result.token_offsets)
    counts = np.diff(offsets)
    times = np.asarray(result.token_times_s)
    gaps = np.full(times.size, np.nan)
    gaps[1:] = np.diff(times)
    gaps[offsets[:-1][counts > 0]] = np.nan  # a first token has no gap
    gaps = gaps[np.repeat(measured, counts)]
    return gaps[np.isfinite(gaps)] * 1e3


def figure_request(study: SpecDecStudy) -> int:
    """The request shown in figure 1: measured in both runs, output length closest to the
    median of measured requests with 64..400 tokens (long enough to show bursts, short enough
    to see each one)."""
    tables = [run_table(study.figure_runs[s]) for s in (BASELINE, SPEC)]
    ok = tables[0]["measured"] & tables[1]["measured"]
    n = tables[0]["num_output_tokens"]
    pool = np.flatnonzero(ok & (n >= 64) & (n <= 400))
    if pool.size == 0:
        pool = np.flatnonzero(ok)
    if pool.size == 0:
        return 0
    target = np.median(n[pool])
    return int(pool[np.argmin(np.abs(n[pool] - target))])


def _pair_result(study: SpecDecStudy, rid: int) -> SimulationResult:
    """A two-request result holding request `rid` of the no-spec run and of the spec run, so
    `plots.token_timeline` draws both in one figure (same request: common random numbers)."""
    runs = [study.figure_runs[s].result for s in (BASELINE, SPEC)]
    times = [r.tokens_of(rid) for r in runs]
    pick = lambda name: np.array([getattr(r, name)[rid] for r in runs])  # noqa: E731
    return SimulationResult(
        arrived_at=pick("arrived_at"),
        prompt_len=pick("prompt_len"),
        output_len=pick("output_len"),
        first_scheduled_at=pick("first_scheduled_at"),
        finished_at=pick("finished_at"),
        num_preemptions=pick("num_preemptions"),
        replica=pick("replica"),
        rejected=pick("rejected"),
        tokens=FlatTokenTimes(
            np.array([0, times[0].size, times[0].size + times[1].size]), np.concatenate(times)
        ),
        steps=runs[0].steps,
    )


def fig1_token_timeline(study: SpecDecStudy) -> Figure:
    rid = figure_request(study)
    pair = _pair_result(study, rid)
    colors = plots.system_colors([BASELINE, SPEC])
    return plots.token_timeline(
        pair,
        [0, 1],
        labels=[f"{BASELINE} (request {rid})", f"{SPEC} (request {rid})"],
        colors=[colors[BASELINE], colors[SPEC]],
        title=f"1. Cumulative output tokens of request {rid} at "
        f"{fmt_number(study.figure_rate, 'req/s')}, without and with speculation",
    )


def fig2_tbt_cdf(study: SpecDecStudy) -> Figure:
    samples = {}
    for s in (BASELINE, SPEC):
        run = study.figure_runs[s]
        samples[s] = measured_gaps_ms(run.result, run_table(run)["measured"])
    return plots.latency_cdf(
        samples,
        metric="TBT",
        slo_ms=study.targets.per_token_ms,
        slo_label=f"D = {fmt_number(study.targets.per_token_ms)} ms (P99 TBT SLO)",
        population="per token",
        title=f"2. TBT at {fmt_number(study.figure_rate, 'req/s')}: every gap between tokens of "
        "the measured requests (0 = a token inside a burst)",
    )


def fig3_naive_view(study: SpecDecStudy) -> Figure:
    colors = plots.system_colors([BASELINE, SPEC])
    series, palette, styles, overloaded = {}, {}, {}, {}
    for key, what, style in (("mean_tpot_ms", "mean TPOT", "-"),
                             ("mean_normalized_latency_ms", "mean normalized latency", "--")):
        for s in (BASELINE, SPEC):
            name = f"{s}: {what}"
            series[name] = study.series(s, key)
            palette[name], styles[name] = colors[s], style
            overloaded[name] = _overloaded(study, s)
    fig = plots.metric_vs_rate(
        study.rates, series, ylabel="ms per output token (log scale)", log_y=True,
        slo=study.targets.per_token_ms, colors=palette, linestyles=styles, overloaded=overloaded,
        slo_label=f"D = {fmt_number(study.targets.per_token_ms)} ms (TPOT SLO)",
        title="3. Naive view: mean TPOT and normalized latency (E2EL / output tokens)",
    )
    _mark_saturation(fig, study)
    return fig


def fig4_p99_tbt(study: SpecDecStudy) -> Figure:
    series = {s: study.series(s, "p99_tbt_ms") for s in (BASELINE, SPEC)}
    fig = plots.metric_vs_rate(
        study.rates, series, ylabel="P99 TBT (ms), per token, zeros in bursts included",
        slo=study.targets.per_token_ms,
        slo_label=f"D = {fmt_number(study.targets.per_token_ms)} ms (P99 TBT SLO)",
        overloaded={s: _overloaded(study, s) for s in series},
        title="4. TBT view: P99 of every gap between tokens",
    )
    fig.axes[0].set_ylim(bottom=0)
    _mark_saturation(fig, study)
    return fig


def fig5_deadline_view(study: SpecDecStudy) -> Figure:
    series = {s: study.series(s, "fluid_token_rate") for s in (BASELINE, SPEC)}
    fig = plots.metric_vs_rate(
        study.rates, series, ylabel="fluid token rate (tokens/s per request, log scale)",
        slo=study.targets.fluid_rate_tokens_s, log_y=True,
        slo_label=f"1/D = {fmt_number(study.targets.fluid_rate_tokens_s)} tokens/s "
        "(the deadline rule's pace)",
        overloaded={s: _overloaded(study, s) for s in series},
        title="5. Deadline view: the reading pace that 99% of requests keep up with "
        "(Etalon's fluid token rate)",
    )
    _mark_saturation(fig, study)
    return fig


def fig6_speedup(study: SpecDecStudy) -> Figure:
    spec = study.scenario.engine.speculative
    assert spec is not None
    base_name = f"{SPEC} (α={fmt_number(spec.acceptance.alpha)}, k={spec.num_speculative_tokens})"
    series = {base_name: study.speedup(SPEC)}
    overloaded = {base_name: study.overloaded_pair(SPEC)}
    for name in study.variants:
        series[name] = study.speedup(name)
        overloaded[name] = study.overloaded_pair(name)
    palette = {base_name: plots.system_colors([SPEC])[SPEC],
               **plots.system_colors(study.variants)}
    fig = plots.metric_vs_rate(
        study.rates, series,
        ylabel="speedup = mean E2EL without / with speculation",
        colors=palette, overloaded=overloaded,
        title="6. Speedup of mean latency vs rate, for several acceptance rates α and k",
    )
    ax = fig.axes[0]
    ax.axhline(1.0, color="black", linewidth=1.0, label="speedup 1 (break-even)")
    _mark_saturation(fig, study)
    return fig


def fig7_capacity(study: SpecDecStudy) -> Figure:
    data = {
        rule.label: {s: (study.capacities[rule.key][s].value
                         if study.capacities[rule.key][s].bounded else math.nan)
                     for s in (BASELINE, SPEC)}
        for rule in RULES
    }
    capped = {rule.label: {s: study.capacities[rule.key][s].load_limited
                           for s in (BASELINE, SPEC)}
              for rule in RULES}
    t = study.targets
    return plots.capacity_bars(
        data,
        capped=capped,
        title=f"7. Capacity (req/s) under three SLO rules, T = {fmt_number(t.ttft_ms)} ms, "
        f"D = {fmt_number(t.per_token_ms)} ms (bisected to "
        f"{fmt_percent(study.plan.capacity_tolerance)})",
    )


def specdec_figures(study: SpecDecStudy) -> dict[str, Figure]:
    """The seven case-study figures keyed by file stem (`FIGURE_FILES` order)."""
    makers = (fig1_token_timeline, fig2_tbt_cdf, fig3_naive_view, fig4_p99_tbt,
              fig5_deadline_view, fig6_speedup, fig7_capacity)
    return {name: make(study) for name, make in zip(FIGURE_FILES, makers, strict=True)}
