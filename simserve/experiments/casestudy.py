"""Speculative-decoding case study (DESIGN §8): one scenario with and without speculation.

`run_specdec` runs a preset (a scenario YAML under `scenarios/casestudy/` plus a sweep plan)
with and without `engine.speculative` over a sweep of Poisson arrival rates placed relative to
the no-spec system's saturation throughput, adds speculation variants (other alpha and k) for
the crossover figure, bisects the capacity of both systems under three SLO rules, and prices
single steps with the cost model to explain where speculation stops paying. Everything is
computed in memory from the runs' summaries; `casestudy_report.write_specdec` writes the
report, the seven figures and the raw summaries. Every run uses the scenario's seed, so both
systems (and every rate) see the same requests (common random numbers, DESIGN §9).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from simserve.config import Scenario, SpeculativeConfig, load_scenario
from simserve.costmodel.base import BatchShape
from simserve.costmodel.speculative import SpeculativeCostModel
from simserve.engine.speculative import expected_tokens_per_step
from simserve.errors import InputError
from simserve.experiments.capacity import (
    CapacitySettings,
    SloRule,
    parse_slo_rule,
    search_capacity,
)
from simserve.experiments.pool import MEAN_BATCH_KEY, RunPool
from simserve.experiments.run import RunOutput, run_scenario
from simserve.experiments.saturation import Saturation, measure_saturation, offline_scenario
from simserve.formatting import fmt_number, fmt_plain, round_significant
from simserve.resolve import resolve
from simserve.resources import scenarios_dir

__all__ = [
    "BASELINE",
    "DEFAULT_PRESET",
    "LOAD_KEY",
    "PRESETS",
    "PRESETS_DIR",
    "RULES",
    "SPEC",
    "CapacityEstimate",
    "CapacityRule",
    "RunRecord",
    "SloTargets",
    "SpecDecPreset",
    "SpecDecStudy",
    "SweepPlan",
    "crossings",
    "run_specdec",
    "step_cost_table",
    "summary_value",
]

PRESETS_DIR = scenarios_dir("casestudy")

BASELINE = "no spec"
SPEC = "spec"


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class SweepPlan:
    """How much one case-study run simulates.

    Sweep rates are `load_fractions` of the no-spec system's saturation throughput (measured in
    an offline run of `saturation_requests` requests, see `experiments.saturation`), so the sweep
    always reaches past the no-spec knee whatever the model, GPU or overrides. A run at rate r
    has max(`num_requests`, r x `min_arrival_span_s`) requests, at most `max_requests`: near
    the knee a run must be long for its queue to show whether it is stable (DESIGN §7 ES3).
    The first and last `window_fraction` of the arrival span are warm-up/cool-down (excluded
    by arrival time, DESIGN §5). Capacities are bisected by `capacity.search_capacity` from the
    sweep's bracket until high - low <= `capacity_tolerance` x low, with at most
    `capacity_max_probes` rates tried per system and rule. The runs at the rate nearest
    `figure_load` x saturation feed figures 1-2.
    """

    load_fractions: tuple[float, ...]
    num_requests: int
    capacity_tolerance: float
    capacity_max_probes: int
    figure_load: float
    window_fraction: float = 0.1
    saturation_requests: int = 2000
    min_arrival_span_s: float = 0.0
    max_requests: int | None = None

    def requests_at(self, rate: float) -> int:
        """Requests of a run at `rate` (the same for every system: common random numbers)."""
        n = max(self.num_requests, math.ceil(rate * self.min_arrival_span_s))
        return min(n, self.max_requests) if self.max_requests is not None else n


@dataclass(frozen=True)
class SpecDecPreset:
    """A named case-study setup: a scenario file and the sweep plans of a full and a quick run
    (the test-only `tiny` plan is the same for every preset)."""

    name: str
    scenario_file: str
    description: str
    full: SweepPlan
    quick: SweepPlan
    variant_alphas: tuple[float, ...] = (0.5, 0.85)
    variant_ks: tuple[int, ...] = (2, 8)
    reference: str | None = None
    reference_low_load_speedup: float | None = None

    @property
    def path(self) -> Path:
        """The preset's scenario file."""
        return PRESETS_DIR / self.scenario_file

    def plan(self, size: str) -> SweepPlan:
        """The sweep plan of a run size: "full", "quick" or "tiny"."""
        return {"full": self.full, "quick": self.quick, "tiny": _TINY}[size]


