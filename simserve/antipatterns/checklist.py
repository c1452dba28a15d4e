"""`simserve check EVAL.yaml`: which evaluation anti-patterns (DESIGN §7) a description exhibits.

An EVAL.yaml describes someone's evaluation: the systems compared and their settings, the
workload, the arrival process and rates, the number of requests, the warm-up, the metrics and
percentiles reported and the SLOs (see `scenarios/evaluations/` for annotated examples). It is
validated strictly (an unknown key or a wrong type is a one-line error naming the field, the
file and the line) and then checked by one function per catalog entry, plus one for the
speculative-decoding case study (SPEC); each finding names the item of the evaluation checklist
(C1-C15, `items.CHECKLIST`) it violates, the entry or study that demonstrates why it matters and
the command that shows it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from simserve.antipatterns.catalog import CATALOG
from simserve.antipatterns.items import CHECKLIST
from simserve.errors import InputError
from simserve.formatting import fmt_number
from simserve.schema import build_dataclass
from simserve.yaml_lines import key_lines, line_for, read_yaml_file

__all__ = [
    "CHECKS",
    "ITEMS",
    "MIN_REQUESTS",
    "ArrivalDesc",
    "EvalDesc",
    "Finding",
    "MetricsDesc",
    "SloDesc",
    "SystemDesc",
    "WorkloadDesc",
    "format_findings",
    "item_of",
    "lint",
    "lint_file",
    "load_eval",
    "parse_eval",
]

# NOTE: with fewer requests than a few times an engine's max_num_seqs (vLLM default 256), an
# overloaded engine admits everything at once and never queues: `simserve antipatterns --only
# ES3` shows P99 TTFT past saturation growing with the request count. 1000 is a floor, not a
# recommendation.
MIN_REQUESTS = 1000
MIN_RATES = 3

_STATS = r"(?:mean|median|std|min|max|p\d{1,2}(?:\.\d+)?)"
_LATENCIES = ("ttft", "tpot", "itl", "tbt", "e2el", "normalized_latency", "scheduling_delay",
              "max_stall", "fluidity_index")
_PLAIN = ("request_throughput", "output_throughput", "total_token_throughput", "goodput",
          "slo_attainment", "capacity", "fluid_token_rate")
_METRIC = re.compile(rf"^({_STATS})_({'|'.join(_LATENCIES)})$")


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class SystemDesc:
    """One system compared: its name, scheduling policy, engine and resources (`gpus`: all the
    GPUs it occupies; `placement`: prefill and decode on the same GPUs or on separate pools),
    and whether its knobs were tuned for the workload and SLO."""

    name: str
    policy: str | None = None
    framework: str | None = None
    cuda_graphs: bool | None = None
    step_overhead_ms: float | None = None
    tuned: bool | None = None
    gpus: int = 1
    gpu: str | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_gib: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    speculative: bool = False
    placement: Literal["colocated", "disaggregated"] | None = None


@dataclass(frozen=True)
class WorkloadDesc:
    """Request lengths: `fixed` (every request the same), `trace` (a real dataset/trace) or
    `synthetic` (drawn from a distribution)."""

    dataset: str
    lengths: Literal["fixed", "trace", "synthetic"]
    prompt_len: int | None = None
    output_len: int | None = None
    max_prompt_len: int | None = None


@dataclass(frozen=True)
class ArrivalDesc:
    """Arrival process and the rates (req/s) evaluated; `cv` is the coefficient of variation
    of the inter-arrival gaps; `saturation_rps` the measured knee of the slowest system."""

    process: Literal["poisson", "gamma", "constant", "offline", "closed_loop", "trace"]
    rates: tuple[float, ...] = ()
    cv: float | None = None
    saturation_rps: float | None = None
    concurrency: tuple[int, ...] = ()


@dataclass(frozen=True)
class MetricsDesc:
    """Metrics reported (`<stat>_<latency>` such as p99_tbt, or a throughput/SLO name), the
    population of the TBT/ITL percentiles, and whether totals are normalised per GPU."""

    reported: tuple[str, ...]
    tbt_population: Literal["per_token", "per_request"] | None = None
    normalized_per_gpu: bool = False


@dataclass(frozen=True)
class SloDesc:
    """The SLOs the evaluation uses (ms); a TTFT slope makes the TTFT SLO prompt-length-aware."""

    ttft_ms: float | None = None
    ttft_ms_per_prompt_token: float | None = None
    tpot_ms: float | None = None
    tbt_ms: float | None = None
    e2el_ms: float | None = None


@dataclass(frozen=True)
class EvalDesc:
    """A whole evaluation description (the root of EVAL.yaml)."""

    name: str
    systems: tuple[SystemDesc, ...]
    workload: WorkloadDesc
    arrival: ArrivalDesc
    num_requests: int
    metrics: MetricsDesc
    claim: str | None = None
    warmup_requests: int = 0
    warmup_s: float = 0.0
    slo: SloDesc | None = None


def _check_values(desc: EvalDesc) -> None:
    """Range checks after the type checks (raise InputError naming the field)."""
    if not desc.systems:
        raise InputError("needs at least one system", field="systems")
    names = [s.name for s in desc.systems]
    if len(set(names)) != len(names):
        raise InputError(f"system names must be unique, got {names}", field="systems")
    for i, s in enumerate(desc.systems):
        if s.gpus < 1:
            raise InputError(f"must be >= 1, got {s.gpus}", field=f"systems[{i}].gpus")
        if s.gpu_memory_utilization is not None and not 0 < s.gpu_memory_utilization <= 1:
            raise InputError("must be in (0, 1]", field=f"systems[{i}].gpu_memory_utilization")
    if desc.num_requests < 1:
        raise InputError(f"must be >= 1, got {desc.num_requests}", field="num_requests")
    if desc.warmup_requests < 0 or desc.warmup_s < 0:
        raise InputError("must be >= 0", field="warmup_requests" if desc.warmup_requests < 0
                         else "warmup_s")
    arrival = desc.arrival
    if any(r <= 0 for r in arrival.rates):
        raise InputError("every rate must be > 0", field="arrival.rates")
    if arrival.process in ("poisson", "gamma", "constant") and not arrival.rates:
        raise InputError(f"process {arrival.process} needs at least one rate",
                         field="arrival.rates")
    if arrival.cv is not None and arrival.cv < 0:
        raise InputError("must be >= 0", field="arrival.cv")
    if not desc.metrics.reported:
        raise InputError("list at least one metric", field="metrics.reported")
    for i, metric in enumerate(desc.metrics.reported):
        if metric not in _PLAIN and not _METRIC.match(metric):
            raise InputError(
                f"unknown metric {metric!r}: expected <stat>_<latency> with stat mean, median, "
                f"std, min, max or pNN and latency {', '.join(_LATENCIES)}; or one of "
                f"{', '.join(_PLAIN)}", field=f"metrics.reported[{i}]")
    if desc.workload.lengths == "fixed" and (desc.workload.prompt_len is None
                                             or desc.workload.output_len is None):
        raise InputError("fixed lengths need prompt_len and output_len", field="workload")


# --------------------------------------------------------------------------- loading


def parse_eval(data: Any) -> EvalDesc:
    """Validate a plain mapping as an evaluation description (raises InputError)."""
    desc = build_dataclass(EvalDesc, data, "")
    _check_values(desc)
    return desc


def load_eval(path: str | Path) -> EvalDesc:
    """Load and validate EVAL.yaml; errors name the field, the file and the line."""
    path = Path(path)
    data, text = read_yaml_file(path, "evaluation file")
    if not isinstance(data, Mapping):
        raise InputError("an evaluation description must be a YAML mapping", source=str(path))
    try:
        return parse_eval(data)
    except InputError as exc:
        raise exc.located(str(path), line_for(exc.field or "", key_lines(text))) from None


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Finding:
    """One anti-pattern found: the catalog entry (or SPEC, the speculative-decoding case
    study), the checklist item it violates, the field that shows it and why."""

    id: str
    item: str
    title: str
    field: str
    reason: str
    why: str
    command: str

    def to_mapping(self) -> dict[str, str]:
        """Plain data for `--json`."""
        return dataclasses.asdict(self)


def _differs(desc: EvalDesc, attr: str) -> dict[str, Any] | None:
    """Each system's value of `attr` when at least two systems state it and they differ."""
    values = {s.name: getattr(s, attr) for s in desc.systems if getattr(s, attr) is not None}
    return values if len(set(values.values())) > 1 else None


