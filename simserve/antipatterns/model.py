"""The declarative pieces of the anti-pattern catalog and the rules that turn numbers into verdicts.

An `Entry` (DESIGN §7) is one base scenario, the systems compared (each a list of `--set`
overrides), and an unfair and a fair `Setup`: what is run (`Point`, `Capacity` or `Sweep`) and
which metric the evaluator would report. `conclude` states a setup's conclusion from the measured
numbers ("A is 1.8x better than B on M", or no clear winner inside the tie band) and `classify`
compares the two conclusions (flipped, shrank, grew, unchanged). Nothing here runs a simulation:
the runner measures, these rules only read numbers, so a conclusion never comes from prose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from simserve.antipatterns.items import CHECKLIST
from simserve.experiments import replications
from simserve.experiments.capacity import parse_slo_rule
from simserve.formatting import fmt_number, fmt_percent, fmt_ratio

__all__ = [
    "CAPACITY_KEYS",
    "CHANGE_MARGIN",
    "CONFIDENCE",
    "METRICS",
    "OUTCOMES",
    "TIE_MARGIN",
    "TREND_MARGIN",
    "Capacity",
    "Conclusion",
    "Entry",
    "Measure",
    "Metric",
    "Point",
    "Setup",
    "Size",
    "Sweep",
    "advantage",
    "capacity_metric",
    "classify",
    "classify_trend",
    "conclude",
    "describe_change",
    "trend",
]

# NOTE: margins of the verdicts, stated in every report. A ratio within 5% of 1 is "no clear
# winner" (about the seed-to-seed spread of a ratio at a thousand requests); a verdict
# "shrank"/"grew" only when the winner's advantage moved by more than 10% (x1.1 or /1.1), twice
# that spread, so that noise alone rarely changes a verdict.
TIE_MARGIN = 0.05
CHANGE_MARGIN = 0.10
# NOTE: a queue that never drains doubles its waiting times each time the run doubles (x2 per
# doubling); a steady-state tail percentile only creeps up as more samples reach further into
# the tail. A series is "increasing" above x1.25 per doubling, "flat" within x1.25 either way.
TREND_MARGIN = 0.25
CONFIDENCE = replications.CONFIDENCE

Better = Literal["lower", "higher"]
Outcome = Literal["flipped", "shrank", "grew", "unchanged", "undetermined"]
OUTCOMES: tuple[str, ...] = ("flipped", "shrank", "grew", "unchanged", "undetermined")


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """A number an evaluator reports: a summary key (or `capacity_rps`), how to print it and
    whether lower or higher is better."""

    key: str
    label: str
    unit: str
    better: Better
    population: str | None = None
    upper: float | None = None  # the largest possible value (1 for a fraction), if bounded

    def __post_init__(self) -> None:
        if self.better not in ("lower", "higher"):
            raise ValueError(f"better must be 'lower' or 'higher', got {self.better!r}")

    @property
    def axis_label(self) -> str:
        """Label with unit and population, for tables and figure axes."""
        unit = f" ({self.unit})" if self.unit else ""
        population = f", {self.population}" if self.population else ""
        return f"{self.label}{unit}{population}"

    def format(self, value: float | None) -> str:
        """A value as every report and figure prints it (`formatting.fmt_number`)."""
        return fmt_number(value, self.unit)


def _m(key: str, label: str, unit: str, better: Better, population: str | None = None,
       upper: float | None = None) -> Metric:
    return Metric(key, label, unit, better, population, upper)


METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        _m("mean_e2el_ms", "mean E2E latency", "ms", "lower", "per request"),
        _m("mean_normalized_latency_ms", "mean normalized latency", "ms/token", "lower",
           "per request"),
        _m("mean_tpot_ms", "mean TPOT", "ms", "lower", "per request"),
        _m("p99_tpot_ms", "P99 TPOT", "ms", "lower", "per request"),
        _m("p99_ttft_ms", "P99 TTFT", "ms", "lower", "per request"),
        _m("mean_ttft_ms", "mean TTFT", "ms", "lower", "per request"),
        _m("p99_tbt_ms", "P99 TBT", "ms", "lower", "per token"),
        _m("p99_max_tbt_ms", "P99 max stall", "ms", "lower", "per request"),
        _m("median_scheduling_delay_ms", "median scheduling delay", "ms", "lower",
           "per request"),
        _m("mean_fluidity_index", "mean fluidity-index", "", "higher", "per request", 1.0),
        _m("p99_deadline_miss_rate", "P99 deadline-miss rate", "", "lower", "per request",
           1.0),
        _m("request_throughput", "request throughput", "req/s", "higher"),
        _m("output_throughput", "output token throughput", "tok/s", "higher"),
        _m("num_preemptions", "preemptions", "", "lower"),
    )
}


# The numbers a capacity measurement yields: the capacity of the whole cluster, and that capacity
# per GPU the cluster occupies (summary key `num_gpus`).
CAPACITY_KEYS: tuple[str, ...] = ("capacity_rps", "capacity_per_gpu_rps")


def capacity_metric(rule: str, *, per_gpu: bool = False) -> Metric:
    """The metric of a capacity measurement under `rule` (higher is better); `per_gpu` divides
    it by the GPUs each system occupies. Under `attainment:0.9` with TTFT and TPOT SLOs the
    per-GPU capacity is DistServe's goodput per GPU (Zhong et al., OSDI 2024), the number that
    ranks placements of different shapes (co-located replicas, prefill and decode pools).
    Labels state the rule in words (`SloRule.words`)."""
    words = parse_slo_rule(rule).words()
    if per_gpu:
        return Metric("capacity_per_gpu_rps", f"capacity per GPU under {words}", "req/s per GPU",
                      "higher")
    return Metric("capacity_rps", f"capacity under {words}", "req/s", "higher")


# --------------------------------------------------------------------------- measures


@dataclass(frozen=True)
class Point:
    """One arrival rate: `load` x the reference system's saturation throughput (None: offline,
    every request at t=0); `requests` x the size's request count; warm-up/cool-down windows of
    10% of the arrival span are excluded unless `warmup` is False."""

    load: float | None
    requests: float = 1.0
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.load is not None and not self.load > 0:
            raise ValueError(f"load must be > 0, got {self.load}")
        if not self.requests > 0:
            raise ValueError(f"requests must be > 0, got {self.requests}")

    def describe(self) -> str:
        where = "offline (all requests at t=0)" if self.load is None else (
            f"{fmt_number(self.load)} x saturation throughput")
        return where + ("" if self.warmup else ", no warm-up exclusion")


@dataclass(frozen=True)
class Capacity:
    """The largest rate meeting an SLO rule (`capacity.parse_slo_rule` syntax), bisected
    between `low` x and 1 x the system's own saturation throughput (`experiments.saturation`),
    the bracket extended downwards while its low end fails, so that every capacity is bounded on
    both sides.

    NOTE: a rate at or above the system's saturation fails without a run (the overload guard):
    its queue, once formed, never drains, but a finite probe there may pass before it has
    formed (the ES3 trap; below saturation, probes of the point measurements' length settle).
    """

    rule: str
    low: float = 0.25
    requests: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.low < 1:
            raise ValueError(f"need 0 < low < 1, got {self.low}")
        if not self.requests > 0:
            raise ValueError(f"requests must be > 0, got {self.requests}")

    def describe(self) -> str:
        return (f"capacity under {parse_slo_rule(self.rule).words()}, bisected from "
                f"{fmt_number(self.low)} x to 1 x each system's saturation throughput")


@dataclass(frozen=True)
class Sweep:
    """Several points along one axis (`load` or `requests`); the verdict is read at the
    `first` or `last` point or where the candidate's advantage is smallest (`worst`). `trend`,
    when set, is what the catalog expects of each system's metric along the sweep."""

    points: tuple[Point, ...]
    axis: Literal["load", "requests"]
    summary: Literal["first", "last", "worst"] = "last"
    trend: Literal["increasing", "flat"] | None = None

    def __post_init__(self) -> None:
        if len(self.points) < 2:
            raise ValueError("a sweep needs at least two points")
        if self.axis not in ("load", "requests"):
            raise ValueError(f"axis must be 'load' or 'requests', got {self.axis!r}")
        if self.summary not in ("first", "last", "worst"):
            raise ValueError(f"summary must be first, last or worst, got {self.summary!r}")

    def describe(self) -> str:
        if self.axis == "load":
            values = ", ".join(fmt_number(p.load) for p in self.points)
            return f"sweep of loads {values} x saturation throughput"
        values = ", ".join(fmt_number(p.requests) for p in self.points)
        return (f"sweep of request counts {values} x the base count at "
                f"{self.points[0].describe()}")


Measure = Point | Capacity | Sweep


@dataclass(frozen=True)
class Setup:
    """How one evaluator (fair or unfair) runs the comparison and what it reports.

    `overrides` apply to every system, `system_overrides` to one system only (an unequal setup),
    `tuning` lists knob settings (override lists) per system of which the best on `verdict` is
    kept (a tuned system). `verdict` is the metric the conclusion is drawn on; `metrics` are
    further numbers shown in the report; `slo_line` (value, label) is drawn on the figure.
    """

    description: str
    measure: Measure
    verdict: Metric
    metrics: tuple[Metric, ...] = ()
    overrides: tuple[str, ...] = ()
    system_overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    tuning: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    slo_line: tuple[float, str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.measure, Capacity) and self.verdict.key not in CAPACITY_KEYS:
            raise ValueError(f"a capacity measurement reports {' or '.join(CAPACITY_KEYS)}, "
                             f"not {self.verdict.key!r}")


@dataclass(frozen=True)
class Entry:
    """One catalog entry: a base scenario, the systems compared, an unfair and a fair setup,
    the evaluation-checklist items it illustrates (`checklist`, `items.CHECKLIST`), and what the
    catalog expects (checked against the runs): the outcomes of the comparison it allows and,
    when both setups report the same metric, whether every system's value gets `worse` or
    `better` from the unfair to the fair setup.

    `outcome_on`: what the outcome is stated on, the quantity the entry is about: the verdict
    (which system is better, by how much) or, for an entry about how a number depends on the
    swept quantity (ES3: P99 TTFT vs the run length), that dependence (`classify_trend`)."""

    id: str
    dimension: Literal["baseline fairness", "evaluation setup", "metric design"]
    title: str
    description: str
    base: str
    systems: Mapping[str, tuple[str, ...]]
    candidate: str
    baseline: str
    unfair: Setup
    fair: Setup
    expected: tuple[str, ...]
    expected_text: str
    checklist: tuple[str, ...]
    reference: str | None = None
    expected_change: Literal["worse", "better"] | None = None
    outcome_on: Literal["verdict", "trend"] = "verdict"

    def __post_init__(self) -> None:
        unknown = [i for i in self.checklist if i not in CHECKLIST]
        if not self.checklist or unknown:
            raise ValueError(f"{self.id}: name the checklist items it shows (C1-C15), got "
                             f"{list(self.checklist)}")
        if self.outcome_on == "trend" and not all(
                isinstance(s.measure, Sweep) and s.measure.trend for s in (self.unfair,
                                                                            self.fair)):
            raise ValueError(f"{self.id}: an outcome on the trend needs two sweeps with a trend")
        for name in (self.candidate, self.baseline):
            if name not in self.systems:
                raise ValueError(f"{self.id}: system {name!r} is not in systems")
        for setup in (self.unfair, self.fair):
            for name in (*setup.system_overrides, *setup.tuning):
                if name not in self.systems:
                    raise ValueError(f"{self.id}: unknown system {name!r} in a setup")
        bad = [o for o in self.expected if o not in OUTCOMES]
        if bad:
            raise ValueError(f"{self.id}: unknown expected outcome(s) {bad}")
        if self.reference is not None and self.reference not in self.systems:
            raise ValueError(f"{self.id}: reference {self.reference!r} is not a system")
        if self.expected_change is not None and self.unfair.verdict != self.fair.verdict:
            raise ValueError(f"{self.id}: expected_change needs one verdict metric for both")

    @property
    def reference_system(self) -> str:
        """The system whose saturation throughput sets the arrival rates (default: baseline)."""
        return self.reference or self.baseline


@dataclass(frozen=True)
class Size:
    """How much a catalog run simulates: requests per run, seeds, saturation-run length and the
    capacity search's tolerance and probe budget."""

    name: str
    requests: int
    seeds: int
    saturation_requests: int
    tolerance: float
    max_probes: int
    window_fraction: float = 0.1


# --------------------------------------------------------------------------- conclusions


def advantage(metric: Metric, candidate: float | None, baseline: float | None) -> float | None:
    """How many times better the candidate is than the baseline on `metric` (> 1: candidate
    better), or None when the ratio is undefined (a missing value, or a zero against a zero)."""
    if candidate is None or baseline is None:
        return None
    if not (math.isfinite(candidate) and math.isfinite(baseline)):
        return None
    if candidate < 0 or baseline < 0:
        return None
    num, den = (baseline, candidate) if metric.better == "lower" else (candidate, baseline)
    if den == 0:
        return None if num == 0 else math.inf
    return num / den


@dataclass(frozen=True)
class Conclusion:
    """What an evaluator concludes from one setup's numbers."""

    metric: Metric
    candidate: str
    baseline: str
    candidate_value: float | None
    baseline_value: float | None
    ratio: float | None
    ratio_ci: tuple[float, float] | None
    winner: str | None
    text: str
    ratio_ci_kind: str = "95% CI"

    def to_mapping(self) -> dict[str, object]:
        """Plain data for verdicts.json."""
        return {
            "metric": self.metric.key,
            "metric_label": self.metric.axis_label,
            "better": self.metric.better,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "candidate_value": _json_float(self.candidate_value),
            "baseline_value": _json_float(self.baseline_value),
            "ratio": _json_float(self.ratio),
            "ratio_ci": None if self.ratio_ci is None else [_json_float(v) for v in self.ratio_ci],
            "ratio_ci_kind": self.ratio_ci_kind,
            "winner": self.winner,
            "text": self.text,
        }


def _json_float(value: float | None) -> float | str | None:
    if value is None:
        return None
    if math.isinf(value):
        return "inf"
    return float(value)


def conclude(
    metric: Metric,
    candidate: str,
    baseline: str,
    candidate_value: float | None,
    baseline_value: float | None,
    *,
    ratio_ci: tuple[float, float] | None = None,
    ratio_ci_kind: str = "95% CI",
    tie_margin: float = TIE_MARGIN,
    where: str = "",
    undecided: str | None = None,
) -> Conclusion:
    """The conclusion the numbers support: "A is R x better than B on M (a vs b)", or "no
    clear winner" when R is within `tie_margin` of 1; `where` qualifies it (e.g. "at 3 req/s").
    `undecided` gives the reason why these numbers cannot carry a verdict (e.g. a capacity
    known only as a bound): then no ratio and no winner are stated."""
    suffix = f" {where}" if where else ""
    values = (f"{candidate} {metric.format(candidate_value)} vs "
              f"{baseline} {metric.format(baseline_value)}")
    if undecided is not None:
        return Conclusion(metric, candidate, baseline, candidate_value, baseline_value, None,
                          None, None, f"could not be decided on {metric.label}{suffix}: "
                          f"{undecided}", ratio_ci_kind)
    ratio = advantage(metric, candidate_value, baseline_value)
    if ratio is None:
        return Conclusion(metric, candidate, baseline, candidate_value, baseline_value, None,
                          ratio_ci, None, f"no verdict on {metric.label}{suffix}: {values}",
                          ratio_ci_kind)
    flipped = ratio < 1
    magnitude = 1.0 / ratio if flipped else ratio
    if magnitude <= 1.0 + tie_margin:
        text = (f"no clear winner on {metric.label}{suffix}: {values} "
                f"(within the ±{fmt_percent(tie_margin)} tie band)")
        return Conclusion(metric, candidate, baseline, candidate_value, baseline_value, ratio,
                          ratio_ci, None, text, ratio_ci_kind)
    winner, loser = (baseline, candidate) if flipped else (candidate, baseline)
    text = f"{winner} is {fmt_ratio(magnitude)} better than {loser} on {metric.label}{suffix}"
    text += f" ({values})"
    return Conclusion(metric, candidate, baseline, candidate_value, baseline_value, ratio,
                      ratio_ci, winner, text, ratio_ci_kind)


def _log_advantage(conclusion: Conclusion) -> float | None:
    ratio = conclusion.ratio
    if ratio is None or ratio <= 0:
        return None
    return math.inf if math.isinf(ratio) else math.log(ratio)


def classify(unfair: Conclusion, fair: Conclusion, *, margin: float = CHANGE_MARGIN) -> str:
    """How the fair conclusion differs from the unfair one.

    `flipped`: both name a winner and they differ. Otherwise compare the size of the winning
    advantage |log ratio|: `shrank`/`grew` when it moved by more than a factor 1 + `margin`
    (this includes "clear winner" -> "no clear winner" and back), else `unchanged`.
    `undetermined` when either ratio is undefined.
    """
    lu, lf = _log_advantage(unfair), _log_advantage(fair)
    if lu is None or lf is None:
        return "undetermined"
    if unfair.winner and fair.winner and unfair.winner != fair.winner:
        return "flipped"
    mu, mf = abs(lu), abs(lf)
    step = math.log1p(margin)
    if math.isinf(mu) and math.isinf(mf):
        return "unchanged"
    if mu - mf > step:
        return "shrank"
    if mf - mu > step:
        return "grew"
    return "unchanged"


def describe_change(outcome: str, unfair: Conclusion, fair: Conclusion) -> str:
    """One sentence on how the verdict changed, for the report and the console."""

    def side(c: Conclusion) -> str:
        if c.ratio is None:
            return "could not be decided" if c.text.startswith("could not") else "no verdict"
        if c.winner is None:
            return f"no clear winner ({fmt_ratio(c.ratio)})"
        magnitude = c.ratio if c.ratio >= 1 else 1.0 / c.ratio
        return f"{c.winner} {fmt_ratio(magnitude)} better"

    u, f = side(unfair), side(fair)
    if outcome == "flipped":
        return f"The conclusion flipped: unfair says {u}, fair says {f}."
    if outcome in ("shrank", "grew"):
        return f"The difference {outcome}: unfair says {u}, fair says {f}."
    if outcome == "unchanged":
        return (f"The conclusion did not change beyond the ±{fmt_percent(CHANGE_MARGIN)} margin: "
                f"unfair says {u}, fair says {f}.")
    return f"No comparison possible: unfair says {u}, fair says {f}."


def classify_trend(unfair_factor: float | None, fair_factor: float | None, *,
                   margin: float = CHANGE_MARGIN) -> str:
    """How a number's dependence on the swept quantity changed from the unfair to the fair
    setup: the size of its per-doubling factor, |log f|, `shrank` or `grew` by more than a
    factor 1 + `margin`, or stayed `unchanged`; `undetermined` without both factors."""
    if unfair_factor is None or fair_factor is None or unfair_factor <= 0 or fair_factor <= 0:
        return "undetermined"
    mu, mf = abs(math.log(unfair_factor)), abs(math.log(fair_factor))
    step = math.log1p(margin)
    if mu - mf > step:
        return "shrank"
    if mf - mu > step:
        return "grew"
    return "unchanged"


def trend(xs: Sequence[float], values: Sequence[float | None], *,
          margin: float = TREND_MARGIN) -> tuple[str, float]:
    """Whether a series grows, shrinks or stays flat along a positive axis: the factor by which
    it changes per doubling of x, from the first to the last point, against 1 +/- `margin`.
    Returns (`increasing` | `decreasing` | `flat` | `undetermined`, factor per doubling).

    NOTE: per doubling, so that a tail percentile estimated from few samples (which creeps up
    as the sample grows) is not mistaken for growth: a queue that never drains doubles its
    waiting times when twice the requests are simulated.
    """
    if len(xs) != len(values) or len(values) < 2:
        return "undetermined", math.nan
    first, last = values[0], values[-1]
    if first is None or last is None or not (math.isfinite(first) and math.isfinite(last)):
        return "undetermined", math.nan
    if not (xs[0] > 0 and xs[-1] > xs[0]):
        return "undetermined", math.nan
    if first <= 0:
        return ("flat", 1.0) if last == first else ("undetermined", math.nan)
    ratio = (last / first) ** (1.0 / math.log2(xs[-1] / xs[0]))
    if ratio > 1.0 + margin:
        return "increasing", ratio
    if ratio < 1.0 / (1.0 + margin):
        return "decreasing", ratio
    return "flat", ratio