_FULL = SweepPlan(
    load_fractions=(0.05, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.1, 1.25),
    # NOTE: 1000 requests suffice at light load; 8 minutes of arrivals (up to 5000 requests)
    # near and past the knee, where 1500 requests were too few to tell a stable system from
    # an unstable one (the 70B crossover moved with the run length).
    num_requests=1000,
    min_arrival_span_s=480.0,
    max_requests=5000,
    capacity_tolerance=0.02,
    capacity_max_probes=12,
    figure_load=0.4,
)
# NOTE: `--quick` may lose precision, never a conclusion (tests/test_casestudy.py compares its
# conclusions with the full run's on the default preset). It keeps the full runs' lengths and
# every rate from 0.7 of the no-spec saturation up, where the crossover and the capacity
# brackets lie, and drops the full sweep's 0.2, 0.6 and 1.25 points; capacities are bisected to
# 5% instead of 2%. Coarser plans changed conclusions when this was chosen: rates 0.85 -> 0.95
# missed a crossover the full run then found between 0.85 and 0.9 of saturation, and
# 100-request runs cannot tell a stable queue from an unstable one near the knee.
_QUICK = dataclasses.replace(
    _FULL,
    load_fractions=(0.05, 0.4, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.1),
    capacity_tolerance=0.05,
    capacity_max_probes=8,
)
# Test-only (`--size tiny`, hidden): the mechanics of the pipeline (every figure, table and
# file) from 4 rates of 100 requests in seconds; its numbers are not conclusions.
_TINY = SweepPlan(
    load_fractions=(0.1, 0.5, 0.9, 1.2),
    num_requests=100,
    capacity_tolerance=0.15,
    capacity_max_probes=6,
    figure_load=0.5,
)

PRESETS: dict[str, SpecDecPreset] = {
    p.name: p
    for p in (
        SpecDecPreset(
            name="llama3-8b-h100",
            scenario_file="specdec-llama3-8b-h100.yaml",
            description="Llama-3-8B on 1 x H100, Llama-3.2-1B draft, k=4, alpha=0.7",
            full=_FULL,
            quick=_QUICK,
        ),
        SpecDecPreset(
            name="llama3-70b-4xh100",
            scenario_file="specdec-llama3-70b-4xh100.yaml",
            description="Llama-3-70B on 4 x H100 (tp 4), Llama-3.2-1B draft, k=4, alpha=0.7",
            full=_FULL,
            quick=_QUICK,
            reference=(
                "published measurements for a 70B target on 4 x H100 (as quoted in the "
                "speculative-decoding issue): about 1.5x lower mean latency at low load, "
                "slower than no speculation at high load"
            ),
            reference_low_load_speedup=1.5,
        ),
    )
}
DEFAULT_PRESET = "llama3-8b-h100"


def get_preset(name: str) -> SpecDecPreset:
    """The preset registered under `name` (InputError listing the known ones otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(
            f"unknown preset {name!r}; known: {', '.join(PRESETS)}", field="--preset"
        ) from None


# --------------------------------------------------------------------------- SLO rules


@dataclass(frozen=True)
class SloTargets:
    """The two numbers every rule uses: a TTFT target and one per-token target D (ms)."""

    ttft_ms: float
    per_token_ms: float

    @property
    def fluid_rate_tokens_s(self) -> float:
        """Etalon's threshold: fluid token rate >= 1/D."""
        return 1000.0 / self.per_token_ms


def summary_value(summary: Mapping[str, object], key: str) -> float:
    """A numeric summary value as a float (NaN when missing or None)."""
    value = summary.get(key)
    return float(value) if isinstance(value, int | float) else math.nan


