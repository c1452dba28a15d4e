"""report.md, verdicts.json and the figures of a catalog run, written atomically to one directory.

Everything is rendered from the verdicts data (the runner's plain output), so each number in
report.md is one in verdicts.json. The directory is written to a temporary sibling and renamed
into place: an interrupted run never leaves a half-written report that looks complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from simserve.antipatterns.figures import save_entry_figure
from simserve.antipatterns.items import CHECKLIST
from simserve.errors import InputError
from simserve.experiments.atomic import OutputKind, claim_output_dir
from simserve.formatting import fmt_interval, fmt_number, fmt_percent, fmt_ratio

__all__ = [
    "REPORT_DIR",
    "check_keeps_entries",
    "fmt_value",
    "render_report",
    "report_writer",
    "setup_summary",
    "short_verdict",
    "write_outputs",
]

MARKER = "verdicts.json"
# Checklist items no catalog entry shows, and where simserve shows or keeps them.
ELSEWHERE = {
    "C9": "no entry: every run states them (`scenario.yaml`, `summary.json`)",
    "C10": "no entry: every run reports TTFT with its queueing and `*_scheduling_delay_ms`",
    "C15": "the speculative-decoding case study (`simserve casestudy specdec`); "
           "`simserve check` rule SPEC",
}


# --------------------------------------------------------------------------- formatting


def fmt_value(value: Any, unit: str = "") -> str:
    """A number as the report prints it (`formatting.fmt_number`)."""
    return fmt_number(value, unit)


def _ci(ci: Sequence[Any] | None, unit: str = "", *, ratio: bool = False,
        what: str = "95% CI") -> str:
    if not ci:
        return ""
    return f" ({fmt_interval(ci[0], ci[1], unit, what=what, ratio=ratio)})"


def _ratio(value: Any) -> str:
    return fmt_ratio(value)


def short_verdict(conclusion: Mapping[str, Any]) -> str:
    """'A 1.80x better' or 'no clear winner (1.03x)', for tables and the console."""
    ratio = conclusion["ratio"]
    if ratio is None:
        return ("could not be decided" if conclusion["text"].startswith("could not")
                else "no verdict")
    if conclusion["winner"] is None:
        return f"no clear winner ({_ratio(ratio)})"
    if ratio == "inf":
        return f"{conclusion['winner']} unboundedly better"
    ratio = float(ratio)
    magnitude = ratio if ratio >= 1 else 1.0 / ratio
    return f"{conclusion['winner']} {fmt_ratio(magnitude)} better"


def _code(items: Sequence[str]) -> str:
    return " ".join(f"`{i}`" for i in items) if items else "(base scenario as is)"


# --------------------------------------------------------------------------- cells


def _where(setup: Mapping[str, Any], seeds: int) -> str:
    measure = setup["measure"]
    first = next(iter(setup["systems"].values()))
    if measure["kind"] == "capacity":
        cap = first["capacity"]
        return (f"bisection from {fmt_value(measure['low'])} x to 1 x each system's saturation, "
                f"{cap['num_requests']} requests x {seeds} seeds per probe")
    if measure["kind"] == "point":
        point = first["point"]
        rate = ("offline (all at t=0)" if point["rate_rps"] is None
                else fmt_value(point["rate_rps"], "req/s"))
        warm = "" if point["warmup_s"] else ", no warm-up exclusion"
        return f"{rate}, {point['num_requests']} requests x {seeds} seeds{warm}"
    index = next((p["index"] for p in setup.get("per_point", []) if p["summary"]), -1)
    point = first["sweep"][index]
    rate = "offline" if point["rate_rps"] is None else fmt_value(point["rate_rps"], "req/s")
    return (f"sweep ({len(first['sweep'])} points); verdict at {rate} with "
            f"{point['num_requests']} requests x {seeds} seeds")


def _system_cell(setup: Mapping[str, Any], name: str) -> str:
    record = setup["systems"][name]
    key = setup["verdict_metric"]
    unit = setup["metric_info"][key]["unit"]
    if "capacity" in record:
        text = _capacity_cell(record["capacity"], per_gpu=key == "capacity_per_gpu_rps")
    else:
        if "point" in record:
            values = record["point"]["values"][key]
        else:
            index = next((p["index"] for p in setup["per_point"] if p["summary"]), -1)
            values = record["sweep"][index]["values"][key]
        text = fmt_value(values["value"], unit) + _ci(values["ci"], unit)
    tuning = record.get("tuning")
    if tuning:
        options = "; ".join(
            f"{' '.join(o['overrides'])} → {fmt_value(o['value'])}" for o in tuning["options"])
        text += f"; tuned: `{' '.join(tuning['chosen'])}` (options: {options})"
    return text


def _capacity_cell(cap: Mapping[str, Any], *, per_gpu: bool) -> str:
    """A capacity, the first failing rate above it (and whether the overload guard, not the
    SLO, made it fail), the system's saturation; per GPU (with the cluster's total and GPU
    count) when the setup reports capacity per GPU."""
    gpus = cap.get("num_gpus")
    per_gpu = per_gpu and bool(gpus)
    scale, unit = (1.0 / gpus, "req/s per GPU") if per_gpu else (1.0, "req/s")
    on = (f" ({fmt_value(cap['capacity_rps'], 'req/s')} on {gpus} GPU{'s' if gpus != 1 else ''})"
          if per_gpu else "")

    def rate(value: float | None, with_unit: bool = True) -> str:
        return fmt_value(None if value is None else value * scale, unit if with_unit else "")

    saturation = f"saturation {rate(cap.get('saturation_rps'), False)}"
    if cap["status"] == "below_range":
        return (f"< {rate(cap['high_rps'])} (fails at every rate tried: censored; "
                f"{saturation})")
    if cap["status"] == "above_range":
        return f">= {rate(cap['capacity_rps'])}{on} (meets the rule at every rate tried: censored)"
    if cap["capacity_rps"] is None:
        return f"n/a ({cap['status']})"
    why = ("its saturation, the overload guard" if cap.get("capped")
           else f"the SLO; {saturation}")
    text = f"{rate(cap['capacity_rps'])}{on} (fails at {rate(cap['high_rps'], False)}: {why})"
    return text + (f" [{cap['status']}]" if cap["status"] != "ok" else "")


# --------------------------------------------------------------------------- sections


def _setup_lines(entry: Mapping[str, Any], key: str, heading: str) -> list[str]:
    setup = entry[key]
    lines = [f"- **{heading}** {setup['description']}"]
    details = [f"measured: {setup['measure']['text']}"]
    details.append(f"saturation throughput of `{setup['reference_system']}`, which sets the "
                   f"rates: {fmt_value(setup['saturation_rps'], 'req/s')}")
    if setup["overrides"]:
        details.append(f"overrides for every system: {_code(setup['overrides'])}")
    for name, items in setup["system_overrides"].items():
        details.append(f"only for `{name}`: {_code(items)}")
    lines.append(f"  ({'; '.join(details)}).")
    return lines


def _numbers_table(entry: Mapping[str, Any], seeds: int) -> list[str]:
    unfair, fair = entry["unfair"], entry["fair"]
    rows = [
        "| | Unfair setup | Fair setup |",
        "|---|---|---|",
        "| reported metric | "
        + " | ".join(s["metric_info"][s["verdict_metric"]]["axis_label"] for s in (unfair, fair))
        + " |",
        "| where | " + " | ".join(_where(s, seeds) for s in (unfair, fair)) + " |",
    ]
    for name in entry["systems"]:
        rows.append(f"| `{name}` | " + " | ".join(_system_cell(s, name) for s in (unfair, fair))
                    + " |")
    cells = []
    for s in (unfair, fair):
        c = s["conclusion"]
        cells.append(_ratio(c["ratio"]) + _ci(c["ratio_ci"], ratio=True, what=c["ratio_ci_kind"]))
    rows.append(f"| advantage of `{entry['candidate']}` (> 1: better) | " + " | ".join(cells)
                + " |")
    rows.append("| conclusion | " + " | ".join(s["conclusion"]["text"] for s in (unfair, fair))
                + " |")
    return rows


def _extra_table(entry: Mapping[str, Any]) -> list[str]:
    """Further metrics of point measurements (same runs), one row per metric and system."""
    setups = [(label, entry[key]) for key, label in (("unfair", "unfair"), ("fair", "fair"))
              if entry[key]["measure"]["kind"] == "point"]
    if not setups:
        return []
    metrics: dict[str, Mapping[str, Any]] = {}
    for _label, setup in setups:
        for key in setup["metrics"]:
            metrics.setdefault(key, setup["metric_info"][key])
    if len(metrics) < 2:
        return []
    rows = ["", "Other numbers from the same runs (over the seeds, with 95% CIs):", "",
            "| metric | system | " + " | ".join(label for label, _s in setups) + " |",
            "|---|---|" + "---|" * len(setups)]
    for key, info in metrics.items():
        for name in entry["systems"]:
            cells = []
            for _label, setup in setups:
                values = setup["systems"][name]["point"]["values"].get(key)
                cells.append("—" if values is None else fmt_value(values["value"], info["unit"])
                             + _ci(values["ci"], info["unit"]))
            rows.append(f"| {info['axis_label']} | `{name}` | " + " | ".join(cells) + " |")
    return rows


def _sweep_tables(entry: Mapping[str, Any]) -> list[str]:
    rows: list[str] = []
    for key in ("unfair", "fair"):
        setup = entry[key]
        if setup["measure"]["kind"] != "sweep":
            continue
        metric = setup["verdict_metric"]
        info = setup["metric_info"][metric]
        names = list(entry["systems"])
        axis = setup["measure"]["axis"]
        rows += ["", f"{key.capitalize()} sweep ({info['axis_label']}; ◯ = verdict point, † = "
                 "past that system's saturation, not a steady state):",
                 "", "| rate (req/s) | requests | " + " | ".join(f"`{n}`" for n in names)
                 + f" | advantage of `{entry['candidate']}` |",
                 "|---|---|" + "---|" * (len(names) + 1)]
        for i, conclusion in enumerate(setup["per_point"]):
            first = setup["systems"][names[0]]["sweep"][i]
            cells = [fmt_value(setup["systems"][n]["sweep"][i]["values"][metric]["value"])
                     + (" †" if setup["systems"][n]["sweep"][i].get("overloaded") else "")
                     for n in names]
            mark = " ◯" if conclusion["summary"] else ""
            rows.append(f"| {fmt_value(first['rate_rps'])} | {first['num_requests']} | "
                        + " | ".join(cells) + f" | {_ratio(conclusion['ratio'])}{mark} |")
        trend = setup.get("trend")
        if trend:
            parts = []
            for name, t in trend["systems"].items():
                factor = t["per_doubling"]
                per = fmt_ratio(factor)
                what = "doubling of the requests" if axis == "requests" else "doubling of the rate"
                parts.append(f"`{name}` {t['trend']} ({per} per {what})")
            held = ""
            if trend["expected"]:
                held = (f"; the catalog expects {trend['expected']}: "
                        f"**{'held' if trend['held'] else 'did not hold'}**")
            rows += ["", f"Trend along the {key} sweep: " + ", ".join(parts) + held + "."]
    return rows


def _changes_lines(entry: Mapping[str, Any]) -> list[str]:
    changes = entry.get("value_changes")
    if not changes:
        return []
    unit = entry["fair"]["metric_info"][changes["metric"]]["unit"]
    parts = []
    for name, c in changes["systems"].items():
        direction = c["direction"] or "n/a"
        if direction == "same" and changes["metric"] in ("capacity_rps", "capacity_per_gpu_rps"):
            direction = "same: equal within the bisection tolerance, not resolved"
        parts.append(f"`{name}` {fmt_value(c['unfair'], unit)} → {fmt_value(c['fair'], unit)}"
                     f" ({direction})")
    text = "From the unfair to the fair setup, each system's number moved: " + ", ".join(parts)
    if changes["expected"]:
        text += (f"; the catalog expects every system to get {changes['expected']}: "
                 f"**{'held' if changes['held'] else 'did not hold'}**")
    return ["", text + "."]


def _items(entry: Mapping[str, Any]) -> str:
    return ", ".join(entry["checklist"])


def setup_summary(entry: Mapping[str, Any], key: str) -> str:
    """What one evaluator concludes, for the summary table: the verdict, or for an entry about
    a dependence (ES3) the per-doubling factors of its number."""
    setup = entry[key]
    if entry.get("outcome_on") == "trend":
        factors = ", ".join(f"{name} {fmt_ratio(t['per_doubling'])}"
                            for name, t in setup["trend"]["systems"].items())
        what = "run" if setup["measure"]["axis"] == "requests" else "rate"
        return (f"{setup['metric_info'][setup['verdict_metric']]['label']} per doubling of the "
                f"{what}: {factors}")
    label = setup["metric_info"][setup["verdict_metric"]]["label"]
    return f"{short_verdict(setup['conclusion'])} ({label})"


def _entry_section(entry: Mapping[str, Any], seeds: int) -> list[str]:
    systems = "; ".join(f"`{name}` = {_code(items)}" for name, items in entry["systems"].items())
    items = "; ".join(f"**{i}** {CHECKLIST[i].text}" for i in entry["checklist"])
    lines = [
        f"## {entry['id']} · {entry['title']}",
        "",
        f"*{entry['dimension'].capitalize()}.* {entry['description']}",
        "",
        f"- **Checklist:** {items}.",
        f"- **Base scenario:** `{entry['base']}`. **Claim under test:** `{entry['candidate']}` "
        f"vs `{entry['baseline']}`. **Systems:** {systems}.",
        *_setup_lines(entry, "unfair", "What the unfair evaluator does:"),
        *_setup_lines(entry, "fair", "What the fair evaluator does:"),
        "",
        *_numbers_table(entry, seeds),
        *_extra_table(entry),
        *_sweep_tables(entry),
        *_changes_lines(entry),
        "",
    ]
    on = (" (stated on the trend, the quantity this entry is about)"
          if entry.get("outcome_on") == "trend" else "")
    lines += [f"**Outcome: {entry['outcome']}**{on}. {entry['change']}", ""]
    verdict = "held" if entry["as_expected"] else "did not hold in this run"
    expected = ", ".join(entry["expected"])
    lines.append(f"**Catalog expectation** ({expected}): {entry['expected_text']}. "
                 f"**{verdict.capitalize()}.**")
    if not entry["as_expected"]:
        lines.append(" The report states what the runs show; see the numbers above.")
    lines += ["", f"![{entry['id']}: unfair vs fair setup]({entry['figure']})", ""]
    return lines


def _checklist_section(verdicts: Mapping[str, Any]) -> list[str]:
    """The checklist as a table: each item, the entries that show it and their outcomes."""
    shown: dict[str, list[str]] = {i: [] for i in CHECKLIST}
    for e in verdicts["entries"]:
        for i in e["checklist"]:
            shown[i].append(f"[{e['id']}](#{_anchor(e)}) {e['outcome']}")
    lines = [
        "## The evaluation checklist",
        "",
        "What a fair evaluation does, item by item, and the entries of this run that show what "
        "happens when it does not. `simserve check EVAL.yaml` names the item of every "
        "anti-pattern it finds in a description of an evaluation.",
        "",
        "| item | dimension | a fair evaluation... | entries (outcome) |",
        "|---|---|---|---|",
    ]
    for item in CHECKLIST.values():
        entries = ", ".join(shown[item.id]) or ELSEWHERE.get(item.id, "—")
        lines.append(f"| {item.id} | {item.dimension} | {item.text} | {entries} |")
    return [*lines, ""]


def render_report(verdicts: Mapping[str, Any]) -> str:
    """The Markdown report of a catalog run, from its verdicts data only."""
    size = verdicts["size"]
    seeds = verdicts["seeds"]
    n_seeds = len(seeds)
    lines = [
        "# simserve anti-pattern catalog",
        "",
        f"Generated by `{verdicts['command']}` (simserve {verdicts['simserve_version']}, size "
        f"`{size['name']}`, {fmt_value(verdicts['wall_s'])} s of simulation wall-clock, "
        f"{verdicts['num_runs']} simulations). Each entry runs one base scenario under an unfair "
        "and a fair evaluation setup and states, from the numbers of this run, what each "
        "evaluator would conclude, and which item of the evaluation checklist (C1-C15, at the "
        "end) it illustrates (after \"On Evaluating Performance of LLM Inference Serving "
        "Systems\", arXiv 2507.09019).",
        "",
        "**How the numbers were made.** "
        f"Seeds {', '.join(str(s) for s in seeds)} (spawned from root seed "
        f"{verdicts['root_seed']}); every system runs on the same seeds, so it sees the same "
        "requests (common random numbers). Latencies and throughputs are positive and vary "
        "multiplicatively from seed to seed, so a point value is the geometric mean over the "
        f"seeds with a {fmt_percent(verdicts['confidence'])} Student-t interval on the log scale "
        "(it cannot leave the positive axis); a number that is 0 on some seed gets the arithmetic "
        "mean and a t-interval cut at 0. An advantage is the ratio of two geometric means, and "
        "its interval the t-interval of the paired per-seed log ratios, which is centred on it. "
        "Arrival rates are fractions of the reference system's saturation throughput: the "
        "completion rate of an offline run "
        f"({size['saturation_requests']} requests, more if needed) while requests wait to be "
        "admitted, the most any arrival process gets through the system in steady state. "
        f"Runs have {size['requests']} requests per point, warm-up and cool-down windows of "
        f"{fmt_percent(size['window_fraction'])} of the arrival span each. A capacity is "
        f"bisected to {fmt_percent(size['tolerance'])} (at most {size['max_probes']} bisection "
        "steps) on the mean over seeds of each rule key (`experiments.capacity`), between a "
        "quarter of the system's own saturation throughput (halved while it fails) and that "
        "saturation: a rate at or above it fails without a run (the overload guard), since its "
        "queue, once formed, never drains. A capacity is therefore bounded on both sides; a "
        "verdict on a capacity "
        "known only as a bound is stated as \"could not be decided\", with the reason.",
        "",
        "**How verdicts are stated.** \"A is R x better than B\" with R the ratio of the two "
        "numbers, oriented so that R > 1 favours A (lower is better for latencies, higher for "
        f"throughput and capacity). Within ±{fmt_percent(verdicts['tie_margin'])} of 1 there is "
        "no clear winner. Comparing the two setups: **flipped** when both name a winner and they "
        "differ, **shrank**/**grew** when the winner's advantage moved by more than a factor "
        f"{fmt_ratio(1 + verdicts['change_margin'])} (including to or from no clear winner), else "
        "**unchanged**. A sweep's trend is the factor by which a number changes per doubling "
        f"of the swept quantity: increasing above {fmt_ratio(1 + verdicts['trend_margin'])}, flat "
        "within that factor either way. An entry about such a dependence (ES3) states its "
        "outcome on it: how the largest per-doubling factor moved from the unfair to the fair "
        "setup, with the same margin.",
        "",
    ]
    if size["name"] != "full":
        lines += [
            f"> This is a `{size['name']}` run: few requests and coarse capacity brackets, a "
            "check that the pipeline works. Its outcomes may differ from the full run's; run "
            "`simserve antipatterns` (the full size) for numbers to quote.",
            "",
        ]
    lines += [
        "## Summary",
        "",
        "| entry | anti-pattern | checklist | unfair evaluator concludes | fair evaluator "
        "concludes | outcome | catalog expectation |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in verdicts["entries"]:
        lines.append(
            f"| [{e['id']}](#{_anchor(e)}) | {e['title']} | {_items(e)} | "
            f"{setup_summary(e, 'unfair')} | {setup_summary(e, 'fair')} | "
            f"**{e['outcome']}** | {'held' if e['as_expected'] else 'not held'} |")
    lines.append("")
    for e in verdicts["entries"]:
        lines += _entry_section(e, n_seeds)
    lines += _checklist_section(verdicts)
    return "\n".join(lines).rstrip() + "\n"


def _anchor(entry: Mapping[str, Any]) -> str:
    """GitHub's anchor of an entry's heading."""
    text = f"{entry['id']} · {entry['title']}".lower()
    kept = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


# --------------------------------------------------------------------------- output


REPORT_DIR = OutputKind(
    "anti-pattern report",
    legacy_files=("report.md", MARKER, "figures/", "figures/*.png"),
    legacy_required=("report.md", MARKER),
)


def check_keeps_entries(out: str | Path, entry_ids: Sequence[str]) -> None:
    """Refuse to replace a report holding entries this run does not rerun (a partial `--only`
    run over a full report would silently drop the rest)."""
    verdicts = Path(out) / MARKER
    try:
        old = json.loads(verdicts.read_text(encoding="utf-8"))
        old_ids = [str(e["id"]) for e in old["entries"]]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no earlier report there (atomic.check_replaceable judges the rest)
    lost = [i for i in old_ids if i not in set(entry_ids)]
    if lost:
        raise InputError(
            f"holds a report of {len(old_ids)} entries; this run has {len(entry_ids)} and would "
            f"drop {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}: choose another --out",
            field="--out", source=str(out),
        )


def report_writer(verdicts: Mapping[str, Any], drawn: Mapping[str, bytes] | None = None
                  ) -> Callable[[Path], None]:
    """What fills a report directory: figures/<ID>.png, verdicts.json and report.md (`drawn`:
    figures already drawn, PNG bytes by entry id)."""
    drawn = drawn or {}

    def write(tmp: Path) -> None:
        for entry in verdicts["entries"]:
            save_entry_figure(entry, tmp / entry["figure"], drawn.get(entry["id"]))
        (tmp / MARKER).write_text(json.dumps(verdicts, indent=2, allow_nan=False) + "\n")
        (tmp / "report.md").write_text(render_report(verdicts))

    return write


def write_outputs(verdicts: Mapping[str, Any], out: str | Path) -> Path:
    """Write report.md, verdicts.json and figures/<ID>.png atomically into `out` (which must be
    new, empty, or a report simserve wrote with no entry this one lacks)."""
    with claim_output_dir(out, REPORT_DIR) as claim:
        check_keeps_entries(out, [str(e["id"]) for e in verdicts["entries"]])
        return claim.write(report_writer(verdicts))
