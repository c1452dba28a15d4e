"""Run catalog entries: build each setup's scenarios, simulate, and state both conclusions.

For every entry and setup the runner measures saturation throughputs (`experiments.saturation`:
the reference system's places the arrival rates; each system's own is the ceiling of its
capacity), runs every system on the same replication seeds (common random numbers, DESIGN
§9), summarises the seeds on the log scale (`experiments.replications`), bisects capacities
with `experiments.capacity.search_capacity` until they are bounded on both sides, and applies
the entry's conclusion rule; a verdict never rests on a capacity known only as a bound. The
result is plain data (what verdicts.json holds); the report and figures are drawn from it only,
so every number in the report is one in verdicts.json.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from simserve.antipatterns.catalog import SCENARIOS_DIR
from simserve.antipatterns.model import (
    CAPACITY_KEYS,
    CHANGE_MARGIN,
    CONFIDENCE,
    TIE_MARGIN,
    TREND_MARGIN,
    Capacity,
    Conclusion,
    Entry,
    Metric,
    Point,
    Setup,
    Size,
    Sweep,
    advantage,
    classify,
    classify_trend,
    conclude,
    describe_change,
    trend,
)
from simserve.config import Scenario, load_scenario
from simserve.experiments.capacity import (
    CapacityResult,
    CapacitySettings,
    parse_slo_rule,
    replication_seeds,
    search_capacity,
)
from simserve.experiments.pool import RunPool, scenario_key
from simserve.experiments.replications import paired_log_interval, seed_estimate
from simserve.experiments.saturation import Saturation, measure_saturation
from simserve.formatting import (
    fmt_number,
    fmt_percent,
    fmt_ratio,
    number_or_none,
    round_significant,
)

__all__ = ["CatalogRunner", "ratio_ci", "seed_values"]

Summary = dict[str, Any]
Progress = Callable[[str], None]
T = TypeVar("T")
# The distinct runs the entry being run asked for (its `num_runs`, whoever simulated them).
_ENTRY_RUNS: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "entry_runs", default=None)


# --------------------------------------------------------------------------- statistics


def seed_values(metric: Metric, per_seed: Sequence[float | None]) -> dict[str, Any]:
    """One metric over the seeds: its value (geometric mean on the log scale, see
    `experiments.replications`), 95% interval, estimator and the per-seed values."""
    estimate = seed_estimate(per_seed, upper=metric.upper)
    return {
        "value": None if estimate is None else estimate.value,
        "ci": None if estimate is None or estimate.interval is None else list(estimate.interval),
        "estimator": None if estimate is None else estimate.estimator,
        "per_seed": list(per_seed),
    }


def ratio_ci(metric: Metric, candidate: Sequence[float | None], baseline: Sequence[float | None],
             confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Confidence interval of the candidate's advantage from paired seeds (same seed, same
    requests): a t-interval on the per-seed log ratios, exponentiated; its centre is the ratio
    of the two geometric means."""
    ratios = [advantage(metric, c, b) for c, b in zip(candidate, baseline, strict=True)]
    found = paired_log_interval(ratios, confidence=confidence)
    return None if found is None else (found[1], found[2])


_number = number_or_none


def _round_rate(rate: float) -> float:
    """Rates with 4 significant digits (readable in scenario files and the report)."""
    return round_significant(rate, 4)