@dataclass(frozen=True)
class CapacityRule:
    """One of the case study's three capacity rules, as a `capacity.py` rule for given targets."""

    key: str
    label: str
    description: str
    text: Callable[[SloTargets], str]

    def slo_rule(self, targets: SloTargets) -> SloRule:
        """The rule as `simserve.experiments.capacity` parses it."""
        return parse_slo_rule(self.text(targets))

    def holds(self, summary: Mapping[str, object], targets: SloTargets) -> bool:
        """Whether one run with this summary meets the rule and is a steady state: its rate is
        below the system's saturation throughput (`LOAD_KEY` < 1; see the NOTE there)."""
        load = summary.get(LOAD_KEY)
        steady = not isinstance(load, int | float) or load < 1.0
        return steady and self.slo_rule(targets).evaluate([summary])[0]


# NOTE: a rate at or above a system's saturation throughput cannot meet any SLO in steady state
# (its queue, once formed, never drains), but a finite run there can still pass because the
# backlog has not had time to build (DESIGN §7 ES3). Each run's summary gets its offered load,
# rate / saturation throughput, under this key, and the capacity search fails such a rate
# without a run (`CapacitySettings.ceiling`, the overload guard).
LOAD_KEY = "load_vs_saturation"


# NOTE: the three rules share the TTFT target T and the per-token target D, so that only the
# way tokens are judged differs: per request on average (TPOT, vLLM `--goodput` / DistServe
# attainment), per token at the tail (P99 TBT, Sarathi-Serve), or against deadlines with slack
# carried forward (Etalon, with D_d = D). DESIGN §5 "Goodput / SLO attainment" and "Capacity".
RULES: tuple[CapacityRule, ...] = (
    CapacityRule(
        "ttft_tpot",
        "TTFT + TPOT",
        ">= 90% of requests have TTFT <= T and TPOT <= D (vLLM goodput, DistServe)",
        lambda t: "attainment:0.9",
    ),
    CapacityRule(
        "ttft_p99_tbt",
        "TTFT + P99 TBT",
        "P90 TTFT <= T and P99 TBT <= D, TBT pooled over every token gap with the zeros "
        "inside bursts (Sarathi-Serve)",
        lambda t: f"p90_ttft_ms<={fmt_plain(t.ttft_ms)},p99_tbt_ms<={fmt_plain(t.per_token_ms)}",
    ),
    CapacityRule(
        "deadline",
        "deadline (fluidity)",
        "P99 over requests of the Etalon deadline-miss rate <= 0.1 (first token due "
        "D_p(prompt) after arrival, then one every D, slack carried forward)",
        lambda t: "etalon:0.1",
    ),
)


# --------------------------------------------------------------------------- small maths


def crossings(
    rates: Sequence[float], values: Sequence[float], level: float = 1.0
) -> list[tuple[float, str]]:
    """Where a series crosses `level`, by linear interpolation between consecutive rates.

    Returns (rate, "down" | "up") per crossing; a point exactly at `level` counts as one
    crossing there. NaN points are skipped (their neighbours are joined).
    """
    pts = [(float(r), float(v)) for r, v in zip(rates, values, strict=True) if math.isfinite(v)]
    out: list[tuple[float, str]] = []
    for (r0, v0), (r1, v1) in itertools.pairwise(pts):
        d0, d1 = v0 - level, v1 - level
        if d0 > 0 >= d1 or d0 < 0 <= d1:
            at = r1 if d1 == 0 and d0 != 0 else r0 + d0 / (d0 - d1) * (r1 - r0)
            out.append((at, "down" if d0 > 0 else "up"))
    return out