def _listing(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}: {value}" for name, value in values.items())


def check_bf1(desc: EvalDesc) -> tuple[str, str] | None:
    """BF1: the systems run on engines with different per-step overheads."""
    for attr, what in (("cuda_graphs", "CUDA graphs"), ("step_overhead_ms", "per-step overhead"),
                       ("framework", "engine implementation")):
        values = _differs(desc, attr)
        if values:
            return (f"systems[].{attr}", f"the systems differ in {what} ({_listing(values)}): "
                    "the measured gain mixes the algorithm with the engine's overhead")
    return None


def check_bf2(desc: EvalDesc) -> tuple[str, str] | None:
    """BF2: some systems are tuned for the workload/SLO and others run at defaults."""
    tuned = [s.name for s in desc.systems if s.tuned]
    untuned = [s.name for s in desc.systems if not s.tuned]
    if tuned and untuned:
        return ("systems[].tuned", f"{', '.join(tuned)} tuned but {', '.join(untuned)} at "
                "default knobs")
    return None


def check_bf3(desc: EvalDesc) -> tuple[str, str] | None:
    """BF3: unequal hardware or KV memory without per-GPU normalisation."""
    for attr, what in (("gpu", "GPU type"), ("gpu_memory_utilization", "KV memory share"),
                       ("kv_cache_gib", "KV cache size")):
        values = _differs(desc, attr)
        if values:
            return (f"systems[].{attr}", f"unequal resources: {what} differs "
                    f"({_listing(values)})")
    gpus = _differs(desc, "gpus")
    if gpus and not desc.metrics.normalized_per_gpu:
        return ("systems[].gpus", f"unequal GPU counts ({_listing(gpus)}) and "
                "metrics.normalized_per_gpu is not set: totals compare hardware, not systems")
    return None