class CatalogRunner:
    """Runs entries at one size with fixed seeds over one `RunPool` (runs cached by their
    resolved scenario).

    With `jobs` > 1 the simulations run in a pool of that many processes, and the entries,
    their setups, systems and tuning options are driven by threads that feed the pool (each
    capacity search is a sequence of probes, so several searches run side by side, and every
    entry's runs at once: the pool stays busy until the catalog's last run); `jobs=1` runs
    everything in this process, one run after the other. Results do not depend on `jobs`.
    """

    def __init__(self, size: Size, *, root_seed: int = 0, jobs: int | None = 1,
                 progress: Progress | None = None) -> None:
        self.size = size
        self.root_seed = root_seed
        self.seeds = replication_seeds(root_seed, size.seeds)
        self.pool = RunPool(jobs, progress)
        self.jobs = self.pool.jobs
        self._done_lock = threading.Lock()

    def __enter__(self) -> CatalogRunner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.pool.__exit__(exc_type, *exc)  # a failure stops the workers without waiting

    def close(self) -> None:
        """Stop the worker processes (pending runs are cancelled)."""
        self.pool.close()

    @property
    def num_runs(self) -> int:
        """Distinct scenarios simulated so far."""
        return self.pool.num_runs

    # ----------------------------------------------------------------- simulation

    def summaries(self, scenarios: Sequence[Scenario]) -> list[Summary]:
        """Summaries of these scenarios, simulating (in parallel) only those not yet run."""
        used = _ENTRY_RUNS.get()
        if used is not None:
            used.update(scenario_key(s) for s in scenarios)
        return self.pool.summaries(scenarios)

    def _parallel(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Call each function, side by side in threads when running with several jobs."""
        return self.pool.concurrently(calls)

    def _scenario(self, entry: Entry, overrides: Sequence[str]) -> Scenario:
        return load_scenario(SCENARIOS_DIR / entry.base, list(overrides))

    def _windows(self, scenario: Scenario, warmup: bool) -> Scenario:
        """Warm-up and cool-down windows of `window_fraction` of the expected arrival span."""
        arrival = scenario.workload.arrival
        window = 0.0
        if warmup and arrival.process in ("poisson", "gamma", "constant") and arrival.rate:
            span_s = scenario.workload.num_requests / arrival.rate
            window = round_significant(self.size.window_fraction * span_s, 4)
        metrics = dataclasses.replace(scenario.metrics, warmup_s=window, cooldown_s=window)
        return dataclasses.replace(scenario, metrics=metrics)

    def _num_requests(self, factor: float) -> int:
        return max(4, round(factor * self.size.requests))

    def saturation(self, entry: Entry, overrides: Sequence[str]) -> Saturation:
        """Saturation throughput (`experiments.saturation`) of one system under these
        overrides: the highest rate an open-loop arrival process can sustain in steady state."""
        scenario = self._scenario(entry, [*overrides, f"seed={self.seeds[0]}"])
        return measure_saturation(scenario, self.summaries,
                                  num_requests=self.size.saturation_requests)

    # ----------------------------------------------------------------- measures

    def _point(self, entry: Entry, overrides: Sequence[str], point: Point,
               saturation: float) -> dict[str, Any]:
        n = self._num_requests(point.requests)
        if point.load is None:
            common = [*overrides, "workload.arrival.process=offline",
                      "workload.arrival.rate=null", f"workload.num_requests={n}"]
            rate = None
        else:
            rate = _round_rate(point.load * saturation)
            common = [*overrides, f"workload.arrival.rate={rate}", f"workload.num_requests={n}"]
        scenarios = [self._windows(self._scenario(entry, [*common, f"seed={seed}"]), point.warmup)
                     for seed in self.seeds]
        summaries = self.summaries(scenarios)
        return {"rate_rps": rate, "load": point.load, "num_requests": n,
                "warmup_s": scenarios[0].metrics.warmup_s, "summaries": summaries}

    def _capacity(self, entry: Entry, overrides: Sequence[str], measure: Capacity,
                  reference: float) -> dict[str, Any]:
        n = self._num_requests(measure.requests)
        own = self.saturation(entry, overrides)
        # NOTE: the system's own saturation is its ceiling (the overload guard); without one
        # (no steady window found) the bracket starts from the reference system's and extends.
        ceiling = _round_rate(own.rps) if math.isfinite(own.rps) else None
        low = _round_rate(measure.low * (own.rps if ceiling is not None else reference))
        scenario = self._scenario(entry, [*overrides, f"workload.arrival.rate={low}",
                                          f"workload.num_requests={n}"])
        settings = CapacitySettings(
            rule=parse_slo_rule(measure.rule), seeds=tuple(self.seeds),
            tolerance=self.size.tolerance, low=low,
            high=None if ceiling is not None else _round_rate(2 * reference),
            max_probes=self.size.max_probes, extend=True, ceiling=ceiling)

        def run_many(scenarios: list[Scenario]) -> list[dict[str, object]]:
            return self.summaries([self._windows(s, True) for s in scenarios])

        result: CapacityResult = search_capacity(scenario, settings, run_many=run_many)
        at = result.at_capacity()
        return {
            "rule": result.rule,
            "rule_text": settings.rule.describe(),
            "rule_words": settings.rule.words(),
            "capacity_rps": result.capacity_rps,
            "num_gpus": result.num_gpus,
            "capacity_per_gpu_rps": result.capacity_per_gpu_rps,
            "status": result.status,
            "bounded": result.bounded,
            "capped": result.capped,
            "low_rps": result.low_rps,
            "high_rps": result.high_rps,
            "saturation_rps": own.rps if math.isfinite(own.rps) else None,
            "saturation": own.to_mapping(),
            "bracket_rps": [low, ceiling],
            "num_requests": n,
            "probes": [{"rate_rps": p.rate, "passed": p.passed, "guarded": p.guarded,
                        "values": {k: _number(v) for k, v in p.values.items()}}
                       for p in result.probes],
            "values_at_capacity": None if at is None else {
                k: _number(v) for k, v in at.values.items()},
        }

    # ----------------------------------------------------------------- setups

    def _system_overrides(self, entry: Entry, setup: Setup, system: str) -> list[str]:
        return [*setup.overrides, *entry.systems[system],
                *setup.system_overrides.get(system, ())]

    def _measure(self, entry: Entry, setup: Setup, overrides: Sequence[str],
                 saturation: float) -> dict[str, Any]:
        measure = setup.measure
        if isinstance(measure, Capacity):
            return {"capacity": self._capacity(entry, overrides, measure, saturation)}
        if isinstance(measure, Point):
            return {"point": self._point(entry, overrides, measure, saturation)}
        # NOTE: a sweep point at or above the system's own saturation is not a steady state
        # (its numbers depend on the run length): it is marked, drawn hollow, and a verdict
        # read at the worst or last point is read among the steady ones.
        own = self.saturation(entry, overrides).rps
        points = [self._point(entry, overrides, p, saturation) for p in measure.points]
        for point in points:
            point["overloaded"] = bool(point["rate_rps"] is not None and math.isfinite(own)
                                       and point["rate_rps"] >= own)
            point["saturation_rps"] = own if math.isfinite(own) else None
        return {"sweep": points}

    def _score(self, setup: Setup, measured: Mapping[str, Any]) -> float | None:
        """The verdict metric of one measurement (for picking the best tuning option)."""
        if "capacity" in measured:
            value = _cap_value(measured["capacity"], setup.verdict.key)
            return value if value is not None else 0.0
        if "point" in measured:
            values = [_number(s.get(setup.verdict.key)) for s in measured["point"]["summaries"]]
            return seed_values(setup.verdict, values)["value"]
        return None

    def run_setup(self, entry: Entry, setup: Setup, label: str) -> dict[str, Any]:
        """Measure every system under one setup and state the setup's conclusion."""
        reference = self.saturation(entry, [*setup.overrides,
                                            *entry.systems[entry.reference_system]])
        saturation = reference.rps
        if not math.isfinite(saturation):
            raise ValueError(f"{entry.id}: no saturation throughput for "
                             f"{entry.reference_system} (no steady window in its offline run)")
        shown = _dedupe([setup.verdict, *setup.metrics])
        if isinstance(setup.measure, Sweep) and setup.tuning:
            raise ValueError(f"{entry.id}: tuning is not supported with a sweep")
        trials: list[tuple[str, tuple[str, ...]]] = [
            (system, option)
            for system in entry.systems
            for option in (setup.tuning.get(system) or ((),))
        ]

        def measure(system: str, option: tuple[str, ...]) -> dict[str, Any]:
            self.pool.say(f"  {entry.id} {label}: {system} {' '.join(option)}".rstrip())
            overrides = [*self._system_overrides(entry, setup, system), *option]
            return self._measure(entry, setup, overrides, saturation)

        measured_all = self._parallel(
            [lambda s=system, o=option: measure(s, o) for system, option in trials])
        systems: dict[str, Any] = {}
        for system in entry.systems:
            mine = [(list(o), m, self._score(setup, m))
                    for (s, o), m in zip(trials, measured_all, strict=True) if s == system]
            option, measured, _score = mine[_best(mine, setup.verdict)]
            record: dict[str, Any] = {
                "overrides": [*self._system_overrides(entry, setup, system), *option]}
            if setup.tuning.get(system):
                record["tuning"] = {
                    "chosen": option,
                    "options": [{"overrides": o, "value": v} for o, _m, v in mine],
                }
            record.update(_condense(measured, shown))
            systems[system] = record
        result: dict[str, Any] = {
            "description": setup.description,
            "overrides": list(setup.overrides),
            "system_overrides": {k: list(v) for k, v in setup.system_overrides.items()},
            "measure": _measure_info(setup),
            "reference_system": entry.reference_system,
            "saturation_rps": saturation,
            "verdict_metric": setup.verdict.key,
            "slo_line": None if setup.slo_line is None else list(setup.slo_line),
            "metrics": [m.key for m in shown],
            "saturation": reference.to_mapping(),
            "metric_info": {m.key: {"label": m.label, "unit": m.unit, "better": m.better,
                                    "population": m.population, "axis_label": m.axis_label}
                            for m in shown},
            "systems": systems,
        }
        conclusion, per_point = _conclusion(entry, setup, systems)
        result["conclusion"] = conclusion.to_mapping()
        if per_point is not None:
            result["per_point"] = per_point
        if isinstance(setup.measure, Sweep):
            result["trend"] = _trends(entry, setup, systems)
        return result

    def run_entries(self, entries: Sequence[Entry],
                    on_done: Callable[[dict[str, Any]], None] | None = None
                    ) -> list[dict[str, Any]]:
        """`run_entry` of every entry, all at once over the pool; results in catalog order.
        `on_done` is called with each result as its entry finishes."""

        def one(entry: Entry) -> dict[str, Any]:
            result = self.run_entry(entry)
            if on_done is not None:
                with self._done_lock:
                    on_done(result)
            return result

        return self._parallel([lambda e=entry: one(e) for entry in entries])

    def run_entry(self, entry: Entry) -> dict[str, Any]:
        """Both setups of one entry, their conclusions and how the conclusion changed."""
        t0 = time.perf_counter()
        used: set[str] = set()
        _ENTRY_RUNS.set(used)
        unfair, fair = self._parallel([
            lambda: self.run_setup(entry, entry.unfair, "unfair"),
            lambda: self.run_setup(entry, entry.fair, "fair"),
        ])
        cu = _from_mapping(entry.unfair.verdict, unfair)
        cf = _from_mapping(entry.fair.verdict, fair)
        if entry.outcome_on == "trend":
            fu, ff = _dependence(unfair), _dependence(fair)
            outcome = classify_trend(fu, ff)
            change = _describe_trend_change(entry, outcome, unfair, fair)
        else:
            outcome = classify(cu, cf)
            change = describe_change(outcome, cu, cf)
        trends_held = all(s.get("trend", {}).get("held") is not False for s in (unfair, fair))
        changes = _value_changes(entry, unfair, fair)
        changes_held = changes is None or changes["held"] is not False
        return {
            "id": entry.id,
            "dimension": entry.dimension,
            "title": entry.title,
            "description": entry.description,
            "checklist": list(entry.checklist),
            "outcome_on": entry.outcome_on,
            "tie_margin": TIE_MARGIN,
            "trend_margin": TREND_MARGIN,
            "base": f"scenarios/antipatterns/{entry.base}",
            "systems": {k: list(v) for k, v in entry.systems.items()},
            "candidate": entry.candidate,
            "baseline": entry.baseline,
            "unfair": unfair,
            "fair": fair,
            "outcome": outcome,
            "change": change,
            "expected": list(entry.expected),
            "expected_text": entry.expected_text,
            "value_changes": changes,
            "as_expected": outcome in entry.expected and trends_held and changes_held,
            "figure": f"figures/{entry.id}.png",
            "num_runs": len(used),
            "wall_s": round(time.perf_counter() - t0, 2),
        }

    def metadata(self) -> dict[str, Any]:
        """Size, seeds and margins, for verdicts.json and the report."""
        return {
            "size": dataclasses.asdict(self.size),
            "root_seed": self.root_seed,
            "seeds": list(self.seeds),
            "confidence": CONFIDENCE,
            "tie_margin": TIE_MARGIN,
            "change_margin": CHANGE_MARGIN,
            "trend_margin": TREND_MARGIN,
        }


# --------------------------------------------------------------------------- helpers


def _dedupe(metrics: Sequence[Metric]) -> list[Metric]:
    seen: dict[str, Metric] = {}
    for m in metrics:
        seen.setdefault(m.key, m)
    return list(seen.values())


def _best(trials: Sequence[tuple[list[str], Mapping[str, Any], float | None]],
          metric: Metric) -> int:
    """Index of the best tuning option on the verdict metric (the first on ties)."""
    best, best_score = 0, None
    for i, (_option, _measured, score) in enumerate(trials):
        if score is None:
            continue
        better = best_score is None or (
            score > best_score if metric.better == "higher" else score < best_score)
        if better:
            best, best_score = i, score
    return best


def _values(summaries: Sequence[Mapping[str, Any]], metrics: Sequence[Metric]) -> dict[str, Any]:
    return {m.key: seed_values(m, [_number(s.get(m.key)) for s in summaries]) for m in metrics}


def _point_record(point: Mapping[str, Any], metrics: Sequence[Metric]) -> dict[str, Any]:
    summaries = point["summaries"]
    completed = [_number(s.get("completed")) for s in summaries]
    return {
        "rate_rps": point["rate_rps"],
        "load": point["load"],
        "num_requests": point["num_requests"],
        "warmup_s": point["warmup_s"],
        "completed": completed,
        "values": _values(summaries, metrics),
        **({"overloaded": point["overloaded"], "saturation_rps": point["saturation_rps"]}
           if "overloaded" in point else {}),
    }


def _condense(measured: Mapping[str, Any], metrics: Sequence[Metric]) -> dict[str, Any]:
    """Keep the numbers the report needs, not whole summaries."""
    if "capacity" in measured:
        return {"capacity": measured["capacity"]}
    if "point" in measured:
        return {"point": _point_record(measured["point"], metrics)}
    return {"sweep": [_point_record(p, metrics) for p in measured["sweep"]]}


def _measure_info(setup: Setup) -> dict[str, Any]:
    measure = setup.measure
    if isinstance(measure, Capacity):
        info: dict[str, Any] = {"kind": "capacity", "rule": measure.rule, "low": measure.low,
                                "requests": measure.requests}
    elif isinstance(measure, Point):
        info = {"kind": "point", "load": measure.load, "requests": measure.requests,
                "warmup": measure.warmup}
    else:
        info = {"kind": "sweep", "axis": measure.axis, "summary": measure.summary,
                "trend": measure.trend,
                "loads": [p.load for p in measure.points],
                "requests": [p.requests for p in measure.points],
                "warmup": [p.warmup for p in measure.points]}
    info["text"] = measure.describe()
    return info


def _series(record: Mapping[str, Any], key: str) -> tuple[list[float | None], list[list]]:
    """Means and per-seed values of `key` along a system's sweep."""
    means = [p["values"][key]["value"] for p in record["sweep"]]
    seeds = [p["values"][key]["per_seed"] for p in record["sweep"]]
    return means, seeds


def _x_text(point: Mapping[str, Any], axis: str) -> str:
    if axis == "requests":
        return f"with {point['num_requests']} requests"
    return f"at {fmt_number(point['rate_rps'], 'req/s')}"


def _conclusion(entry: Entry, setup: Setup, systems: Mapping[str, Any]
                ) -> tuple[Conclusion, list[dict[str, Any]] | None]:
    """Apply the conclusion rule to the setup's numbers (and to each point of a sweep)."""
    metric = setup.verdict
    cand, base = systems[entry.candidate], systems[entry.baseline]
    if isinstance(setup.measure, Capacity):
        cc, cb = cand["capacity"], base["capacity"]
        censored = [f"{name}'s capacity is {_censored_text(cap)}"
                    for name, cap in ((entry.candidate, cc), (entry.baseline, cb))
                    if not cap["bounded"]]
        return conclude(metric, entry.candidate, entry.baseline, _cap_value(cc, metric.key),
                        _cap_value(cb, metric.key),
                        ratio_ci=_bracket_ratio(metric, cc, cb), ratio_ci_kind="bisection bracket",
                        undecided="; ".join(censored) if censored else None), None
    if isinstance(setup.measure, Point):
        vc, vb = cand["point"]["values"][metric.key], base["point"]["values"][metric.key]
        ci = ratio_ci(metric, vc["per_seed"], vb["per_seed"])
        rate = cand["point"]["rate_rps"]
        where = "offline" if rate is None else f"at {fmt_number(rate, 'req/s')}"
        return conclude(metric, entry.candidate, entry.baseline, vc["value"], vb["value"],
                        ratio_ci=ci, where=where), None
    sweep = setup.measure
    mc, sc = _series(cand, metric.key)
    mb, sb = _series(base, metric.key)
    per_point = []
    conclusions = []
    for i, point in enumerate(cand["sweep"]):
        c = conclude(metric, entry.candidate, entry.baseline, mc[i], mb[i],
                     ratio_ci=ratio_ci(metric, sc[i], sb[i]),
                     where=_x_text(point, sweep.axis))
        conclusions.append(c)
        per_point.append({"index": i, **c.to_mapping()})
    steady = [i for i, (pc, pb) in enumerate(zip(cand["sweep"], base["sweep"], strict=True))
              if not (pc.get("overloaded") or pb.get("overloaded"))] or list(range(len(per_point)))
    index = 0 if sweep.summary == "first" else steady[-1]
    if sweep.summary == "worst":
        logs = [math.log(c.ratio) if c.ratio and c.ratio > 0 and math.isfinite(c.ratio)
                else math.inf for c in conclusions]
        index = min(steady, key=lambda i: logs[i])
    for row in per_point:
        row["summary"] = row["index"] == index
    return conclusions[index], per_point


def _censored_text(capacity: Mapping[str, Any]) -> str:
    """Why a capacity is only a bound, in words."""
    status = capacity["status"]
    if status == "below_range":
        return (f"below {fmt_number(capacity['high_rps'], 'req/s')} (the rule fails at every "
                "rate tried)")
    if status == "above_range":
        return (f"at least {fmt_number(capacity['capacity_rps'], 'req/s')} (the rule holds at "
                "every rate tried)")
    return f"undefined ({status})"


def _cap_value(capacity: Mapping[str, Any], key: str = "capacity_rps") -> float | None:
    """A capacity record's number: `capacity_rps` or `capacity_per_gpu_rps` (CAPACITY_KEYS);
    None when the capacity is not bounded on both sides (a censored search)."""
    if key not in CAPACITY_KEYS:
        raise ValueError(f"a capacity record has no {key!r}")
    if not capacity["bounded"]:
        return None
    return capacity.get(key)


def _bracket_ratio(metric: Metric, candidate: Mapping[str, Any], baseline: Mapping[str, Any]
                   ) -> tuple[float, float] | None:
    """The range of the candidate's capacity advantage that the two bisection brackets
    [capacity, first failing rate] allow (both per GPU when the metric is)."""
    if not (candidate["bounded"] and baseline["bounded"]):
        return None

    def bracket(cap: Mapping[str, Any]) -> tuple[float, float]:
        scale = (1.0 / cap["num_gpus"] if metric.key == "capacity_per_gpu_rps"
                 and cap.get("num_gpus") else 1.0)
        return cap["capacity_rps"] * scale, cap["high_rps"] * scale

    (c_lo, c_hi), (b_lo, b_hi) = bracket(candidate), bracket(baseline)
    if c_lo <= 0 or b_lo <= 0:
        return None
    return c_lo / b_hi, c_hi / b_lo


def _trends(entry: Entry, setup: Setup, systems: Mapping[str, Any]) -> dict[str, Any]:
    """Each system's verdict metric along the sweep (factor per doubling of the axis), against
    the catalog's expectation (if any)."""
    assert isinstance(setup.measure, Sweep)
    expected = setup.measure.trend
    axis_key = "num_requests" if setup.measure.axis == "requests" else "rate_rps"
    per_system = {}
    for name, record in systems.items():
        means, _ = _series(record, setup.verdict.key)
        xs = [float(p[axis_key]) for p in record["sweep"]]
        direction, factor = trend(xs, means)
        per_system[name] = {"trend": direction,
                            "per_doubling": None if math.isnan(factor) else factor,
                            "first": means[0], "last": means[-1]}
    held = None if expected is None else all(
        v["trend"] == expected for v in per_system.values())
    return {"expected": expected, "systems": per_system, "held": held}


def _verdict_value(entry: Entry, setup: Setup, result: Mapping[str, Any], system: str
                   ) -> float | None:
    """The number a setup's conclusion used for one system."""
    c = result["conclusion"]
    value = c["candidate_value"] if system == entry.candidate else c["baseline_value"]
    if system in (entry.candidate, entry.baseline):
        return None if value == "inf" else value
    record = result["systems"][system]
    if "capacity" in record:
        return _cap_value(record["capacity"], setup.verdict.key)
    if "point" in record:
        return record["point"]["values"][setup.verdict.key]["value"]
    index = next((p["index"] for p in result.get("per_point", []) if p["summary"]), -1)
    return record["sweep"][index]["values"][setup.verdict.key]["value"]


def _value_changes(entry: Entry, unfair: Mapping[str, Any], fair: Mapping[str, Any]
                   ) -> dict[str, Any] | None:
    """Per system, how its verdict number moved from the unfair to the fair setup (only when
    both report the same metric), against the entry's `expected_change`."""
    if entry.unfair.verdict != entry.fair.verdict:
        return None
    metric = entry.fair.verdict
    systems = {}
    for name in entry.systems:
        vu = _verdict_value(entry, entry.unfair, unfair, name)
        vf = _verdict_value(entry, entry.fair, fair, name)
        gain = advantage(metric, vf, vu)  # > 1: the fair setup's number is better
        direction = None if gain is None else (
            "better" if gain > 1 else "worse" if gain < 1 else "same")
        systems[name] = {"unfair": vu, "fair": vf, "direction": direction,
                         "fair_over_unfair": None if (vu in (None, 0) or vf is None)
                         else vf / vu}
    expected = entry.expected_change
    held = None if expected is None else all(
        v["direction"] == expected for v in systems.values())
    return {"metric": metric.key, "expected": expected, "systems": systems, "held": held}


def _from_mapping(metric: Metric, setup_result: Mapping[str, Any]) -> Conclusion:
    """Rebuild the Conclusion object of a setup result (for classify/describe_change)."""
    c = setup_result["conclusion"]

    def num(v: Any) -> float | None:
        return math.inf if v == "inf" else v

    ci = c["ratio_ci"]
    return Conclusion(metric, c["candidate"], c["baseline"], num(c["candidate_value"]),
                      num(c["baseline_value"]), num(c["ratio"]),
                      None if ci is None else (num(ci[0]), num(ci[1])), c["winner"], c["text"],
                      c["ratio_ci_kind"])


def _dependence(setup_result: Mapping[str, Any]) -> float | None:
    """The per-doubling factor of the system whose number depends most on the swept quantity
    (largest |log factor|), None if any system's trend is undetermined."""
    factors = [t["per_doubling"] for t in setup_result["trend"]["systems"].values()]
    if not factors or any(f is None or f <= 0 for f in factors):
        return None
    return max(factors, key=lambda f: abs(math.log(f)))


def _describe_trend_change(entry: Entry, outcome: str, unfair: Mapping[str, Any],
                           fair: Mapping[str, Any]) -> str:
    """One sentence on how the dependence on the swept quantity changed (ES3's outcome)."""
    setup = entry.unfair.measure
    assert isinstance(setup, Sweep)
    what = "the run length" if setup.axis == "requests" else "the arrival rate"
    label = entry.unfair.verdict.label

    def side(result: Mapping[str, Any]) -> str:
        parts = [f"{name} {fmt_ratio(t['per_doubling'])} ({t['trend']})"
                 for name, t in result["trend"]["systems"].items()]
        return ", ".join(parts)

    head = {"shrank": f"The dependence of {label} on {what} shrank",
            "grew": f"The dependence of {label} on {what} grew",
            "unchanged": f"The dependence of {label} on {what} did not change beyond the "
                         f"±{fmt_percent(CHANGE_MARGIN)} margin",
            }.get(outcome, f"No comparison of the dependence of {label} on {what} possible")
    return (f"{head}: per doubling of the swept quantity, unfair {side(unfair)}; fair "
            f"{side(fair)}.")