@dataclass(frozen=True)
class CapacityEstimate:
    """Capacity of one system under one rule, from `capacity.search_capacity`.

    `value` is the largest rate that met the rule (0.0 when even the lowest rate tried
    failed); `upper` the lowest rate seen to fail above it (None: every rate tried passed, so
    the capacity is at least `value`). `status` is the search's (`ok`, `below_range`,
    `above_range`, `max_probes`); `probes` counts the rates it tried (sweep rates included);
    `bounded`: known on both sides (`CapacityResult.bounded`; a censored capacity is only a
    bound and decides nothing); `load_limited`: `upper` failed by the overload guard (it is the
    system's saturation throughput), not by the SLO.
    """

    value: float
    upper: float | None
    status: str
    probes: int
    tolerance: float
    load_limited: bool = False
    bounded: bool = True


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunRecord:
    """One simulated run: which system, why, at what rate, and its summary."""

    system: str
    purpose: str  # "saturation", "sweep", "variant" or "capacity"
    rate: float | None  # None: offline (every request at t=0)
    summary: dict[str, object]
    mean_batch: float  # time-weighted mean number of sequences per step
    alpha: float | None = None
    k: int | None = None
    steady_throughput: float | None = None  # offline runs: `experiments.saturation`

    def to_json(self) -> dict[str, object]:
        """Plain data for summaries.json."""
        return {
            "system": self.system,
            "purpose": self.purpose,
            "rate": self.rate,
            "alpha": self.alpha,
            "k": self.k,
            "mean_batch": self.mean_batch,
            "steady_throughput": self.steady_throughput,
            "summary": self.summary,
        }


class _Runner:
    """Runs scenarios derived from the base one over a `RunPool` and keeps a record of every
    distinct run (records are created in a fixed order, whatever order runs finish in)."""

    def __init__(
        self,
        base: Scenario,
        plan: SweepPlan,
        systems: Mapping[str, SpeculativeConfig | None],
        pool: RunPool,
    ) -> None:
        self.base = base
        self.plan = plan
        self.systems = dict(systems)
        self.pool = pool
        self.saturation_rps: dict[str, float] = {}
        self._records: dict[tuple[str, float | None], RunRecord] = {}
        self._lock = threading.Lock()
        self.kept: dict[tuple[str, float], RunOutput] = {}

    @property
    def records(self) -> list[RunRecord]:
        """Every distinct run: offline runs first, then by system and rate."""
        order = {name: i for i, name in enumerate(self.systems)}
        return sorted(self._records.values(),
                      key=lambda r: (r.rate is not None, order[r.system], r.rate or 0.0))

    def scenario(self, system: str, rate: float | None) -> Scenario:
        """The base scenario for `system` at `rate` (None: offline), with the sweep's windows."""
        b = dataclasses.replace(
            self.base, engine=dataclasses.replace(self.base.engine,
                                                  speculative=self.systems[system]))
        if rate is None:
            return offline_scenario(b, self.plan.saturation_requests)
        n = self.plan.requests_at(rate)
        arrival = dataclasses.replace(b.workload.arrival, process="poisson", rate=rate)
        # NOTE: warm-up/cool-down are judged by arrival time (DESIGN §5); a fixed share of the
        # arrival span keeps the measured population the same size at every rate.
        window = self.plan.window_fraction * (n - 1) / rate
        return dataclasses.replace(
            b,
            workload=dataclasses.replace(b.workload, num_requests=n, arrival=arrival),
            metrics=dataclasses.replace(b.metrics, warmup_s=window, cooldown_s=window),
        )

    def run_all(self, runs: Sequence[tuple[str, float | None, str]]) -> list[RunRecord]:
        """Simulate (or recall) these (system, rate, purpose) runs, in parallel."""
        for system, rate, purpose in runs:
            where = "offline" if rate is None else f"{fmt_number(rate)} req/s"
            self.pool.say(f"  {purpose:<10} {system:<24} {where}")
        summaries = self.pool.summaries([self.scenario(s, r) for s, r, _ in runs])
        return [self._record(system, rate, purpose, summary)
                for (system, rate, purpose), summary in zip(runs, summaries, strict=True)]

    def run(self, system: str, rate: float | None, purpose: str) -> RunRecord:
        """Simulate (or recall) one run."""
        return self.run_all([(system, rate, purpose)])[0]

    def _record(self, system: str, rate: float | None, purpose: str,
                summary: Mapping[str, object]) -> RunRecord:
        with self._lock:
            key = (system, rate)
            if key in self._records:
                return self._records[key]
            spec = self.systems[system]
            summary = dict(summary)
            steady = None
            if rate is None:
                sat = self.saturation_rps.get(system, math.nan)
                steady = sat if math.isfinite(sat) else None
            elif math.isfinite(self.saturation_rps.get(system, math.nan)):
                summary[LOAD_KEY] = rate / self.saturation_rps[system]
            record = RunRecord(
                system=system,
                purpose=purpose,
                rate=rate,
                summary=summary,
                mean_batch=float(summary[MEAN_BATCH_KEY]),  # type: ignore[arg-type]
                alpha=spec.acceptance.alpha if spec is not None else None,
                k=spec.num_speculative_tokens if spec is not None else None,
                steady_throughput=steady,
            )
            self._records[key] = record
            return record

    def keep(self, system: str, rate: float) -> RunOutput:
        """The whole output of one run (for figures of single requests), simulated here: the
        same run the pool made, as runs are deterministic."""
        output = run_scenario(self.scenario(system, rate))
        self.kept[(system, rate)] = output
        return output

    def saturate(self, systems: Sequence[str]) -> dict[str, Saturation]:
        """Measure these systems' saturation throughputs (`experiments.saturation`), side by
        side, and record their offline runs."""
        found = self.pool.concurrently([
            lambda s=s: measure_saturation(self.scenario(s, None), self.pool.summaries,
                                           num_requests=self.plan.saturation_requests)
            for s in systems])
        for system, saturation in zip(systems, found, strict=True):
            self.saturation_rps[system] = saturation.rps
        self.run_all([(s, None, "saturation") for s in systems])
        return dict(zip(systems, found, strict=True))

    def run_many(self, system: str) -> Callable[[list[Scenario]], list[dict[str, object]]]:
        """`search_capacity`'s runner for one system: its scenarios differ from ours only by
        the rate (same seed), so they are run as ours (windows scaled to the rate), cached."""

        def run(scenarios: list[Scenario]) -> list[dict[str, object]]:
            for sc in scenarios:
                assert sc.seed == self.base.seed and sc.workload.arrival.rate is not None
            records = self.run_all([(system, float(sc.workload.arrival.rate), "capacity")
                                    for sc in scenarios])
            return [r.summary for r in records]

        return run


