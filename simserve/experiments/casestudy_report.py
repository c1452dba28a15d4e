"""The case study's outputs: `report.md` written from the run's numbers, the figures, and JSON.

Every sentence that draws a conclusion is generated from the summaries of the runs it cites
(comparisons use a stated no-difference band), so the report never asserts what the numbers do
not show. `write_specdec` writes everything atomically (temporary directory, then rename).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml

from simserve import __version__
from simserve.config import scenario_to_mapping
from simserve.experiments.atomic import OutputKind, write_dir_atomically
from simserve.experiments.casestudy import (
    BASELINE,
    RULES,
    SPEC,
    CapacityEstimate,
    SpecDecStudy,
    SweepPlan,
    crossings,
    summary_value,
)
from simserve.experiments.casestudy_figures import (
    FIGURE_FILES,
    figure_request,
    measured_gaps_ms,
    run_table,
    specdec_figures,
)
from simserve.formatting import fmt_number, fmt_percent, fmt_ratio

__all__ = [
    "CASE_STUDY_DIR",
    "NO_DIFFERENCE",
    "SWEEP_COLUMNS",
    "render_report",
    "specdec_writer",
    "study_results",
    "write_specdec",
]

# Ratios within this band of 1 are reported as "no difference".
NO_DIFFERENCE = 0.02

# Columns of the per-rate table: (header, summary key or derived name).
SWEEP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mean TTFT (ms)", "mean_ttft_ms"),
    ("mean TPOT (ms)", "mean_tpot_ms"),
    ("mean norm. latency (ms)", "mean_normalized_latency_ms"),
    ("mean E2EL (ms)", "mean_e2el_ms"),
    ("P99 TBT (ms)", "p99_tbt_ms"),
    ("mean fluidity", "mean_fluidity_index"),
    ("fluid token rate (tok/s)", "fluid_token_rate"),
    ("P99 deadline-miss rate", "p99_deadline_miss_rate"),
    ("SLO attainment", "slo_attainment"),
    ("requests", "num_requests"),
    ("completed", "completed"),
)




def _rates_text(rates: Sequence[float]) -> str:
    if not rates:
        return "none"
    if len(rates) <= 3:
        return ", ".join(fmt_number(r) for r in rates) + " req/s"
    return f"{fmt_number(rates[0])}-{fmt_number(rates[-1])} req/s ({len(rates)} rates)"


def _verdicts(ratios: Sequence[float]) -> list[str]:
    """Per rate: 'better' if speculation wins by more than the band, 'worse', 'same', 'n/a'."""
    out = []
    for q in ratios:
        if not math.isfinite(q):
            out.append("n/a")
        elif q > 1 + NO_DIFFERENCE:
            out.append("better")
        elif q < 1 - NO_DIFFERENCE:
            out.append("worse")
        else:
            out.append("same")
    return out


def _family_sentence(
    study: SpecDecStudy, name: str, ratios: Sequence[float], how: str
) -> tuple[str, str]:
    """(facts, conclusion) for one metric, where `ratios` > 1 means speculation is better.

    Only steady-state rates (both systems below saturation) carry a conclusion: past
    saturation a latency measures how long the run lasted (DESIGN §7 ES3), so those rates are
    named apart and left out."""
    overloaded = study.overloaded_pair(SPEC)
    v = ["past" if o else x for x, o in zip(_verdicts(ratios), overloaded, strict=True)]
    rates = study.rates
    groups = {k: [r for r, x in zip(rates, v, strict=True) if x == k]
              for k in ("better", "same", "worse", "n/a", "past")}
    finite = [q for q, x in zip(ratios, v, strict=True) if math.isfinite(q) and x != "past"]
    span = (f" ({how} {fmt_ratio(min(finite))} to {fmt_ratio(max(finite))})" if finite else "")
    facts = (
        f"{name[0].upper()}{name[1:]}: speculation better at {_rates_text(groups['better'])}, "
        f"no difference (within {fmt_percent(NO_DIFFERENCE)}) at {_rates_text(groups['same'])}, "
        f"worse at {_rates_text(groups['worse'])}{span}."
    )
    if groups["n/a"]:
        facts += f" Undefined at {_rates_text(groups['n/a'])}."
    if groups["past"]:
        facts += (f" Left out, past a system's saturation (not a steady state): "
                  f"{_rates_text(groups['past'])}.")
    steady = [(r, x, q) for r, x, q in zip(rates, v, ratios, strict=True) if x != "past"]
    decided = [x for _r, x, _q in steady if x in ("better", "worse")]
    if not decided:
        conclusion = f"{name} shows no difference between the systems in this sweep"
    elif all(x == "better" for x in decided):
        conclusion = f"{name} says speculation helps at every steady load where it differs"
    elif all(x == "worse" for x in decided):
        conclusion = f"{name} says speculation hurts at every steady load where it differs"
    else:
        first_worse = next(r for r, x, _q in steady if x == "worse")
        last_better = max(r for r, x, _q in steady if x == "better")
        if last_better < first_worse:
            cross = [c for c, d in crossings([r for r, _x, _q in steady],
                                             [q for _r, _x, q in steady]) if d == "down"]
            where = f", crossing at about {fmt_number(cross[0], 'req/s')}" if cross else ""
            conclusion = (f"{name} says speculation helps at low load and hurts from "
                          f"{fmt_number(first_worse)} req/s on{where}")
        else:
            nb, nw = len(groups["better"]), len(groups["worse"])
            lean = (", mostly worse" if nw >= 2 * nb else ", mostly better" if nb >= 2 * nw
                    else "")
            conclusion = (f"{name} gives a mixed picture: speculation better at {nb} and worse "
                          f"at {nw} of {len(steady)} steady rates, interleaved with load{lean}")
    return facts, conclusion


def _crossover_text(study: SpecDecStudy, system: str, ratios: Sequence[float], what: str) -> str:
    rates, ratios = study.steady(system, ratios)
    down = [c for c, d in crossings(rates, ratios) if d == "down"]
    finite = [q for q in ratios if math.isfinite(q)]
    if down:
        r = down[0]
        i = next(j for j, x in enumerate(rates) if x >= r)
        lo = rates[max(i - 1, 0)]
        sat = study.saturation_rps(BASELINE)
        text = (f"the {what} speedup of {system} crosses 1 at about {fmt_number(r, 'req/s')} "
                f"(linear interpolation between {fmt_number(lo)} and {fmt_number(rates[i])} req/s; "
                f"{fmt_percent(r / sat)} of the no-spec saturation throughput)")
        if len(down) > 1:
            text += "; it crosses back and forth: " + ", ".join(
                f"{fmt_number(c)} ({d})" for c, d in crossings(rates, ratios))
        return text
    top = (f"up to {fmt_number(rates[-1])} req/s, the last rate below saturation" if rates
           else "none")
    if finite and min(finite) >= 1:
        text = f"the {what} speedup of {system} stays >= 1 ({top}): no crossover reached"
        own, base = study.saturation_rps(system), study.saturation_rps(BASELINE)
        if own < base:
            text += (f"; but {system} saturates first ({fmt_number(own, 'req/s')} against "
                     f"{fmt_number(base, 'req/s')} without speculation): between the two its "
                     "queue never drains, so at high load it loses by the load it can carry, "
                     "not by latency")
        return text
    if finite and max(finite) < 1:
        return f"the {what} speedup of {system} is below 1 at every steady rate ({top})"
    return f"the {what} speedup of {system} has no downward crossing of 1 ({top})"


def _mean_batch(study: SpecDecStudy, system: str, rate: float) -> float:
    return study.sweep[system][rate].mean_batch


def _requests_text(plan: SweepPlan) -> str:
    if plan.min_arrival_span_s <= 0:
        return f"{plan.num_requests} requests per run"
    cap = f", at most {plan.max_requests}" if plan.max_requests is not None else ""
    return (f"max({plan.num_requests}, rate x {fmt_number(plan.min_arrival_span_s)} s) requests "
            f"per run{cap} (long runs near the knee, where a short run cannot show whether the "
            "queue is stable), the same for both systems at a rate")


def _setup_section(study: SpecDecStudy) -> list[str]:
    s = study.scenario
    spec = s.engine.speculative
    assert spec is not None
    acc = spec.acceptance
    low = study.sweep[SPEC][study.rates[0]].summary
    measured = summary_value(low, "spec_decode_acceptance_length")
    if acc.model == "geometric":
        accept = (f"geometric, alpha = {fmt_number(acc.alpha)}: expected "
                  f"{fmt_number(study.expected_tokens_per_step)} tokens per verify step "
                  f"((1 - a^(k+1)) / (1 - a)); measured {fmt_number(measured)} in the "
                  f"{fmt_number(study.rates[0])} req/s run")
    else:
        accept = f"{acc.model}; measured {fmt_number(measured)} tokens per verify step"
    completed = summary_value(low, "completed")
    mean_p = summary_value(low, "total_input_tokens") / completed if completed else math.nan
    mean_o = summary_value(low, "total_output_tokens") / completed if completed else math.nan
    drafter = (f"{spec.method}, draft model {spec.draft_model}" if spec.method == "draft"
               else f"{spec.method} head, {fmt_number(spec.draft_cost_fraction)} of a target "
                    "decode step per draft token")
    plan = study.plan
    cost = study.figure_runs[BASELINE].resolved.cost_model.describe()
    lines = [
        "## Setup",
        "",
        "| | |",
        "|---|---|",
        f"| target | {s.model} on {s.tp} x {s.hardware} (tp {s.tp}) |",
        f"| speculation | {drafter}, k = {spec.num_speculative_tokens} drafted tokens per step"
        + (f", off above {spec.disable_above_batch} decodes" if spec.disable_above_batch else "")
        + " |",
        f"| acceptance | {accept} |",
        "| alpha source | Spec-Bench (Xia et al., 2024; Vicuna-7B, greedy, batch 1): 2.29 mean "
        "accepted tokens per step for a draft model (SpS), 3.57 for EAGLE; see the NOTE in the "
        "scenario file |",
        f"| engine | {s.engine.policy}, max_num_seqs {s.engine.max_num_seqs}, "
        f"max_num_batched_tokens {s.engine.max_num_batched_tokens}, block_size "
        f"{s.engine.block_size} |",
        f"| cost model | {_cost_text(cost)} |",
        f"| workload | {_requests_text(plan)}; prompt/output lengths sampled from "
        f"`{Path(s.workload.trace or '').name}` (mean {fmt_number(mean_p)} / "
        f"{fmt_number(mean_o)} tokens in the measured requests); Poisson arrivals |",
        f"| measurement window | requests arriving in the first and last "
        f"{fmt_percent(plan.window_fraction)} of the arrival span are excluded "
        "(warm-up/cool-down) |",
        f"| seed | {s.seed} for every run (common random numbers: both systems and every rate "
        "see the same requests, arrival gaps scaled by the rate) |",
        f"| SLO targets | T = {fmt_number(study.targets.ttft_ms)} ms (TTFT), D = "
        f"{fmt_number(study.targets.per_token_ms)} ms per token (TPOT, P99 TBT and Etalon's D_d) |",
        "",
    ]
    if study.overrides:
        lines += ["Overrides: " + ", ".join(f"`{o}`" for o in study.overrides), ""]
    return lines


def _saturation_section(study: SpecDecStudy) -> list[str]:
    sat = {s: study.saturation_rps(s) for s in (BASELINE, SPEC)}
    overall = {s: summary_value(study.saturation[s].summary, "request_throughput")
               for s in (BASELINE, SPEC)}
    fracs = ", ".join(fmt_number(f) for f in study.plan.load_fractions)
    ratio = sat[SPEC] / sat[BASELINE]
    return [
        "## Saturation throughput",
        "",
        f"Offline runs (all {study.plan.saturation_requests} requests at t = 0), counting the "
        "completions per second while requests still wait to be admitted (from the 10% "
        "quantile of finish times to the last admission: the engine never runs dry, and the "
        "drain, which runs at another pace, is left out): no spec "
        f"{fmt_number(sat[BASELINE], 'req/s')}, spec {fmt_number(sat[SPEC], 'req/s')} (spec / "
        f"no spec = {fmt_ratio(ratio)}); over the whole offline run (the summary's "
        f"request_throughput) {fmt_number(overall[BASELINE])} and "
        f"{fmt_number(overall[SPEC], 'req/s')}. No arrival process gets more through a system "
        "in steady state: at a higher rate its queue, once formed, never drains. The sweep "
        f"rates are {fracs} x the no-spec saturation throughput, rounded: "
        + ", ".join(fmt_number(r) for r in study.rates) + " req/s. A rate at or above a system's "
        "saturation (marked † below, hollow in the figures) overloads it: its latencies there "
        "depend on the number of requests (anti-pattern ES3 of `simserve antipatterns`), not "
        "on the system alone, and the capacity search fails it without a run (the overload "
        "guard).",
        "",
    ]


def _sweep_section(study: SpecDecStudy) -> list[str]:
    head = "| rate (req/s) | system | " + " | ".join(h for h, _ in SWEEP_COLUMNS) + \
        " | mean batch |"
    lines = [
        "## Results per rate",
        "",
        "Every number below is copied from that run's summary (`summaries.json`); mean batch "
        "is the time-weighted mean number of sequences per step.",
        "",
        head,
        "|" + "---|" * (len(SWEEP_COLUMNS) + 3),
    ]
    for rate in study.rates:
        for s in (BASELINE, SPEC):
            summ = study.sweep[s][rate].summary
            mark = " †" if study.overloaded(s, rate) else ""
            cells = [fmt_number(summary_value(summ, key)) for _, key in SWEEP_COLUMNS]
            lines.append(f"| {fmt_number(rate)}{mark} | {s} | " + " | ".join(cells)
                         + f" | {fmt_number(_mean_batch(study, s, rate))} |")
    lines += [
        "",
        "Ratios (no spec / spec for latencies, so > 1 means speculation is better; spec / no "
        "spec for the fluid token rate):",
        "",
        "| rate (req/s) | speedup mean E2EL | mean TPOT | mean norm. latency | P99 TBT | "
        "P99 TBT spec / no spec | fluid token rate | mean fluidity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    e2el = study.speedup(SPEC)
    tpot = study.ratio("mean_tpot_ms")
    norm = study.ratio("mean_normalized_latency_ms")
    tbt = study.ratio("p99_tbt_ms")
    fluid = study.ratio("fluid_token_rate", SPEC, BASELINE)
    fl_idx = study.ratio("mean_fluidity_index", SPEC, BASELINE)
    for i, rate in enumerate(study.rates):
        inv = 1.0 / tbt[i] if math.isfinite(tbt[i]) and tbt[i] > 0 else math.nan
        cells = [e2el[i], tpot[i], norm[i], tbt[i], inv, fluid[i], fl_idx[i]]
        lines.append(f"| {fmt_number(rate)} | " + " | ".join(fmt_ratio(c) for c in cells) + " |")
    lines.append("")
    return lines


def _tbt_shape(study: SpecDecStudy) -> str:
    """Facts behind figure 2: zero gaps and the verify-step time of the figure-rate runs."""
    parts = []
    for s in (BASELINE, SPEC):
        run = study.figure_runs[s]
        gaps = measured_gaps_ms(run.result, run_table(run)["measured"])
        if gaps.size == 0:
            continue
        zero = float(np.mean(gaps == 0))
        nonzero = gaps[gaps > 0]
        med = float(np.median(nonzero)) if nonzero.size else math.nan
        text = (f"{s}: {fmt_percent(zero)} of gaps are 0, median non-zero gap {fmt_number(med)} "
                f"ms, P99 {fmt_number(float(np.percentile(gaps, 99)))} ms")
        if 0 < zero < 0.99:
            # With a share z of zero gaps, the pooled P99 is the 1 - 0.01 / (1 - z) quantile
            # of the non-zero gaps: bursts move the P99 further into the non-zero tail.
            q = 100.0 * (1.0 - 0.01 / (1.0 - zero))
            text += f" (the P{fmt_number(q)} of its non-zero gaps)"
        parts.append(text)
    return (f"At {fmt_number(study.figure_rate)} req/s (figures 1-2), " + "; ".join(parts) + "."
            if parts else "")


def _conclusions_section(study: SpecDecStudy) -> list[str]:
    rates = study.rates
    tpot = study.ratio("mean_tpot_ms")
    norm = study.ratio("mean_normalized_latency_ms")
    tbt = study.ratio("p99_tbt_ms")
    fluid = study.ratio("fluid_token_rate", SPEC, BASELINE)
    fl_idx = study.ratio("mean_fluidity_index", SPEC, BASELINE)
    e2el = study.speedup(SPEC)
    f_tpot, c_tpot = _family_sentence(study, "mean TPOT", tpot, "no spec / spec")
    f_norm, c_norm = _family_sentence(study, "mean normalized latency", norm, "no spec / spec")
    f_tbt, c_tbt = _family_sentence(study, "P99 TBT", tbt, "no spec / spec")
    f_fl, c_fl = _family_sentence(study, "the fluid token rate", fluid, "spec / no spec")
    f_fi, c_fi = _family_sentence(study, "the mean fluidity index", fl_idx, "spec / no spec")
    f_e2, _c_e2 = _family_sentence(study, "mean E2EL", e2el, "no spec / spec")
    lines = [
        "## What each metric family concludes (from the numbers above)",
        "",
        "### Naive view: mean TPOT and normalized latency (figure 3)",
        "",
        f"- {f_tpot}",
        f"- {f_norm}",
        f"- Conclusion a reader of these metrics would draw: {c_tpot}; {c_norm}.",
        "",
        "### TBT view: P99 TBT (figure 4)",
        "",
        f"- {f_tbt}",
        f"- {_tbt_shape(study)}",
        f"- Conclusion: {c_tbt}.",
        "",
        "### Deadline view: fluidity (figure 5)",
        "",
        f"- {f_fl}",
        f"- {f_fi}",
        f"- Conclusion: {c_fl}; {c_fi}.",
        "",
        "### Does P99 TBT penalise bursts where speculation truly helps?",
        "",
    ]
    steady = [not o for o in study.overloaded_pair(SPEC)]
    helps = [i for i in range(len(rates)) if steady[i]
             and _verdicts([e2el[i]])[0] == "better" and _verdicts([fluid[i]])[0] == "better"]
    if helps:
        worse_tbt = [i for i in helps if _verdicts([tbt[i]])[0] == "worse"]
        lines.append(
            f"- Speculation lowers mean E2EL and raises the fluid token rate (both by more than "
            f"{fmt_percent(NO_DIFFERENCE)}) at {_rates_text([rates[i] for i in helps])}. At "
            f"{len(worse_tbt)} of these {len(helps)} rates its P99 TBT is nevertheless worse"
            + (f" (spec / no spec up to {fmt_ratio(max(1 / tbt[i] for i in worse_tbt))}, at "
               f"{_rates_text([rates[i] for i in worse_tbt])})" if worse_tbt else "")
            + "."
        )
    else:
        lines.append("- There is no steady rate where speculation both lowers mean E2EL and "
                     f"raises the fluid token rate by more than {fmt_percent(NO_DIFFERENCE)}.")
    lines += ["", *_disagreement_lines(study, e2el, fluid, steady)]
    lines += [
        "",
        "### Speedup and crossover (figure 6)",
        "",
        f"- {f_e2}",
        f"- Speedup of mean E2EL at the lowest rate ({fmt_number(rates[0])} req/s): "
        f"{fmt_ratio(e2el[0])}"
        + (f"; the reference is about {fmt_ratio(study.preset.reference_low_load_speedup)} "
           f"({study.preset.reference})" if study.preset.reference_low_load_speedup else "")
        + ".",
        f"- Crossover: {_crossover_text(study, SPEC, e2el, 'mean-E2EL')}.",
        f"- For the naive metrics: {_crossover_text(study, SPEC, tpot, 'mean-TPOT')}; "
        f"{_crossover_text(study, SPEC, norm, 'normalized-latency')}.",
        "",
        "Per speculation setting, over the rates where neither it nor no speculation is past "
        "saturation:",
        "",
        "| speculation setting | speedup at lowest rate | largest speedup | mean-E2EL crossover |",
        "|---|---|---|---|",
    ]
    spec = study.scenario.engine.speculative
    assert spec is not None
    names = [(SPEC, f"α={fmt_number(spec.acceptance.alpha)}, k={spec.num_speculative_tokens} "
                    "(base)")]
    names += [(n, n.removeprefix("spec ")) for n in study.variants]
    for system, label in names:
        steady_rates, sp = study.steady(system, study.speedup(system))
        finite = [q for q in sp if math.isfinite(q)]
        down = [c for c, d in crossings(steady_rates, sp) if d == "down"]
        cross = fmt_number(down[0], "req/s") if down else (
            "not reached" if finite and min(finite) >= 1 else "below 1 throughout"
            if finite and max(finite) < 1 else "none")
        largest = fmt_ratio(max(finite) if finite else math.nan)
        lines.append(f"| {label} | {fmt_ratio(sp[0])} | {largest} | {cross} |")
    if not study.variants:
        lines.append("")
        lines.append("(No alpha/k variants: the acceptance model is not geometric.)")
    lines.append("")
    return lines


def _disagreement_lines(study: SpecDecStudy, e2el: Sequence[float], fluid: Sequence[float],
                        steady: Sequence[bool]) -> list[str]:
    """Which metric to believe where the deadline view (fluid token rate) and mean E2E latency
    point in opposite directions, explained from the runs at those rates."""
    rates = study.rates
    ve, vf = _verdicts(e2el), _verdicts(fluid)
    split = [i for i in range(len(rates)) if steady[i] and {ve[i], vf[i]} == {"better", "worse"}]
    lines = ["### When the deadline view and mean E2E latency disagree", ""]
    if not split:
        lines.append("- At no steady rate of this sweep do the fluid token rate and mean E2E "
                     "latency point in opposite directions (beyond the "
                     f"{fmt_percent(NO_DIFFERENCE)} band).")
        return lines
    fl = study.scenario.metrics.fluidity
    d_ms = fl.tbt_deadline_ms
    e2e_helps = sum(ve[i] == "better" for i in split) * 2 >= len(split)

    def value(system: str, i: int, key: str) -> float:
        return summary_value(study.sweep[system][rates[i]].summary, key)

    for i in split:
        says = "lowers" if ve[i] == "better" else "raises"
        lines.append(
            f"- At {fmt_number(rates[i], 'req/s')} speculation {says} mean E2E latency "
            f"({fmt_number(value(BASELINE, i, 'mean_e2el_ms'), 'ms')} without, "
            f"{fmt_number(value(SPEC, i, 'mean_e2el_ms'), 'ms')} with: mean TPOT "
            f"{fmt_number(value(BASELINE, i, 'mean_tpot_ms'))} vs "
            f"{fmt_number(value(SPEC, i, 'mean_tpot_ms'), 'ms')}), but its fluid token rate is "
            f"{fmt_ratio(fluid[i])} no speculation's. The tail of first tokens moved: P99 TTFT "
            f"{fmt_number(value(BASELINE, i, 'p99_ttft_ms'))} vs "
            f"{fmt_number(value(SPEC, i, 'p99_ttft_ms'), 'ms')}, P99 scheduling delay "
            f"{fmt_number(value(BASELINE, i, 'p99_scheduling_delay_ms'))} vs "
            f"{fmt_number(value(SPEC, i, 'p99_scheduling_delay_ms'), 'ms')}.")
    later_first_tokens = all(value(SPEC, i, "p99_ttft_ms") > value(BASELINE, i, "p99_ttft_ms")
                             for i in split)
    lines += [
        f"- What the deadline charges that E2E does not: a request's first token is due "
        f"{fmt_number(fl.ttft_deadline_ms)} ms + {fmt_number(fl.ttft_deadline_ms_per_prompt_token)}"
        f" ms per prompt token after arrival, and every {fmt_number(d_ms)} ms it comes late "
        "counts as one missed deadline; slack only carries forward, so the faster bursts that "
        "follow cannot repay it. Mean E2E latency adds the same wait once to a total of "
        "seconds, and averages it over all requests. The fluid token rate is set by the P99 "
        "request, so it follows the tail of waits for a first token" + (
            ", which speculation lengthens here: its verify passes (k + 1 tokens per request) "
            "take token budget from prefill chunks, so new prompts wait longer to be admitted."
            if later_first_tokens else "."),
        "- Which to believe: for a streamed, interactive answer, the deadline view, which says "
        f"speculation {'hurts' if e2e_helps else 'helps'} at these rates: it is what the "
        "slowest 1% of readers see, the pace of their stream with its first token included. "
        f"Mean E2E latency, which says it {'helps' if e2e_helps else 'hurts'}, is the number "
        "to believe only when the caller waits for the whole answer (no streaming: batch jobs, "
        "agents).",
    ]
    return lines


def _capacity_cell(c: CapacityEstimate) -> str:
    if c.status == "below_range":
        return f"< {fmt_number(c.upper)} (failed at every rate tried: censored)"
    if not c.bounded or c.upper is None:
        return f">= {fmt_number(c.value)} (every rate tried passed: censored)"
    why = "the overload guard: saturation" if c.load_limited else "the rule"
    text = f"{fmt_number(c.value)} (fails at {fmt_number(c.upper)}: {why}"
    if c.status == "max_probes":
        text += "; bracket wider than the tolerance"
    return text + ")"


_WINNER_TEXT = {"undecided": "could not be decided (a censored capacity is only a bound)",
                "tie": "tie (within the search tolerance)"}


def _capacity_section(study: SpecDecStudy) -> list[str]:
    t = study.targets
    tol = study.plan.capacity_tolerance
    lines = [
        "## Capacity under three SLO rules (figure 7)",
        "",
        "Capacity = the largest arrival rate whose run meets the rule, found by "
        "`simserve.experiments.capacity.search_capacity` starting from the sweep's bracket (the "
        "first failing sweep rate and the largest passing rate below it) and bisecting until "
        f"high - low <= {fmt_percent(tol)} x low (at most {study.plan.capacity_max_probes} rates "
        "per search), same seed at every rate; a bracket that does not hold the capacity is "
        "extended until it does, and a rate at or above the system's saturation fails without a "
        f"run (the overload guard). T = {fmt_number(t.ttft_ms)} ms, D = "
        f"{fmt_number(t.per_token_ms)} ms.",
        "",
        "| rule | meets the rule when | no spec (req/s) | spec (req/s) | higher capacity |",
        "|---|---|---|---|---|",
    ]
    order = {}
    for rule in RULES:
        caps = study.capacities[rule.key]
        winner = study.capacity_winner(rule.key)
        winner = _WINNER_TEXT.get(winner, winner)
        order[rule.label] = winner
        lines.append(f"| {rule.label} | {rule.description} | {_capacity_cell(caps[BASELINE])} | "
                     f"{_capacity_cell(caps[SPEC])} | {winner} |")
    winners = set(order.values())
    lines.append("")
    if len(winners) > 1:
        lines.append("The rule reorders the systems: " + "; ".join(
            f"{k}: {v}" for k, v in order.items()) + ".")
    else:
        lines.append(f"All three rules rank the systems the same way ({winners.pop()}): in this "
                     "run the choice of rule does not reorder them.")
    lines.append("")
    return lines


def _cost_section(study: SpecDecStudy) -> list[str]:
    spec = study.scenario.engine.speculative
    assert spec is not None
    k = spec.num_speculative_tokens
    rows = study.step_costs
    lines = [
        "## Cost model: why the speedup falls with load",
        "",
        f"Decode-only steps priced by this run's cost model at a context of "
        f"{study.cost_context} tokens (mean prompt + half the mean output), with "
        f"{fmt_number(rows[0].tokens_per_step)} tokens per verify (measured). Per-request "
        "speedup of a step = tokens per verify x decode step / (verify + drafting).",
        "",
        "| batch | decode step (ms) | verify, k+1 wide (ms) | drafting (ms) | step speedup |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.batch} | {fmt_number(r.decode_ms)} | {fmt_number(r.verify_ms)} | "
                     f"{fmt_number(r.draft_ms)} | {fmt_ratio(r.speedup)} |")
    below = [r.batch for r in rows if r.speedup < 1]
    lines += [
        "",
        (f"- In a decode-only step speculation stops paying from a batch of {below[0]} "
         f"(verify of {(k + 1) * below[0]} tokens): the k+1-wide verify turns compute-bound and "
         "drafting grows with the batch." if below else
         "- Speculation still pays in a decode-only step at every batch size in the table."),
        f"- Under chunked prefill the verify's {k + 1} tokens per request also take token "
        f"budget ({study.scenario.engine.max_num_batched_tokens} per step) from prefill chunks, "
        "which is where the lower saturation throughput above comes from.",
    ]
    ref = study.preset.reference_low_load_speedup
    if ref:
        b1 = rows[0]
        per_draft = (b1.tokens_per_step * b1.decode_ms / ref - b1.verify_ms) / k
        lines.append(
            f"- Batch 1: decode {fmt_number(b1.decode_ms, 'ms')}, verify "
            f"{fmt_number(b1.verify_ms, 'ms')}, drafting {fmt_number(b1.draft_ms, 'ms')} "
            f"({fmt_number(b1.draft_ms / k, 'ms')} per draft forward), "
            f"so the cost model predicts {fmt_ratio(b1.speedup)} at batch 1 against a reference of "
            f"about {fmt_ratio(ref)}. With the same acceptance, {fmt_ratio(ref)} needs about "
            f"{fmt_number(per_draft)} ms per draft forward pass: "
            + (_KERNEL_DRAFT_TEXT if _is_kernels(study) else _ROOFLINE_DRAFT_TEXT)
        )
    lines.append("")
    return lines


_ROOFLINE_DRAFT_TEXT = (
    "the roofline prices a draft forward at its weight and KV reads only, with no per-forward "
    "fixed cost (kernel launches, sampling); a lower acceptance rate would close the gap too.")
_KERNEL_DRAFT_TEXT = (
    "the kernel model prices a draft forward at the draft model's measured kernels (its GPU "
    "time), and the engine loop once per step, in the target's step; the drafter's own CPU "
    "work between its forwards (input preparation, sampling) is not priced, because no real "
    "run with speculation was available to fit it; a lower acceptance rate would close the "
    "gap too.")


def _is_kernels(study: SpecDecStudy) -> bool:
    cost = study.figure_runs[BASELINE].resolved.cost_model.describe()
    return cost.get("kind") == "kernels"


def _cost_text(cost: dict) -> str:
    """One line naming the cost model that priced the runs and its data."""
    if cost.get("kind") == "kernels":
        loop = cost.get("engine_loop") or {}
        assert isinstance(loop, dict)
        return (f"kernels: GPU kernels measured inside vLLM on {cost.get('gpu')} "
                f"({cost.get('source')}), engine loop {loop.get('version')} (per step "
                f"{fmt_number(loop.get('per_step_us', 0))} us, per sequence "
                f"{fmt_number(loop.get('per_seq_us', 0))}"
                " us, fitted on real serving runs); the draft's forwards from the same tables")
    return f"{cost.get('kind')}: {cost.get('note', '')}"


def render_report(study: SpecDecStudy, command: str) -> str:
    """The Markdown report of a case-study run (every number from that run)."""
    p = study.preset
    mode = {"full": "full",
            "quick": "quick (fewer rates below the knee and capacities to 5%: the full run's "
                     "conclusions, less precise numbers)",
            "tiny": "tiny (a test of the pipeline: 4 rates of 100 requests; its numbers are not "
                    "conclusions)"}[study.size]
    lines = [
        f"# Speculative decoding case study: {p.description}",
        "",
        f"Preset `{p.name}` (`scenarios/casestudy/{p.scenario_file}`), {mode} run, simserve "
        f"{__version__}. Command: `{command}`.",
        "",
        "Both systems run the same scenario; the only difference is `engine.speculative` "
        "(set vs unset). Conclusions below are generated from this run's numbers; ratios within "
        f"{fmt_percent(NO_DIFFERENCE)} of 1 are reported as no difference.",
        "",
    ]
    lines += _setup_section(study)
    lines += _saturation_section(study)
    lines += _sweep_section(study)
    lines += _conclusions_section(study)
    lines += _capacity_section(study)
    lines += _cost_section(study)
    rid = figure_request(study)
    captions = (
        f"cumulative tokens of request {rid} at {fmt_number(study.figure_rate)} req/s, with and "
        "without speculation",
        f"TBT CDF (every gap of the measured requests) at {fmt_number(study.figure_rate)} req/s",
        "mean TPOT and mean normalized latency vs rate (naive view)",
        "P99 TBT vs rate (TBT view)",
        "fluid token rate and mean fluidity index vs rate (deadline view)",
        "speedup of mean E2EL vs rate for the base setting and the alpha/k variants",
        "capacity of both systems under the three SLO rules",
    )
    lines += ["## Figures", ""]
    for i, (name, cap) in enumerate(zip(FIGURE_FILES, captions, strict=True), start=1):
        lines.append(f"{i}. [{name}.png]({name}.png): {cap}")
    lines += [
        "",
        "Raw data: `summaries.json` (every run's full summary), `results.json` (the derived "
        "numbers above), `scenario.yaml` (the resolved speculative scenario).",
        "",
    ]
    return "\n".join(lines)


def _clean(x: float) -> float | None:
    return x if math.isfinite(x) else None


def study_results(study: SpecDecStudy) -> dict[str, object]:
    """The derived numbers of the report as plain data (results.json)."""
    e2el = study.speedup(SPEC)
    return {
        "preset": study.preset.name,
        "size": study.size,
        "seed": study.scenario.seed,
        "simserve_version": __version__,
        "overrides": list(study.overrides),
        "targets": {"ttft_ms": study.targets.ttft_ms, "per_token_ms": study.targets.per_token_ms},
        "saturation_throughput": {s: _clean(study.saturation_rps(s)) for s in study.saturation},
        "saturations": {s: sat.to_mapping() for s, sat in study.saturations.items()},
        "rates": study.rates,
        "figure_rate": study.figure_rate,
        "speedup_mean_e2el": {
            s: [_clean(q) for q in study.speedup(s)] for s in (SPEC, *study.variants)
        },
        "ratio_mean_tpot": [_clean(q) for q in study.ratio("mean_tpot_ms")],
        "ratio_mean_normalized_latency": [
            _clean(q) for q in study.ratio("mean_normalized_latency_ms")
        ],
        "ratio_p99_tbt_spec_over_nospec": [
            _clean(q) for q in study.ratio("p99_tbt_ms", SPEC, BASELINE)
        ],
        "ratio_fluid_token_rate_spec_over_nospec": [
            _clean(q) for q in study.ratio("fluid_token_rate", SPEC, BASELINE)
        ],
        "conclusions": study.conclusions(),
        "crossovers_mean_e2el": [
            {"rate": c, "direction": d} for c, d in crossings(study.rates, e2el)
        ],
        "capacities": {
            rule.key: {
                s: {"value": c.value, "upper": c.upper, "status": c.status,
                    "probes": c.probes, "tolerance": c.tolerance,
                    "load_limited": c.load_limited, "bounded": c.bounded}
                for s, c in study.capacities[rule.key].items()
            }
            for rule in RULES
        },
        "step_costs": [
            {"batch": r.batch, "decode_ms": r.decode_ms, "verify_ms": r.verify_ms,
             "draft_ms": r.draft_ms, "tokens_per_step": r.tokens_per_step,
             "speedup": r.speedup}
            for r in study.step_costs
        ],
    }


CASE_STUDY_DIR = OutputKind(
    "case-study directory",
    legacy_files=("report.md", "results.json", "summaries.json", "scenario.yaml", "*.png"),
    legacy_required=("report.md", "results.json", "summaries.json", "scenario.yaml"),
)


def specdec_writer(study: SpecDecStudy, command: str) -> Callable[[Path], None]:
    """What fills a case-study directory: report.md, the seven PNGs, summaries.json,
    results.json and scenario.yaml."""
    from simserve.plots import save_figure

    def write(tmp: Path) -> None:
        (tmp / "report.md").write_text(render_report(study, command))
        for name, fig in specdec_figures(study).items():
            save_figure(fig, tmp / f"{name}.png")
        records = [r.to_json() for r in study.records]
        (tmp / "summaries.json").write_text(json.dumps(records, indent=1) + "\n")
        (tmp / "results.json").write_text(json.dumps(study_results(study), indent=2) + "\n")
        scenario = {"simserve_version": __version__, **scenario_to_mapping(study.scenario)}
        (tmp / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))

    return write


def write_specdec(study: SpecDecStudy, out_dir: str | Path, command: str) -> Path:
    """Write the case study's directory atomically (DESIGN §6): new, empty, or a case-study
    directory simserve can prove it wrote (`atomic.claim_output_dir`); anything else is
    refused. The command claims the directory before simulating and calls `specdec_writer`."""
    return write_dir_atomically(out_dir, specdec_writer(study, command), CASE_STUDY_DIR)
