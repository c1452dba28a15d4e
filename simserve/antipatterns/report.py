"""report.md, verdicts.json and the figures of a catalog run, written atomically to one directory.

Everything is rendered from the verdicts data (the runner's plain output), so each number in
report.md is one in verdicts.json. The directory is written to a temporary sibling and renamed
into place: an interrupted run never leaves a half-written report that looks complete.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from simserve.antipatterns.figures import save_entry_figure
from simserve.errors import InputError
from simserve.experiments.atomic import OutputKind, claim_output_dir

__all__ = [
    "REPORT_DIR",
    "check_keeps_entries",
    "fmt_value",
    "render_report",
    "report_writer",
    "short_verdict",
    "write_outputs",
]

MARKER = "verdicts.json"


# --------------------------------------------------------------------------- formatting


def fmt_value(value: Any, unit: str = "") -> str:
    """A number with 3-4 significant digits and its unit ("n/a" when missing)."""
    if value == "inf":
        return "unbounded"
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def _ci(ci: Sequence[Any] | None, unit: str = "", suffix: str = "") -> str:
    if not ci:
        return ""
    return f" (95% CI {fmt_value(ci[0])}{suffix}–{fmt_value(ci[1], unit)}{suffix})"


def _ratio(value: Any) -> str:
    if value is None:
        return "n/a"
    if value == "inf":
        return "unbounded"
    return f"{float(value):.2f}x"


def short_verdict(conclusion: Mapping[str, Any]) -> str:
    """'A 1.80x better' or 'no clear winner (1.03x)', for tables and the console."""
    ratio = conclusion["ratio"]
    if ratio is None:
        return "no verdict"
    if conclusion["winner"] is None:
        return f"no clear winner ({_ratio(ratio)})"
    if ratio == "inf":
        return f"{conclusion['winner']} unboundedly better"
    ratio = float(ratio)
    magnitude = ratio if ratio >= 1 else 1.0 / ratio
    return f"{conclusion['winner']} {magnitude:.2f}x better"


def _code(items: Sequence[str]) -> str:
    return " ".join(f"`{i}`" for i in items) if items else "(base scenario as is)"


# --------------------------------------------------------------------------- cells


def _where(setup: Mapping[str, Any], seeds: int) -> str:
    measure = setup["measure"]
    first = next(iter(setup["systems"].values()))
    if measure["kind"] == "capacity":
        cap = first["capacity"]
        lo, hi = cap["bracket_rps"]
        return (f"bisection in [{fmt_value(lo)}, {fmt_value(hi)}] req/s, "
                f"{cap['num_requests']} requests x {seeds} seeds per probe")
    if measure["kind"] == "point":
        point = first["point"]
        rate = ("offline (all at t=0)" if point["rate_rps"] is None
                else f"{fmt_value(point['rate_rps'])} req/s")
        warm = "" if point["warmup_s"] else ", no warm-up exclusion"
        return f"{rate}, {point['num_requests']} requests x {seeds} seeds{warm}"
    index = next((p["index"] for p in setup.get("per_point", []) if p["summary"]), -1)
    point = first["sweep"][index]
    rate = "offline" if point["rate_rps"] is None else f"{fmt_value(point['rate_rps'])} req/s"
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
        text = fmt_value(values["mean"], unit) + _ci(values["ci"], unit)
    tuning = record.get("tuning")
    if tuning:
        options = "; ".join(
            f"{' '.join(o['overrides'])} → {fmt_value(o['value'])}" for o in tuning["options"])
        text += f"; tuned: `{' '.join(tuning['chosen'])}` (options: {options})"
    return text


def _capacity_cell(cap: Mapping[str, Any], *, per_gpu: bool) -> str:
    """A capacity, its bracket and status; per GPU (with the cluster's total and GPU count)
    when the setup reports capacity per GPU."""
    gpus = cap.get("num_gpus")
    per_gpu = per_gpu and bool(gpus)
    scale, unit = (1.0 / gpus, "req/s per GPU") if per_gpu else (1.0, "req/s")
    on = (f" ({fmt_value(cap['capacity_rps'], 'req/s')} on {gpus} GPU{'s' if gpus != 1 else ''})"
          if per_gpu else "")

    def rate(value: float | None, with_unit: bool = True) -> str:
        return fmt_value(None if value is None else value * scale, unit if with_unit else "")

    if cap["status"] == "below_range":
        return f"< {rate(cap['bracket_rps'][0])} (fails at the lowest rate)"
    if cap["status"] == "above_range":
        return f">= {rate(cap['capacity_rps'])}{on} (meets the rule at the top)"
    if cap["capacity_rps"] is None:
        return f"n/a ({cap['status']})"
    text = f"{rate(cap['capacity_rps'])}{on} (fails at {rate(cap['high_rps'], False)})"
    return text + (f" [{cap['status']}]" if cap["status"] != "ok" else "")


# --------------------------------------------------------------------------- sections


def _setup_lines(entry: Mapping[str, Any], key: str, heading: str) -> list[str]:
    setup = entry[key]
    lines = [f"- **{heading}** {setup['description']}"]
    details = [f"measured: {setup['measure']['text']}"]
    details.append(f"saturation throughput of `{setup['reference_system']}` (offline run): "
                   f"{fmt_value(setup['saturation_rps'], 'req/s')}")
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
        cells.append(_ratio(c["ratio"]) + (_ci(c["ratio_ci"], suffix="x") if c["ratio_ci"]
                                           else ""))
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
    rows = ["", "Other numbers from the same runs (mean over seeds, 95% CI):", "",
            "| metric | system | " + " | ".join(label for label, _s in setups) + " |",
            "|---|---|" + "---|" * len(setups)]
    for key, info in metrics.items():
        for name in entry["systems"]:
            cells = []
            for _label, setup in setups:
                values = setup["systems"][name]["point"]["values"].get(key)
                cells.append("—" if values is None else fmt_value(values["mean"], info["unit"])
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
        rows += ["", f"{key.capitalize()} sweep ({info['axis_label']}; ring = verdict point):",
                 "", "| rate (req/s) | requests | " + " | ".join(f"`{n}`" for n in names)
                 + f" | advantage of `{entry['candidate']}` |",
                 "|---|---|" + "---|" * (len(names) + 1)]
        for i, conclusion in enumerate(setup["per_point"]):
            first = setup["systems"][names[0]]["sweep"][i]
            cells = [fmt_value(setup["systems"][n]["sweep"][i]["values"][metric]["mean"])
                     for n in names]
            mark = " ◯" if conclusion["summary"] else ""
            rows.append(f"| {fmt_value(first['rate_rps'])} | {first['num_requests']} | "
                        + " | ".join(cells) + f" | {_ratio(conclusion['ratio'])}{mark} |")
        trend = setup.get("trend")
        if trend:
            parts = []
            for name, t in trend["systems"].items():
                factor = t["per_doubling"]
                per = "n/a" if factor is None else f"x{factor:.2f}"
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


def _entry_section(entry: Mapping[str, Any], seeds: int) -> list[str]:
    systems = "; ".join(f"`{name}` = {_code(items)}" for name, items in entry["systems"].items())
    lines = [
        f"## {entry['id']} · {entry['title']}",
        "",
        f"*{entry['dimension'].capitalize()}.* {entry['description']}",
        "",
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
        f"**Outcome: {entry['outcome']}.** {entry['change']}",
        "",
    ]
    verdict = "held" if entry["as_expected"] else "did not hold in this run"
    expected = ", ".join(entry["expected"])
    lines.append(f"**Catalog expectation** ({expected}): {entry['expected_text']}. "
                 f"**{verdict.capitalize()}.**")
    if not entry["as_expected"]:
        lines.append(" The report states what the runs show; see the numbers above "
                     "(a quick run has few requests and coarse capacity brackets).")
    lines += ["", f"![{entry['id']}: unfair vs fair setup]({entry['figure']})", ""]
    return lines


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
        "evaluator would conclude (after \"On Evaluating Performance of LLM Inference Serving "
        "Systems\", arXiv 2507.09019).",
        "",
        "**How the numbers were made.** "
        f"Seeds {', '.join(str(s) for s in seeds)} (spawned from root seed "
        f"{verdicts['root_seed']}); every system runs on the same seeds, so it sees the same "
        "requests (common random numbers). A point value is the mean over the seeds with a "
        f"{verdicts['confidence']:.0%} Student-t interval; an advantage's interval is a t-interval "
        "on the paired per-seed log ratios. Arrival rates are fractions of the reference "
        "system's saturation throughput (steady completions/s of an offline run of "
        f"{size['saturation_requests']} requests). Runs have {size['requests']} requests per "
        f"point ({2 * size['requests']} per capacity probe unless stated), warm-up and cool-down "
        f"windows of {size['window_fraction']:.0%} of the arrival span each. Capacities are "
        f"bisected to {size['tolerance']:.0%} (at most {size['max_probes']} bisection steps) on "
        "the mean over seeds of each rule key (`experiments.capacity`).",
        "",
        "**How verdicts are stated.** \"A is R x better than B\" with R the ratio of the two "
        "numbers, oriented so that R > 1 favours A (lower is better for latencies, higher for "
        f"throughput and capacity). Within ±{verdicts['tie_margin']:.0%} of 1 there is no clear "
        "winner. Comparing the two setups: **flipped** when both name a winner and they differ, "
        "**shrank**/**grew** when the winner's advantage moved by more than a factor "
        f"{1 + verdicts['change_margin']:.2f} (including to or from no clear winner), else "
        "**unchanged**. A sweep's trend is the factor by which a number changes per doubling "
        f"of the swept quantity: increasing above x{1 + verdicts['trend_margin']:.2f}, flat "
        "within that factor either way.",
        "",
    ]
    if size["name"] != "full":
        lines += [
            f"> This is a `{size['name']}` run: few requests, {n_seeds} seed(s) and coarse "
            "capacity brackets. Capacities near the knee are optimistic (an overload too short "
            "to queue still meets a rule) and intervals are wide. Run `simserve antipatterns` "
            "without `--quick` for numbers to quote.",
            "",
        ]
    lines += [
        "## Summary",
        "",
        "| entry | anti-pattern | unfair evaluator concludes | fair evaluator concludes "
        "| outcome | catalog expectation |",
        "|---|---|---|---|---|---|",
    ]
    for e in verdicts["entries"]:
        lines.append(
            f"| [{e['id']}](#{_anchor(e)}) | {e['title']} | "
            f"{short_verdict(e['unfair']['conclusion'])} "
            f"({e['unfair']['metric_info'][e['unfair']['verdict_metric']]['label']}) | "
            f"{short_verdict(e['fair']['conclusion'])} "
            f"({e['fair']['metric_info'][e['fair']['verdict_metric']]['label']}) | "
            f"**{e['outcome']}** | {'held' if e['as_expected'] else 'not held'} |")
    lines.append("")
    for e in verdicts["entries"]:
        lines += _entry_section(e, n_seeds)
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


def report_writer(verdicts: Mapping[str, Any]) -> Callable[[Path], None]:
    """What fills a report directory: figures/<ID>.png, verdicts.json and report.md."""

    def write(tmp: Path) -> None:
        for entry in verdicts["entries"]:
            save_entry_figure(entry, tmp / entry["figure"])
        (tmp / MARKER).write_text(json.dumps(verdicts, indent=2, allow_nan=False) + "\n")
        (tmp / "report.md").write_text(render_report(verdicts))

    return write


def write_outputs(verdicts: Mapping[str, Any], out: str | Path) -> Path:
    """Write report.md, verdicts.json and figures/<ID>.png atomically into `out` (which must be
    new, empty, or a report simserve wrote with no entry this one lacks)."""
    with claim_output_dir(out, REPORT_DIR) as claim:
        check_keeps_entries(out, [str(e["id"]) for e in verdicts["entries"]])
        return claim.write(report_writer(verdicts))