def check_es1(desc: EvalDesc) -> tuple[str, str] | None:
    """ES1: fixed (or only short) request lengths instead of a heterogeneous real trace."""
    w = desc.workload
    if w.lengths == "fixed":
        return ("workload.lengths", f"every request has {w.prompt_len} prompt and "
                f"{w.output_len} output tokens: no long or heterogeneous prompts")
    if w.max_prompt_len is not None and w.max_prompt_len < 1024:
        return ("workload.max_prompt_len", f"prompts of at most {w.max_prompt_len} tokens: "
                "no long prompts, where prefill scheduling matters")
    return None


def check_es2(desc: EvalDesc) -> tuple[str, str] | None:
    """ES2: one load point, offline or closed loop, or a sweep that never reaches the knee."""
    a = desc.arrival
    if a.process in ("offline", "closed_loop"):
        return ("arrival.process", f"{a.process} load: no open-loop arrival rate, so no load "
                "sweep up to and past the knee")
    if len(a.rates) < MIN_RATES:
        return ("arrival.rates", f"only {len(a.rates)} arrival rate(s) "
                f"({', '.join(fmt_number(r) for r in a.rates)} req/s): a single point cannot show "
                "that the ranking depends on the load")
    if a.saturation_rps is None:
        return ("arrival.saturation_rps", "the knee (saturation rate) is not stated, so the "
                "sweep's reach is unknown")
    if max(a.rates) < a.saturation_rps:
        return ("arrival.rates", f"the highest rate ({fmt_number(max(a.rates))} req/s) stays "
                f"below the knee ({fmt_number(a.saturation_rps)} req/s)")
    return None


def check_es3(desc: EvalDesc) -> tuple[str, str] | None:
    """ES3: too few requests or no warm-up, so the numbers are not steady-state ones."""
    if desc.num_requests < MIN_REQUESTS:
        return ("num_requests", f"{desc.num_requests} requests per run (< {MIN_REQUESTS}): "
                "near or past saturation the tails depend on how long the benchmark ran")
    if desc.warmup_requests == 0 and desc.warmup_s == 0:
        return ("warmup_requests", "no warm-up excluded: the empty-system start is averaged "
                "into every number")
    return None


def check_es4(desc: EvalDesc) -> tuple[str, str] | None:
    """ES4: smooth (Poisson or constant) arrivals only."""
    a = desc.arrival
    if a.process in ("offline", "closed_loop", "trace"):
        return None
    cv = a.cv if a.cv is not None else (1.0 if a.process == "poisson" else
                                         0.0 if a.process == "constant" else None)
    if cv is None:
        return ("arrival.cv", "gamma arrivals without a stated cv: burstiness unknown")
    if cv <= 1.0:
        return ("arrival.process", f"{a.process} arrivals (gap cv = {fmt_number(cv)}): no "
                "bursts, while production traces are burstier (cv > 1)")
    return None


