"""Capacity under an SLO: the largest arrival rate whose runs meet a rule, found by bisection.

DESIGN §5 defines capacity as the largest arrival rate whose run meets an SLO rule, found by
bisection to a stated tolerance. A rule is a conjunction of thresholds on summary keys, written
either by name or explicitly (several items joined by commas, all must hold):

- `sarathi[:TBT_MS[:DELAY_MS]]`: p99_tbt_ms <= TBT_MS (default 200) and
  median_scheduling_delay_ms <= DELAY_MS (default 2000), Sarathi-Serve's capacity rule;
- `etalon[:RATE]`: p99_deadline_miss_rate <= RATE (default 0.1): the P99 over requests of each
  request's Etalon deadline-miss rate (deadlines from `metrics.fluidity`);
- `attainment[:FRACTION]`: slo_attainment >= FRACTION (default 0.9); needs `metrics.slo`;
- `class_attainment[:FRACTION]`: every request class (`workload.classes`) meets its own SLO
  for at least FRACTION of its requests (min_class_slo_attainment >= FRACTION);
- `KEY<=VALUE`, `KEY>=VALUE`, `KEY<VALUE`, `KEY>VALUE` on any numeric summary key, e.g.
  `p99_tbt_ms<=200,p99_ttft_ms<=2000`; a request class's keys are `class.<name>.<key>`, e.g.
  `class.premium.p99_ttft_ms<=300`.

With replications, a rate meets the rule when the mean over seeds of every referenced key does
(a missing value, e.g. no completed request, fails). Seeds are the same at every rate (common
random numbers), so for Poisson/gamma/constant arrivals a higher rate replays the same gaps
scaled down, and the search is over a monotone function of the rate.

Every result also states the GPUs the cluster occupies (`num_gpus`, from resolving the scenario:
the sum over pools of instances x tp x pp; it does not depend on the rate) and the capacity per
GPU; and, where every pool's GPU has a price (`simserve.pricing`: the catalog's or the
scenario's `cost.gpu_hour_usd`), what the cluster costs per hour (`usd_per_hour`) and the
requests it serves per dollar at capacity (`capacity_per_usd` = capacity x 3600 / usd_per_hour:
goodput per dollar under an attainment rule).

With `attainment:0.9` on a scenario whose `metrics.slo` sets TTFT and TPOT targets, the
capacity per GPU is DistServe's goodput per GPU (Zhong et al., OSDI 2024: the highest request
rate per GPU at which at least 90% of requests meet both SLOs), the number that ranks
co-located and disaggregated placements of different sizes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simserve.config import (
    ArrivalConfig,
    LengthsConfig,
    Scenario,
    WorkloadConfig,
    scenario_to_mapping,
)
from simserve.errors import InputError
from simserve.experiments.run import RunOutput, run_scenario
from simserve.formatting import fmt_number, fmt_plain, key_label
from simserve.metrics.energy import COST_KEYS
from simserve.metrics.summary import flat_summary
from simserve.pricing import cluster_usd_per_hour
from simserve.resolve import resolve

__all__ = [
    "EXTRA_SUMMARY_KEYS",
    "CapacityResult",
    "CapacitySettings",
    "Condition",
    "Probe",
    "SloRule",
    "check_capacity_scenario",
    "check_rule",
    "cluster_gpus",
    "cluster_price",
    "parse_slo_rule",
    "replication_seeds",
    "run_summary",
    "search_capacity",
    "summary_with_extras",
]

# Keys that runs made by sweeps and capacity searches add to the core summary.
EXTRA_SUMMARY_KEYS: tuple[str, ...] = ("mean_deadline_miss_rate", "p99_deadline_miss_rate")

DEFAULT_SARATHI_TBT_MS = 200.0
DEFAULT_SARATHI_DELAY_MS = 2000.0
DEFAULT_ETALON_MISS_RATE = 0.1
DEFAULT_ATTAINMENT = 0.9

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|<|>)\s*(\S+)\s*$")
_NAMED = re.compile(r"^\s*(sarathi|etalon|attainment|class_attainment)\s*(?::(.*))?$")


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Condition:
    """One threshold on a summary key, e.g. p99_tbt_ms <= 200."""

    key: str
    op: str
    threshold: float

    def holds(self, value: float | None) -> bool:
        """Whether `value` meets the threshold (a missing or NaN value never does)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return _OPS[self.op](float(value), self.threshold)

    def __str__(self) -> str:
        return f"{self.key}{self.op}{fmt_plain(self.threshold)}"

    def words(self) -> str:
        """The threshold for a reader: 'P99 TTFT ≤ 1,000 ms', or for attainment '≥ 90% of
        requests within the SLOs'."""
        symbol = {"<=": "≤", ">=": "≥", "<": "<", ">": ">"}[self.op]
        if self.key == "slo_attainment":
            return f"{symbol} {fmt_number(100 * self.threshold)}% of requests within the SLOs"
        unit = "ms" if self.key.endswith("_ms") else ""
        return f"{key_label(self.key, unit=False)} {symbol} {fmt_number(self.threshold, unit)}"