# --------------------------------------------------------------------------- cost model


@dataclass(frozen=True)
class StepCostRow:
    """Cost-model prices (ms) of one decode-only step of `batch` requests."""

    batch: int
    decode_ms: float  # plain decode, 1 token per request
    verify_ms: float  # target's verify pass, k+1 tokens per request
    draft_ms: float  # drafting (k draft-model steps, or the EAGLE/MTP share)
    tokens_per_step: float  # mean tokens emitted per request per verify

    @property
    def spec_ms(self) -> float:
        """A speculative step: the verify pass plus drafting."""
        return self.verify_ms + self.draft_ms

    @property
    def speedup(self) -> float:
        """Tokens per second per request with speculation over without, in such a step."""
        return self.tokens_per_step * self.decode_ms / self.spec_ms


def step_cost_table(
    scenario: Scenario, context: int, tokens_per_step: float, batches: Sequence[int]
) -> list[StepCostRow]:
    """Price decode-only steps (no prefill) with and without speculation at a given context.

    This isolates the two effects behind the crossover: the verify pass of width k+1 turns
    compute-bound as the batch grows, and drafting costs grow with the batch.
    """
    resolved = resolve(scenario)
    cost = resolved.cost_model
    assert isinstance(cost, SpeculativeCostModel)
    spec = scenario.engine.speculative
    assert spec is not None
    w = spec.num_speculative_tokens + 1
    rows = []
    for m in batches:
        decode = BatchShape(num_decode_seqs=m, num_decode_tokens=m,
                            decode_kv_tokens=m * (context + 1))
        verify = BatchShape(num_decode_seqs=m, num_decode_tokens=m * w,
                            decode_kv_tokens=m * (context + w))
        t_verify = cost.target.step_time(verify)
        rows.append(
            StepCostRow(
                batch=m,
                decode_ms=cost.target.step_time(decode) * 1e3,
                verify_ms=t_verify * 1e3,
                draft_ms=(cost.step_time(verify) - t_verify) * 1e3,
                tokens_per_step=tokens_per_step,
            )
        )
    return rows


# --------------------------------------------------------------------------- the study