def _tail_tbt(desc: EvalDesc) -> list[str]:
    out = []
    for metric in desc.metrics.reported:
        m = _METRIC.match(metric)
        if m and m.group(2) in ("tbt", "itl") and m.group(1).startswith("p") \
                and float(m.group(1)[1:]) >= 90:
            out.append(metric)
    return out


def _latency_metrics(desc: EvalDesc) -> list[str]:
    return [m for m in desc.metrics.reported if _METRIC.match(m)]


def check_md1(desc: EvalDesc) -> tuple[str, str] | None:
    """MD1: only per-request averages (normalized latency, TPOT, E2E), nothing stall-aware."""
    latencies = _latency_metrics(desc)
    stall_aware = [m for m in latencies
                   if m.endswith(("_max_stall", "_scheduling_delay", "_fluidity_index"))]
    stall_aware += _tail_tbt(desc)
    stall_aware += [m for m in desc.metrics.reported if m == "fluid_token_rate"]
    if latencies and not stall_aware:
        return ("metrics.reported", f"only {', '.join(latencies)}: per-request averages hide "
                "stalls (no token-level tail, maximum stall, scheduling delay or fluidity)")
    return None


def check_md2(desc: EvalDesc) -> tuple[str, str] | None:
    """MD2: tails of per-token quantities taken over requests, or without a stated
    population."""
    per_token = [m for m in _latency_metrics(desc)
                 if _METRIC.match(m).group(2) in ("tpot", "itl", "tbt")]  # type: ignore[union-attr]
    if not per_token:
        return None
    tails = _tail_tbt(desc)
    if tails and desc.metrics.tbt_population is None:
        return ("metrics.tbt_population", f"{', '.join(tails)} reported without stating the "
                "population (per token or per request)")
    if tails and desc.metrics.tbt_population == "per_request":
        return ("metrics.tbt_population", f"{', '.join(tails)} taken over per-request values: "
                "tail gaps are averaged away")
    if not tails:
        return ("metrics.reported", f"per-token latency only as {', '.join(per_token)}: means "
                "or per-request percentiles, no token-level tail")
    return None


def check_md3(desc: EvalDesc) -> tuple[str, str] | None:
    """MD3: one TTFT SLO for all prompt lengths of a heterogeneous workload."""
    slo = desc.slo
    if slo is None or slo.ttft_ms is None or slo.ttft_ms_per_prompt_token:
        return None
    if desc.workload.lengths == "fixed":
        return None
    return ("slo.ttft_ms", f"one TTFT SLO ({fmt_number(slo.ttft_ms)} ms) for every prompt length "
            "of a heterogeneous workload, with no per-prompt-token allowance")


def check_md4(desc: EvalDesc) -> tuple[str, str] | None:
    """MD4: throughput reported without a latency bound (no capacity, goodput or attainment)."""
    reported = set(desc.metrics.reported)
    throughput = sorted(reported & {"request_throughput", "output_throughput",
                                    "total_token_throughput"})
    bounded = reported & {"capacity", "goodput", "slo_attainment"}
    if throughput and not bounded:
        return ("metrics.reported", f"{', '.join(throughput)} without a latency bound (no "
                "capacity, goodput or SLO attainment)")
    return None


def check_md5(desc: EvalDesc) -> tuple[str, str] | None:
    """MD5: co-located and disaggregated placements ranked without goodput per GPU under both a
    TTFT and a TPOT (or TBT) SLO, DistServe's metric (Zhong et al., OSDI 2024)."""
    placements = _differs(desc, "placement")
    if not placements:
        return None
    where = f"placements differ ({_listing(placements)})"
    if not set(desc.metrics.reported) & {"goodput", "capacity"}:
        return ("metrics.reported", f"{where} but no goodput or capacity is reported: one "
                "latency at one rate cannot weigh dedicated prefill GPUs against decode ones")
    slo = desc.slo
    if slo is None or slo.ttft_ms is None or (slo.tpot_ms is None and slo.tbt_ms is None):
        return ("slo", f"{where} but goodput is not judged on both a TTFT and a TPOT/TBT SLO: "
                "each placement favours one phase")
    if not desc.metrics.normalized_per_gpu:
        return ("metrics.normalized_per_gpu", f"{where} and goodput is not normalised per GPU: "
                "pools and replicas of different shapes occupy different GPU counts")
    return None