@dataclass(frozen=True)
class SloRule:
    """A conjunction of thresholds on summary keys; `text` is how the user wrote it."""

    text: str
    conditions: tuple[Condition, ...]
    needs_slo: bool = False
    needs_classes: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        """The summary keys the rule reads, in order, without repeats."""
        return tuple(dict.fromkeys(c.key for c in self.conditions))

    def describe(self) -> str:
        """The rule spelled out, e.g. 'p99_tbt_ms<=200 and median_scheduling_delay_ms<=2000'."""
        return " and ".join(str(c) for c in self.conditions)

    def words(self) -> str:
        """The rule for a reader, e.g. 'P99 TBT ≤ 200 ms, median scheduling delay ≤ 2,000 ms'
        (a named rule's name first: 'Sarathi: ...')."""
        named = _NAMED.match(self.text.split(",")[0])
        text = ", ".join(c.words() for c in self.conditions)
        return f"{named.group(1).capitalize()}: {text}" if named else text

    def mean_values(self, summaries: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
        """Mean over seeds of each key the rule reads (None if any seed lacks a value)."""
        values: dict[str, float | None] = {}
        flat = [flat_summary(s) for s in summaries]
        for key in self.keys:
            column = [s.get(key) for s in flat]
            if not column or any(not _is_number(v) for v in column):
                values[key] = None
            else:
                values[key] = float(np.mean(np.asarray(column, dtype=np.float64)))
        return values

    def evaluate(self, summaries: Sequence[Mapping[str, Any]]) -> tuple[bool, dict]:
        """Whether the seeds' mean values meet every condition, and those mean values."""
        values = self.mean_values(summaries)
        return all(c.holds(values[c.key]) for c in self.conditions), values


def _is_number(value: Any) -> bool:
    """A finite int or float (not a boolean)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _params(name: str, raw: str | None, count: int) -> list[float]:
    """The positive numbers after `name:` in a named rule (at most `count`)."""
    if raw is None or not raw.strip():
        return []
    parts = raw.split(":")
    if len(parts) > count:
        raise InputError(f"'{name}' takes at most {count} parameter(s), got {raw!r}", field="--slo")
    out = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            message = f"'{name}' parameter {part!r} is not a number"
            raise InputError(message, field="--slo") from None
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"'{name}' parameter must be > 0, got {part!r}", field="--slo")
        out.append(value)
    return out


def _named_conditions(name: str, raw: str | None) -> tuple[list[Condition], bool]:
    """A named rule's conditions, and whether it needs per-request SLOs in the scenario (and,
    for `class_attainment`, request classes)."""
    if name == "sarathi":
        params = _params(name, raw, 2)
        tbt = params[0] if params else DEFAULT_SARATHI_TBT_MS
        delay = params[1] if len(params) > 1 else DEFAULT_SARATHI_DELAY_MS
        return [
            Condition("p99_tbt_ms", "<=", tbt),
            Condition("median_scheduling_delay_ms", "<=", delay),
        ], False
    if name == "etalon":
        params = _params(name, raw, 1)
        rate = params[0] if params else DEFAULT_ETALON_MISS_RATE
        if rate >= 1:
            raise InputError(f"'etalon' miss rate must be < 1, got {fmt_number(rate)}",
                             field="--slo")
        return [Condition("p99_deadline_miss_rate", "<=", rate)], False
    params = _params(name, raw, 1)
    fraction = params[0] if params else DEFAULT_ATTAINMENT
    if fraction > 1:
        raise InputError(f"'{name}' fraction must be <= 1, got {fmt_number(fraction)}",
                         field="--slo")
    key = "min_class_slo_attainment" if name == "class_attainment" else "slo_attainment"
    return [Condition(key, ">=", fraction)], True


def parse_slo_rule(text: str) -> SloRule:
    """Parse an SLO rule (`sarathi:200`, `etalon`, `attainment:0.9`, `p99_tbt_ms<=200,...`)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"an SLO rule must be a non-empty string, got {text!r}", field="--slo")
    conditions: list[Condition] = []
    needs_slo = needs_classes = False
    for item in text.split(","):
        named = _NAMED.match(item)
        if named:
            found, needs = _named_conditions(named.group(1), named.group(2))
            conditions.extend(found)
            needs_slo |= needs
            needs_classes |= named.group(1) == "class_attainment"
            continue
        match = _CONDITION.match(item)
        if not match:
            raise InputError(
                f"cannot parse {item.strip()!r}: expected sarathi[:TBT_MS[:DELAY_MS]], "
                "etalon[:RATE], attainment[:FRACTION] or KEY<=VALUE / KEY>=VALUE",
                field="--slo",
            )
        key, op, raw = match.groups()
        try:
            threshold = float(raw)
        except ValueError:
            raise InputError(f"threshold {raw!r} of {key} is not a number", field="--slo") from None
        if not math.isfinite(threshold):
            raise InputError(f"threshold of {key} must be finite, got {raw!r}", field="--slo")
        conditions.append(Condition(key, op, threshold))
    return SloRule(text=text.strip(), conditions=tuple(conditions), needs_slo=needs_slo,
                   needs_classes=needs_classes)