@dataclass
class SpecDecStudy:
    """Everything one case-study run computed (in memory; `write_specdec` writes it)."""

    preset: SpecDecPreset
    size: str  # "full", "quick" or "tiny" (SpecDecPreset.plan)
    overrides: tuple[str, ...]
    plan: SweepPlan
    scenario: Scenario  # the base (speculative) scenario, after overrides
    targets: SloTargets
    systems: dict[str, SpeculativeConfig | None]
    variants: list[str]  # variant system names (alpha/k), in plot order
    saturation: dict[str, RunRecord]  # the offline runs of no spec and spec
    saturations: dict[str, Saturation]  # every system's, variants included
    rates: list[float]
    sweep: dict[str, dict[float, RunRecord]]  # system -> rate -> record (sweep + variants)
    capacities: dict[str, dict[str, CapacityEstimate]]  # rule key -> system -> estimate
    figure_rate: float
    figure_runs: dict[str, RunOutput]  # system -> kept run at figure_rate
    records: list[RunRecord]
    step_costs: list[StepCostRow]
    cost_context: int
    expected_tokens_per_step: float | None

    # ---- derived series

    def series(self, system: str, key: str) -> list[float]:
        """A summary value of `system` at every sweep rate (NaN where missing)."""
        return [summary_value(self.sweep[system][r].summary, key) for r in self.rates]

    def ratio(self, key: str, num: str = BASELINE, den: str = SPEC) -> list[float]:
        """num/den of a summary value at every sweep rate (NaN where undefined)."""
        out = []
        for a, b in zip(self.series(num, key), self.series(den, key), strict=True):
            out.append(a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan)
        return out

    def speedup(self, system: str = SPEC, key: str = "mean_e2el_ms") -> list[float]:
        """Speedup of `system` over no speculation: ratio of a latency (default mean E2EL)."""
        return self.ratio(key, BASELINE, system)

    def saturation_rps(self, system: str) -> float:
        """The system's saturation throughput (req/s), see `experiments.saturation`."""
        return self.saturations[system].rps

    def overloaded(self, system: str, rate: float) -> bool:
        """Whether `rate` is at or above the system's saturation throughput (its queue, once
        formed, never drains: not a steady state)."""
        sat = self.saturation_rps(system)
        return math.isfinite(sat) and rate >= sat

    def steady(self, system: str, values: Sequence[float]) -> tuple[list[float], list[float]]:
        """The sweep rates, and `values` at them, where neither `system` nor no speculation
        is past saturation: the only ones a speedup or a crossover may be read from."""
        keep = [not o for o in self.overloaded_pair(system)]
        return ([r for r, k in zip(self.rates, keep, strict=True) if k],
                [v for v, k in zip(values, keep, strict=True) if k])

    def overloaded_pair(self, system: str) -> list[bool]:
        """Per sweep rate: whether `system` or no speculation is past its saturation (a
        ratio of the two is then not a steady-state comparison)."""
        return [self.overloaded(system, r) or self.overloaded(BASELINE, r) for r in self.rates]

    def capacity_winner(self, rule_key: str) -> str:
        """Which system carries more load under a rule: `spec`, `no spec`, `tie` (within the
        search tolerance) or `undecided` (a censored capacity is only a bound)."""
        caps = self.capacities[rule_key]
        a, b = caps[BASELINE].value, caps[SPEC].value
        hi = max(a, b)
        if not (caps[BASELINE].bounded and caps[SPEC].bounded):
            return "undecided"
        if hi == 0 or abs(a - b) <= self.plan.capacity_tolerance * hi:
            return "tie"
        return SPEC if b > a else BASELINE

    def conclusions(self) -> dict[str, object]:
        """What the study concludes, without its numbers: who is faster at the lowest rate,
        the directions in which the mean-E2EL speedup crosses 1 at steady rates, and the
        capacity winner under each rule (`--quick` must draw the same as the full run)."""
        speedup = self.speedup(SPEC)
        low = speedup[0]
        faster = ("undefined" if not math.isfinite(low) else
                  SPEC if low > 1 else BASELINE if low < 1 else "tie")
        return {
            "faster_at_lowest_rate": faster,
            "steady_crossings_mean_e2el": [d for _, d in crossings(*self.steady(SPEC, speedup))],
            "capacity_winner": {rule.key: self.capacity_winner(rule.key) for rule in RULES},
        }