_DEADLINE_METRICS = ("fluid_token_rate",)


def check_spec(desc: EvalDesc) -> tuple[str, str] | None:
    """SPEC: speculative decoding judged by per-token gaps (TBT, ITL, TPOT) without a deadline
    metric (fluidity-index, fluid token rate): the case study's anti-pattern."""
    speculative = [s.name for s in desc.systems if s.speculative]
    if not speculative:
        return None
    reported = desc.metrics.reported
    deadline = [m for m in reported
                if m in _DEADLINE_METRICS or m.endswith("_fluidity_index")]
    per_token = [m for m in _latency_metrics(desc)
                 if _METRIC.match(m).group(2) in ("tbt", "itl", "tpot")]  # type: ignore[union-attr]
    if deadline or not per_token:
        return None
    verb = "speculates" if len(speculative) == 1 else "speculate"
    return ("metrics.reported", f"{', '.join(speculative)} {verb} but the streams are "
            f"judged by {', '.join(per_token)} only: bursts put zeros and whole verify steps "
            "into the gaps, so these misjudge what a reader sees (no fluidity-index or fluid "
            "token rate)")


CHECKS: dict[str, Callable[[EvalDesc], tuple[str, str] | None]] = {
    "BF1": check_bf1, "BF2": check_bf2, "BF3": check_bf3,
    "ES1": check_es1, "ES2": check_es2, "ES3": check_es3, "ES4": check_es4,
    "MD1": check_md1, "MD2": check_md2, "MD3": check_md3, "MD4": check_md4,
    "MD5": check_md5, "SPEC": check_spec,
}
# The checklist item (C1-C15) a check's finding violates; by flagged field where it depends on
# which part of the check fired.
ITEMS: dict[str, str | dict[str, str]] = {
    "BF1": "C1", "BF2": "C2", "BF3": "C3",
    "ES1": "C4", "ES2": "C6", "ES3": "C8", "ES4": "C6",
    "MD1": "C11", "MD2": {"metrics.tbt_population": "C14", "metrics.reported": "C11"},
    "MD3": "C13", "MD4": "C14",
    "MD5": {"metrics.normalized_per_gpu": "C3", "metrics.reported": "C14", "slo": "C14"},
    "SPEC": "C15",
}
# SPEC is the speculative-decoding case study's anti-pattern, not a catalog entry.
SPEC_TITLE = "Speculative decoding judged by TBT or TPOT alone"
SPEC_WHY = ("Speculation emits tokens in bursts: the gaps inside a burst are 0 and the gap "
            "between bursts is a whole verify step, so per-token gaps rise even where readers "
            "get their text sooner; deadlines judge what they see.")


def item_of(check_id: str, field_name: str) -> str:
    """The checklist item a finding of this check on this field violates."""
    item = ITEMS[check_id]
    return item if isinstance(item, str) else item[field_name]


def lint(desc: EvalDesc) -> list[Finding]:
    """The anti-patterns `desc` exhibits, in catalog order (SPEC last)."""
    entries = {e.id: e for e in CATALOG}
    findings = []
    for check_id, check in CHECKS.items():
        hit = check(desc)
        if hit is None:
            continue
        field_name, reason = hit
        item = item_of(check_id, field_name)
        if check_id == "SPEC":
            findings.append(Finding(check_id, item, SPEC_TITLE, field_name, reason, SPEC_WHY,
                                    "simserve casestudy specdec"))
            continue
        entry = entries[check_id]
        findings.append(Finding(check_id, item, entry.title, field_name, reason,
                                entry.description, f"simserve antipatterns --only {check_id}"))
    return findings


def lint_file(path: str | Path) -> list[Finding]:
    """Load EVAL.yaml and lint it."""
    return lint(load_eval(path))


def format_findings(path: str | Path, findings: list[Finding]) -> str:
    """Human-readable findings, one block per anti-pattern."""
    if not findings:
        return f"{path}: no anti-patterns found ({len(CHECKS)} checks)"
    lines = [f"{path}: {len(findings)} anti-pattern(s) found"]
    for f in findings:
        lines += [
            f"  [{f.id} · {f.item}] {f.title}",
            f"        checklist {f.item}: {CHECKLIST[f.item].text}",
            f"        {f.field}: {f.reason}",
            f"        why it matters: {f.why}",
            f"        see it: {f.command}",
        ]
    return "\n".join(lines)