def _probe_keys(scenario: Scenario, cache: dict[str, frozenset[str]]) -> frozenset[str]:
    """Summary keys a run of `scenario` produces, from a two-request run of the same metrics and
    engine configuration (cached per configuration)."""
    mapping = scenario_to_mapping(scenario)
    token = json.dumps([mapping.get(k) for k in ("metrics", "engine", "cost_model", "cost")]
                       + [mapping["workload"].get("classes")], sort_keys=True)
    if token not in cache:
        tiny = dataclasses.replace(
            scenario,
            workload=WorkloadConfig(
                num_requests=2,
                arrival=ArrivalConfig(process="constant", rate=1.0),
                lengths=LengthsConfig(prompt_len=4, output_len=1),
                classes=scenario.workload.classes,
            ),
        )
        cache[token] = frozenset(flat_summary(summary_with_extras(run_scenario(tiny))))
    return cache[token]


def check_rule(
    rule: SloRule, scenario: Scenario, cache: dict[str, frozenset[str]] | None = None
) -> None:
    """Refuse a rule that names an unknown summary key or needs SLOs the scenario lacks."""
    classes = scenario.workload.classes
    if rule.needs_classes and not classes:
        raise InputError(
            f"rule {rule.text!r} judges each request class by its own SLO: set "
            "workload.classes (name, share, priority, slo)",
            field="--slo",
        )
    known = _probe_keys(scenario, {} if cache is None else cache)
    for key in rule.keys:
        if key not in known and key in COST_KEYS:
            raise InputError(f"{key!r} in rule {rule.text!r} is reported only with a cost: "
                             "section in the scenario (e.g. --set 'cost={}')", field="--slo")
        if key not in known:
            numeric_hint = ", ".join(sorted(k for k in known if k.startswith(("p99_", "median_"))))
            raise InputError(
                f"unknown summary key {key!r} in rule {rule.text!r} (e.g. {numeric_hint})",
                field="--slo",
            )
    slos = [scenario.metrics.slo, *(c.slo for c in classes if c.slo is not None)]
    if rule.needs_slo and all(
        v is None for slo in slos for v in (slo.ttft_ms, slo.tpot_ms, slo.e2el_ms, slo.max_tbt_ms)
    ):
        raise InputError(
            f"rule {rule.text!r} needs per-request SLOs: set metrics.slo (ttft_ms, tpot_ms, ...)",
            field="--slo",
        )


# --------------------------------------------------------------------------- runs


def summary_with_extras(output: RunOutput) -> dict[str, object]:
    """The run summary plus the per-request Etalon deadline-miss rate (mean and P99 over measured
    requests), which the `etalon` capacity rule reads."""
    summary = dict(output.summary)
    if all(k in summary for k in EXTRA_SUMMARY_KEYS):
        return summary
    rates = output.deadline_miss_rate
    rates = rates[np.asarray(output.requests["measured"], dtype=bool) & ~np.isnan(rates)]
    summary.setdefault("mean_deadline_miss_rate", float(np.mean(rates)) if rates.size else None)
    summary.setdefault(
        "p99_deadline_miss_rate", float(np.percentile(rates, 99.0)) if rates.size else None
    )
    return summary