def _variant_name(alpha: float, k: int) -> str:
    return f"spec α={fmt_number(alpha)}, k={k}"


def _variants(preset: SpecDecPreset, spec: SpeculativeConfig) -> dict[str, SpeculativeConfig]:
    """Speculation variants for the crossover figure: other alphas at the base k, other ks at
    the base alpha (geometric acceptance only: the other models have no single alpha)."""
    if spec.acceptance.model != "geometric":
        return {}
    a0, k0 = spec.acceptance.alpha, spec.num_speculative_tokens
    pairs = [(a, k0) for a in preset.variant_alphas if a != a0]
    pairs += [(a0, k) for k in preset.variant_ks if k != k0]
    return {
        _variant_name(a, k): dataclasses.replace(
            spec,
            num_speculative_tokens=k,
            acceptance=dataclasses.replace(spec.acceptance, alpha=a),
        )
        for a, k in pairs
    }


def _targets(scenario: Scenario) -> SloTargets:
    slo = scenario.metrics.slo
    if slo.ttft_ms is None or slo.tpot_ms is None:
        raise InputError(
            "the case study needs metrics.slo.ttft_ms (T) and metrics.slo.tpot_ms (the "
            "per-token target D of all three rules)",
            field="metrics.slo",
        )
    return SloTargets(ttft_ms=slo.ttft_ms, per_token_ms=slo.tpot_ms)


def _prepare(scenario: Scenario, targets: SloTargets) -> Scenario:
    """Align the metrics with the rules: Etalon's D_d = D, P90/P99 always summarised, and no
    max-TBT SLO (the P99 TBT rule is judged from the pooled percentile instead)."""
    m = scenario.metrics
    percentiles = tuple(sorted({*m.percentiles, 50.0, 90.0, 99.0}))
    return dataclasses.replace(
        scenario,
        metrics=dataclasses.replace(
            m,
            percentiles=percentiles,
            slo=dataclasses.replace(m.slo, max_tbt_ms=None, e2el_ms=None),
            fluidity=dataclasses.replace(m.fluidity, tbt_deadline_ms=targets.per_token_ms),
        ),
    )


def _capacity(
    runner: _Runner, system: str, rule: CapacityRule, targets: SloTargets,
    sweep: Mapping[float, RunRecord], plan: SweepPlan,
) -> CapacityEstimate:
    """Search the capacity of `system` under `rule`, bracketed by the sweep: from the largest
    passing rate below the first failing one (bisection of capacity.py, common seed)."""
    slo_rule = rule.slo_rule(targets)
    known = {r: rule.holds(rec.summary, targets) for r, rec in sorted(sweep.items())}
    failing = [r for r, ok in known.items() if not ok]
    sat = runner.saturation_rps[system]
    ceiling = sat if math.isfinite(sat) else None
    high = failing[0] if failing else None
    if high is not None and ceiling is not None and high >= ceiling:
        high = None  # failed by the overload guard: the ceiling bounds the search
    passing = [r for r, ok in known.items() if ok and (high is None or r < high)]
    low = max(passing) if passing else None
    start = high if high is not None else low if low is not None else min(sweep)
    settings = CapacitySettings(
        rule=slo_rule, seeds=(runner.base.seed,), tolerance=plan.capacity_tolerance,
        low=low, high=high, max_probes=plan.capacity_max_probes, extend=True, ceiling=ceiling,
    )
    result = search_capacity(runner.scenario(system, start), settings,
                             run_many=runner.run_many(system))
    return CapacityEstimate(
        value=result.capacity_rps or 0.0,
        upper=result.high_rps,
        status=result.status,
        probes=len([p for p in result.probes if not p.guarded]),
        tolerance=plan.capacity_tolerance,
        load_limited=result.capped,
        bounded=result.bounded,
    )


def run_specdec(
    preset: str = DEFAULT_PRESET,
    *,
    size: str = "full",
    overrides: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    jobs: int | None = 1,
) -> SpecDecStudy:
    """Run the speculative-decoding case study of a preset (pure: nothing is written), its
    runs on `jobs` worker processes (None: all cores); the study does not depend on `jobs`."""
    with RunPool(jobs, progress) as pool:
        return _run_specdec(preset, size, overrides, pool)


def _run_specdec(preset: str, size: str, overrides: Sequence[str],
                 pool: RunPool) -> SpecDecStudy:
    p = get_preset(preset)
    plan = p.plan(size)
    base = load_scenario(p.path, list(overrides))
    spec = base.engine.speculative
    if spec is None:
        raise InputError("the case study compares a speculative scenario with the same one "
                         "without speculation; set engine.speculative", field="engine.speculative")
    targets = _targets(base)
    base = _prepare(base, targets)
    variants = _variants(p, spec)
    systems: dict[str, SpeculativeConfig | None] = {BASELINE: None, SPEC: spec, **variants}
    runner = _Runner(base, plan, systems, pool)
    say = pool.say

    say("saturation throughput (offline runs)")
    saturations = runner.saturate(list(systems))
    saturation = {s: runner.run(s, None, "saturation") for s in (BASELINE, SPEC)}
    knee = runner.saturation_rps[BASELINE]
    if not math.isfinite(knee) or knee <= 0:
        raise InputError("the no-spec offline run completed no request; cannot place the sweep",
                         field="workload")
    rates = sorted({round_significant(f * knee, 3) for f in plan.load_fractions})
    figure_rate = min(rates, key=lambda r: abs(r - plan.figure_load * knee))

    say(f"sweep: {len(rates)} rates x 2 systems")
    if variants:
        say(f"variants: {len(variants)} (alpha, k) settings x {len(rates)} rates")
    runs = [(s, rate, "sweep") for rate in rates for s in (BASELINE, SPEC)]
    runs += [(name, rate, "variant") for name in variants for rate in rates]
    sweep: dict[str, dict[float, RunRecord]] = {s: {} for s in systems}
    for (system, rate, _), record in zip(runs, runner.run_all(runs), strict=True):
        sweep[system][rate] = record

    say("capacity search")
    searches = [(rule, s) for rule in RULES for s in (BASELINE, SPEC)]
    found = pool.concurrently([
        lambda rule=rule, s=s: _capacity(runner, s, rule, targets, sweep[s], plan)
        for rule, s in searches
    ])
    capacities: dict[str, dict[str, CapacityEstimate]] = {rule.key: {} for rule in RULES}
    for (rule, s), estimate in zip(searches, found, strict=True):
        capacities[rule.key][s] = estimate

    figure_runs = {s: runner.keep(s, figure_rate) for s in (BASELINE, SPEC)}
    low = sweep[SPEC][rates[0]].summary
    measured_tps = summary_value(low, "spec_decode_acceptance_length")
    expected = (
        expected_tokens_per_step(spec.acceptance.alpha, spec.num_speculative_tokens)
        if spec.acceptance.model == "geometric" else None
    )
    tokens_per_step = measured_tps if math.isfinite(measured_tps) else (expected or 1.0)
    completed = summary_value(low, "completed")
    mean_prompt = summary_value(low, "total_input_tokens") / completed if completed else 1000.0
    mean_output = summary_value(low, "total_output_tokens") / completed if completed else 200.0
    context = round(mean_prompt + mean_output / 2)
    batches = [m for m in (1, 8, 32, 64, 128, 256) if m <= base.engine.max_num_seqs]
    step_costs = step_cost_table(base, context, tokens_per_step, batches)

    return SpecDecStudy(
        preset=p,
        size=size,
        overrides=tuple(overrides),
        plan=plan,
        scenario=base,
        targets=targets,
        systems=systems,
        variants=list(variants),
        saturation=saturation,
        saturations=saturations,
        rates=rates,
        sweep=sweep,
        capacities=capacities,
        figure_rate=figure_rate,
        figure_runs=figure_runs,
        records=runner.records,
        step_costs=step_costs,
        cost_context=context,
        expected_tokens_per_step=expected,
    )