def run_summary(scenario: Scenario) -> dict[str, object]:
    """Run a scenario in this process and return its summary with the extra keys."""
    return summary_with_extras(run_scenario(scenario))


def replication_seeds(root_seed: int, replications: int) -> list[int]:
    """`replications` scenario seeds spawned from one root seed (SeedSequence.spawn)."""
    children = np.random.SeedSequence(root_seed).spawn(replications)
    return [int(child.generate_state(1, dtype=np.uint32)[0]) for child in children]


def rate_unit(scenario: Scenario) -> str:
    """What the searched arrival rate counts: session starts with multi-turn sessions (each
    session then sends its turns closed-loop), else requests."""
    return "sessions/s" if scenario.workload.sessions is not None else "req/s"


def with_rate_and_seed(scenario: Scenario, rate: float, seed: int) -> Scenario:
    """The scenario at another arrival rate and seed (validated again)."""
    arrival = dataclasses.replace(scenario.workload.arrival, rate=float(rate))
    workload = dataclasses.replace(scenario.workload, arrival=arrival)
    return dataclasses.replace(scenario, workload=workload, seed=int(seed))


# --------------------------------------------------------------------------- search


@dataclass(frozen=True)
class CapacitySettings:
    """How to search: the rule, optional bracket, relative tolerance and seeds per rate.

    The search stops when the bracket [meets, fails] satisfies high - low <= tolerance * low,
    so the reported capacity (low) is within `tolerance` of the true knee. With `extend`, a
    given bracket whose low end fails is halved, and one whose high end passes doubled, until
    the capacity is bounded on both sides (so a result is censored only past 2**20 either way).
    `ceiling` (the system's saturation throughput, `experiments.saturation`) is the overload
    guard: a rate at or above it fails without a run, since no finite run there is a steady
    state (its queue, once formed, never drains; a short one may not have built it yet). An
    extended search with a ceiling tries the top of the tolerance band below it first.
    """

    rule: SloRule
    seeds: tuple[int, ...]
    tolerance: float = 0.02
    low: float | None = None
    high: float | None = None
    max_probes: int = 60
    extend: bool = False
    ceiling: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1:
            raise InputError(f"must be in (0, 1), got {self.tolerance}", field="tolerance")
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"must be > 0, got {value}", field=name)
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise InputError(f"low ({self.low}) must be < high ({self.high})", field="low")
        if self.ceiling is not None and not (math.isfinite(self.ceiling) and self.ceiling > 0):
            raise InputError(f"must be > 0, got {self.ceiling}", field="ceiling")
        if not self.seeds:
            raise InputError("must be >= 1", field="replications")

    def to_mapping(self) -> dict[str, object]:
        """Plain data (for task payloads and capacity.json)."""
        return {
            "slo": self.rule.text,
            "seeds": list(self.seeds),
            "tolerance": self.tolerance,
            "low": self.low,
            "high": self.high,
            "max_probes": self.max_probes,
            "extend": self.extend,
            "ceiling": self.ceiling,
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CapacitySettings:
        """Inverse of `to_mapping`."""
        return cls(
            rule=parse_slo_rule(str(data["slo"])),
            seeds=tuple(int(s) for s in data["seeds"]),
            tolerance=float(data["tolerance"]),
            low=data.get("low"),
            high=data.get("high"),
            max_probes=int(data.get("max_probes", 60)),
            extend=bool(data.get("extend", False)),
            ceiling=data.get("ceiling"),
        )


@dataclass(frozen=True)
class Probe:
    """One rate tried: whether the mean over seeds met the rule, and the per-seed summaries.
    `guarded`: failed by the overload guard (at or above the ceiling), without a run."""

    rate: float
    passed: bool
    values: dict[str, float | None]
    summaries: tuple[dict[str, object], ...]
    guarded: bool = False


@dataclass(frozen=True)
class CapacityResult:
    """The outcome of one search.

    `status`: `ok` (capacity bracketed to the tolerance), `below_range` (even the lowest rate
    tried fails: capacity_rps is None), `above_range` (the highest rate tried, `high`, still
    meets the rule: capacity is at least that), `max_probes` (stopped after that many bisection
    steps; bracket wider than asked) or `undefined: ...` (a key the rule reads has no value for
    this workload, e.g. TBT with one output token). `num_gpus`: GPUs the searched cluster
    occupies (None only for results read back from files written before it was recorded).
    `ceiling_rps`: the overload guard of the search (`CapacitySettings.ceiling`), if any.
    """

    rule: str
    capacity_rps: float | None
    low_rps: float | None
    high_rps: float | None
    status: str
    tolerance: float
    probes: tuple[Probe, ...]
    num_gpus: int | None = None
    ceiling_rps: float | None = None
    usd_per_hour: float | None = None

    @property
    def bounded(self) -> bool:
        """Whether the capacity is known on both sides: a rate that met the rule and a higher
        one that failed (`ok` or `max_probes`); a censored result is only a bound."""
        return self.status in ("ok", "max_probes") and self.capacity_rps is not None \
            and self.high_rps is not None

    @property
    def capped(self) -> bool:
        """Whether the first failing rate above the capacity failed by the overload guard
        (the system's saturation), not by the SLO."""
        return any(p.guarded and p.rate == self.high_rps for p in self.probes)

    @property
    def capacity_per_gpu_rps(self) -> float | None:
        """Capacity divided by the GPUs the cluster occupies (DistServe's goodput per GPU under
        an attainment rule); None without a capacity or a GPU count."""
        if self.capacity_rps is None or not self.num_gpus:
            return None
        return self.capacity_rps / self.num_gpus

    @property
    def capacity_per_usd(self) -> float | None:
        """Requests served per dollar of GPU rental at capacity (capacity x 3600 s/h over the
        cluster's price per hour); None without a capacity or a price."""
        if self.capacity_rps is None or not self.usd_per_hour:
            return None
        return self.capacity_rps * 3600.0 / self.usd_per_hour

    def at_capacity(self) -> Probe | None:
        """The probe at the reported capacity (the largest rate that met the rule)."""
        for probe in self.probes:
            if self.capacity_rps is not None and probe.rate == self.capacity_rps:
                return probe
        return None

    def to_mapping(self) -> dict[str, object]:
        """Plain data for capacity.json."""
        return {
            "rule": self.rule,
            "capacity_rps": self.capacity_rps,
            "num_gpus": self.num_gpus,
            "capacity_per_gpu_rps": self.capacity_per_gpu_rps,
            "usd_per_hour": self.usd_per_hour,
            "capacity_per_usd": self.capacity_per_usd,
            "low_rps": self.low_rps,
            "high_rps": self.high_rps,
            "status": self.status,
            "tolerance": self.tolerance,
            "ceiling_rps": self.ceiling_rps,
            "capped": self.capped,
            "probes": [
                {"rate": p.rate, "passed": p.passed, "guarded": p.guarded, "values": p.values,
                 "summaries": list(p.summaries)}
                for p in self.probes
            ],
        }


RunMany = Callable[[list[Scenario]], list[dict[str, object]]]


def cluster_gpus(scenario: Scenario) -> int:
    """GPUs the scenario's cluster occupies: instances x tp x pp summed over its pools
    (co-located: replicas x tp x pp). The arrival rate does not change it, so a search states one
    number for all its probes; it is the `num_gpus` key of every run's summary."""
    return resolve(scenario).num_gpus


def cluster_price(scenario: Scenario) -> float | None:
    """What the scenario's cluster costs per hour (USD; None where a GPU has no price): GPUs x
    price per GPU-hour over its pools, at the catalog's prices or the scenario's `cost`."""
    return cluster_usd_per_hour(resolve(scenario))


def check_capacity_scenario(scenario: Scenario) -> float:
    """Refuse a scenario without a rate to search (offline, closed loop); return the rate the
    search starts from (the scenario's, else 1 request/s)."""
    process = scenario.workload.arrival.process
    if process in ("offline", "closed_loop"):
        raise InputError(
            f"capacity searches the arrival rate, but arrival.process is {process}: "
            "use poisson, gamma, constant or a rate-scaled trace",
            field="workload.arrival.process",
        )
    rate = scenario.workload.arrival.rate
    return float(rate) if rate is not None else 1.0


def search_capacity(
    scenario: Scenario,
    settings: CapacitySettings,
    run_many: RunMany | None = None,
    on_probe: Callable[[Probe], None] | None = None,
) -> CapacityResult:
    """Bisect the arrival rate of `scenario` for the largest rate meeting `settings.rule`.

    Without a bracket the search starts at the scenario's rate and doubles or halves until the
    rule flips; `run_many` runs a list of scenarios (the seeds of one rate) and returns their
    summaries with the extra keys (default: one by one in this process).
    """
    start = check_capacity_scenario(scenario)
    resolved = resolve(scenario)
    num_gpus, usd_per_hour = resolved.num_gpus, cluster_usd_per_hour(resolved)
    runner: RunMany = run_many or (lambda scenarios: [run_summary(s) for s in scenarios])
    probes: list[Probe] = []
    rule = settings.rule

    def meets(rate: float) -> bool:
        if settings.ceiling is not None and rate >= settings.ceiling:
            probe = Probe(rate=rate, passed=False, values={}, summaries=(), guarded=True)
            probes.append(probe)
            if on_probe is not None:
                on_probe(probe)
            return False
        scenarios = [with_rate_and_seed(scenario, rate, seed) for seed in settings.seeds]
        summaries = runner(scenarios)
        passed, values = rule.evaluate(summaries)
        probe = Probe(rate=rate, passed=passed, values=values, summaries=tuple(summaries))
        probes.append(probe)
        if on_probe is not None:
            on_probe(probe)
        missing = [k for k, v in values.items() if v is None]
        if missing and all(_is_number(s.get("completed")) and s["completed"] for s in summaries):
            # NOTE: runs drain every request, so a key without a value although requests were
            # measured is undefined for this workload (e.g. TBT with one output token) and no
            # other rate changes that. With nothing measured (every arrival inside the warm-up
            # window at a high rate) the probe simply fails.
            raise _Undefined(missing[0], rate)
        return passed

    def result(capacity: float | None, lo: float | None, hi: float | None, status: str):
        return CapacityResult(rule.text, capacity, lo, hi, status, settings.tolerance,
                              tuple(probes), num_gpus, settings.ceiling, usd_per_hour)

    try:
        return _search(meets, result, start, settings)
    except _Undefined as exc:
        # The status is data (capacity.json, summary.csv): the rate as the rule syntax has it.
        return result(None, None, None,
                      f"undefined: {exc.key} has no value at {fmt_plain(exc.rate)}/s")


class _Undefined(Exception):
    """A rule key had no value in a probe's summaries."""

    def __init__(self, key: str, rate: float) -> None:
        super().__init__(key)
        self.key = key
        self.rate = rate


def _search(
    meets: Callable[[float], bool],
    result: Callable[[float | None, float | None, float | None, str], CapacityResult],
    start: float,
    settings: CapacitySettings,
) -> CapacityResult:
    """Bracket (from `settings.low/high`, else by doubling/halving from `start`), then bisect."""
    # NOTE: 2**20 either way is far beyond any useful range; each step costs one probe.
    max_steps = 20
    lo: float | None = settings.low
    hi: float | None = settings.high
    hi_fails = False
    if settings.ceiling is not None and (hi is None or hi >= settings.ceiling):
        hi = settings.ceiling
        hi_fails = not meets(hi)  # the guard's probe: recorded, never run
        if lo is not None and lo >= hi:
            lo = None
        # NOTE: under a loose SLO the capacity is the ceiling itself; one probe at the top of
        # the tolerance band then settles the search (the bisection would take log2(1/tol)).
        top = hi / (1.0 + settings.tolerance)
        if settings.extend and (lo is None or lo < top):
            if meets(top):
                return result(top, top, hi, "ok")
            hi = top
    if lo is not None and not meets(lo):
        if not settings.extend:
            return result(None, None, lo, "below_range")
        lo, hi = None, lo
    elif hi is not None and not hi_fails and meets(hi):
        if not settings.extend:
            return result(hi, hi, None, "above_range")
        lo, hi = hi, None
    if lo is None and hi is None:
        if meets(start):
            lo = start
        else:
            hi = start
    for _ in range(max_steps):
        if lo is not None and hi is not None:
            break
        if hi is None:
            assert lo is not None
            rate = lo * 2.0
            if meets(rate):
                lo = rate
            else:
                hi = rate
        else:
            rate = hi / 2.0
            if meets(rate):
                lo = rate
            else:
                hi = rate
    if lo is None:
        return result(None, None, hi, "below_range")
    if hi is None:
        return result(lo, lo, None, "above_range")
    num_probes = 0
    while hi - lo > settings.tolerance * lo:
        num_probes += 1
        if num_probes > settings.max_probes:
            return result(lo, lo, hi, "max_probes")
        mid = 0.5 * (lo + hi)
        if meets(mid):
            lo = mid
        else:
            hi = mid
    return result(lo, lo, hi, "ok")
