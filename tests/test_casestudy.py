"""Speculative-decoding case study: presets, crossover/rule helpers, the test-only `--size tiny`
end to end (report and seven figures written, the report's numbers equal to the runs'
summaries), and `--quick` drawing the full run's conclusions."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from pathlib import Path

import pytest

from simserve.catalog import load_catalog
from simserve.cli import main
from simserve.config import load_scenario
from simserve.experiments.atomic import MARKER
from simserve.experiments.casestudy import (
    BASELINE,
    LOAD_KEY,
    PRESETS,
    RULES,
    SPEC,
    SloTargets,
    crossings,
)
from simserve.experiments.casestudy_figures import FIGURE_FILES
from simserve.experiments.casestudy_report import SWEEP_COLUMNS, _verdicts
from simserve.formatting import fmt_number, round_significant
from simserve.resolve import resolve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_scenarios_load_resolve_and_share_the_tokenizer(name):
    preset = PRESETS[name]
    scenario = load_scenario(preset.path)
    spec = scenario.engine.speculative
    assert spec is not None and spec.method == "draft"
    catalog = load_catalog()
    assert catalog.model(spec.draft_model).vocab_size == catalog.model(scenario.model).vocab_size
    resolved = resolve(scenario)  # vocabulary, KV fit and TP checks
    assert resolved.draft_model is not None
    assert scenario.metrics.slo.ttft_ms and scenario.metrics.slo.tpot_ms
    assert Path(scenario.workload.trace).name == "splitwise_conv.csv"
    assert scenario.workload.arrival.process == "poisson"


def test_70b_preset_is_tp4_on_h100():
    scenario = load_scenario(PRESETS["llama3-70b-4xh100"].path)
    assert (scenario.model, scenario.hardware, scenario.tp) == ("llama-3-70b", "h100-80gb-sxm", 4)


# --------------------------------------------------------------------------- helpers


def test_crossings_interpolate_linearly_and_skip_nan():
    assert crossings([1, 2, 3, 4], [2.0, 1.5, 0.5, 0.8]) == [(2.5, "down")]
    assert crossings([1, 2, 3], [0.5, math.nan, 1.5]) == [(2.0, "up")]
    assert crossings([1, 2, 3], [1.2, 1.0, 0.9]) == [(2.0, "down")]
    assert crossings([1, 2], [1.3, 1.1]) == []


def test_round_significant():
    assert round_significant(8.6135, 3) == 8.61
    assert round_significant(0.43068, 3) == 0.431
    assert round_significant(19.42, 3) == 19.4


def test_verdicts_use_the_no_difference_band():
    assert _verdicts([1.5, 1.01, 0.99, 0.5, math.nan]) == ["better", "same", "same", "worse",
                                                           "n/a"]


def test_rules_read_the_summary():
    t = SloTargets(ttft_ms=2000.0, per_token_ms=40.0)
    good = {"completed": 10, "slo_attainment": 0.95, "p90_ttft_ms": 500.0, "p99_tbt_ms": 30.0,
            "p99_deadline_miss_rate": 0.05, LOAD_KEY: 0.9}
    rules = {r.key: r for r in RULES}
    assert all(r.holds(good, t) for r in RULES)
    assert not rules["ttft_tpot"].holds({**good, "slo_attainment": 0.85}, t)
    assert not rules["ttft_p99_tbt"].holds({**good, "p99_tbt_ms": 41.0}, t)
    assert not rules["ttft_p99_tbt"].holds({**good, "p90_ttft_ms": 2500.0}, t)
    assert not rules["deadline"].holds({**good, "p99_deadline_miss_rate": 0.2}, t)
    assert not rules["deadline"].holds({**good, "p99_deadline_miss_rate": None}, t)
    # Past saturation every rule fails, whatever a short run measured.
    assert not any(r.holds({**good, LOAD_KEY: 1.01}, t) for r in RULES)


# --------------------------------------------------------------------------- tiny end to end


# What the `tiny_run` command printed and the text drawn on each figure it wrote.
TINY_SEEN: dict[str, object] = {}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from matplotlib.text import Text

    import simserve.plots

    save = simserve.plots.save_figure

    def save_and_read(fig, path, **kwargs):
        written = save(fig, path, **kwargs)  # ticks are labelled when the figure is drawn
        TINY_SEEN[Path(path).stem] = [t.get_text() for t in fig.findobj(Text)]
        return written

    out = tmp_path_factory.mktemp("casestudy") / "specdec"
    console = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(console):
        patch.setattr(simserve.plots, "save_figure", save_and_read)  # the writer's import
        assert main(["casestudy", "specdec", "--size", "tiny", "--out", str(out)]) == 0
    TINY_SEEN["console"] = console.getvalue()
    return out


def _table_rows(report: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header starts with `first_header`."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _close(printed: str, value: object) -> bool:
    """Whether a cell printed by `formatting.fmt_number` (4 significant digits, whole numbers
    with separators from 1,000) matches a summary value ('n/a' for None)."""
    if value is None:
        return printed == "n/a"
    return math.isclose(float(printed.replace(",", "")), float(value), rel_tol=6e-4,
                        abs_tol=0.5 if abs(float(value)) >= 1000 else 1e-12)


def test_tiny_writes_report_and_seven_figures(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"report.md", "summaries.json", "results.json", "scenario.yaml"} <= names
    for stem in FIGURE_FILES:
        png = tiny_run / f"{stem}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, stem
        assert f"]({stem}.png)" in (tiny_run / "report.md").read_text()
    assert len(FIGURE_FILES) == 7
    # No temporary directories left; the marker lists what simserve wrote.
    assert [n for n in names if n.startswith(".")] == [MARKER]


def test_tiny_report_numbers_match_the_run_summaries(tiny_run):
    report = (tiny_run / "report.md").read_text()
    records = json.loads((tiny_run / "summaries.json").read_text())
    results = json.loads((tiny_run / "results.json").read_text())
    sweep = {(r["system"], r["rate"]): r for r in records if r["purpose"] == "sweep"}
    rates = results["rates"]
    rows = _table_rows(report, "rate (req/s) | system")
    assert len(rows) == 2 * len(rates)
    for row in rows:
        rate = float(row[0].rstrip(" †"))
        record = sweep[(row[1], rate)]
        for (_header, key), cell in zip(SWEEP_COLUMNS, row[2:], strict=False):
            assert _close(cell, record["summary"][key]), (row[1], rate, key, cell)
        assert _close(row[-1], record["mean_batch"])
    # Speedups in the report and in results.json are the runs' mean-E2EL ratios.
    ratio_rows = _table_rows(report, "rate (req/s) | speedup")
    for rate, row, speedup in zip(rates, ratio_rows, results["speedup_mean_e2el"][SPEC],
                                  strict=True):
        expected = (sweep[(BASELINE, rate)]["summary"]["mean_e2el_ms"]
                    / sweep[(SPEC, rate)]["summary"]["mean_e2el_ms"])
        assert speedup == pytest.approx(expected)
        assert row[1] == f"{expected:.2f}x"
    # Saturation throughputs quoted in the report are the offline runs'.
    saturation = [r for r in records if r["purpose"] == "saturation"]
    # Every system's saturation is measured (the variants' mark their overloaded points).
    assert {r["system"] for r in saturation} == {BASELINE, SPEC, *results["speedup_mean_e2el"]}
    for r in (r for r in saturation if r["system"] in (BASELINE, SPEC)):
        assert f"{r['system']} {fmt_number(r['steady_throughput'], 'req/s')}" in report
        assert fmt_number(r["summary"]["request_throughput"]) in report
        assert results["saturation_throughput"][r["system"]] == r["steady_throughput"]
    # Every capacity in results.json is printed, and equals a rate that met the rule.
    cap_rows = {row[0]: row for row in _table_rows(report, "rule | meets")}
    runs = {(r["system"], r["rate"]): r["summary"] for r in records if r["rate"] is not None}
    targets = SloTargets(**{
        "ttft_ms": results["targets"]["ttft_ms"],
        "per_token_ms": results["targets"]["per_token_ms"],
    })
    for rule in RULES:
        row = cap_rows[rule.label]
        for col, system in ((2, BASELINE), (3, SPEC)):
            cap = results["capacities"][rule.key][system]
            assert fmt_number(cap["value"]) in row[col] or cap["status"] == "below_range"
            if cap["value"] > 0:
                assert rule.holds(runs[(system, cap["value"])], targets)
            if cap["upper"] is not None and not cap["load_limited"]:
                assert not rule.holds(runs[(system, cap["upper"])], targets)
            if cap["load_limited"]:  # failed by the overload guard, without a run
                assert cap["upper"] == results["saturation_throughput"][system]


def test_a_capacity_reads_the_same_in_the_report_the_figure_and_the_console(tiny_run):
    # One formatter: fig7's bar labels, the report's capacity table and the console headline
    # print each capacity alike.
    results = json.loads((tiny_run / "results.json").read_text())
    rows = {row[0]: row for row in _table_rows((tiny_run / "report.md").read_text(),
                                               "rule | meets")}
    console, bars = TINY_SEEN["console"], TINY_SEEN["fig7_capacity"]
    for rule in RULES:
        caps = results["capacities"][rule.key]
        texts = [fmt_number(caps[system]["value"]) for system in (BASELINE, SPEC)]
        assert f"{rule.label}: {texts[0]} vs {texts[1]}" in console
        for col, system, text in ((2, BASELINE, texts[0]), (3, SPEC, texts[1])):
            if caps[system]["status"] != "below_range":
                assert re.match(rf"(>= )?{re.escape(text)}( |$)", rows[rule.label][col]), text
                assert text in bars, (rule.key, system, text)


def test_tiny_uses_common_random_numbers(tiny_run):
    records = json.loads((tiny_run / "summaries.json").read_text())
    scenario_seed = json.loads((tiny_run / "results.json").read_text())["seed"]
    report = (tiny_run / "report.md").read_text()
    assert re.search(rf"\| seed \| {scenario_seed} for every run", report)
    by_rate: dict[float, list[dict]] = {}
    for r in records:
        if r["purpose"] == "sweep":
            by_rate.setdefault(r["rate"], []).append(r["summary"])
    for summaries in by_rate.values():
        # Same seed, same requests: both systems measure the same prompts.
        assert len({s["total_input_tokens"] for s in summaries}) == 1
        assert len({s["seed"] for s in summaries}) == 1


def test_tiny_report_states_a_conclusion_per_metric_family(tiny_run):
    report = (tiny_run / "report.md").read_text()
    for heading in ("### Naive view", "### TBT view", "### Deadline view",
                    "### Speedup and crossover", "## Capacity under three SLO rules"):
        assert heading in report
    assert report.count("Conclusion") >= 3
    assert "Crossover: the mean-E2EL speedup of spec" in report


def test_no_capacity_verdict_rests_on_a_censored_capacity(tiny_run):
    from types import SimpleNamespace

    from simserve.experiments.casestudy import CapacityEstimate, SpecDecStudy
    from simserve.experiments.casestudy_report import _capacity_section

    # In the run: a rule row that names the system with the higher capacity has both
    # capacities bounded (a rate that met the rule and a higher one that failed).
    report = (tiny_run / "report.md").read_text()
    caps = json.loads((tiny_run / "results.json").read_text())["capacities"]
    rows = {row[0]: row[-1] for row in _table_rows(report, "rule")}
    for rule in RULES:
        if rows[rule.label] in (BASELINE, SPEC):
            assert caps[rule.key][BASELINE]["bounded"] and caps[rule.key][SPEC]["bounded"]
    # By construction: a censored capacity (every rate tried passed) decides nothing.
    bounded = CapacityEstimate(6.0, 6.3, "ok", 5, 0.02)
    censored = CapacityEstimate(9.0, None, "above_range", 5, 0.02, bounded=False)
    study = SimpleNamespace(
        targets=SloTargets(ttft_ms=2000.0, per_token_ms=40.0),
        plan=SimpleNamespace(capacity_tolerance=0.02, capacity_max_probes=12),
        capacities={rule.key: {BASELINE: bounded, SPEC: censored if i == 0 else bounded}
                    for i, rule in enumerate(RULES)})
    study.capacity_winner = lambda key: SpecDecStudy.capacity_winner(study, key)
    lines = _capacity_section(study)
    first = next(line for line in lines if line.startswith(f"| {RULES[0].label} |"))
    assert first.endswith("| could not be decided (a censored capacity is only a bound) |")
    assert ">= 9 (every rate tried passed: censored)" in first
    others = [line for line in lines if line.startswith(f"| {RULES[1].label} |")]
    assert others and others[0].endswith("| tie (within the search tolerance) |")


def test_bad_preset_and_foreign_out_dir_are_input_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["casestudy", "specdec", "--preset", "nope"])
    assert exc.value.code == 2
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["casestudy", "specdec", "--quick", "--out", str(foreign)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"
    code = main(["casestudy", "specdec", "--quick", "--out", str(tmp_path / "new"),
                 "--set", "engine.speculative=null"])
    assert code == 2
    assert "engine.speculative" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_tiny_is_the_same_with_one_worker(tiny_run, tmp_path):
    # The fixture ran on every core; one worker in this process gives the same bytes.
    out = tmp_path / "one"
    assert main(["casestudy", "specdec", "--size", "tiny", "--jobs", "1", "--out",
                 str(out)]) == 0
    for name in ("summaries.json", "results.json", "report.md"):
        assert (out / name).read_bytes() == (tiny_run / name).read_bytes(), name


# --------------------------------------------------------------------------- quick vs full

# The full run's conclusions on the default preset (regenerate with SIMSERVE_UPDATE_GOLDEN=1,
# which runs the full case study, about a minute on two cores).
FULL_CONCLUSIONS = Path(__file__).parent / "golden" / "casestudy-specdec-full.conclusions.json"


def _conclusions(out: Path, *flags: str) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["casestudy", "specdec", *flags, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())["conclusions"]


def test_quick_draws_the_full_runs_conclusions(tmp_path):
    """`--quick` may lose precision but never a conclusion: who is faster at low load, where
    the speedup crosses 1, who carries more load under each rule. Coarser plans failed this
    (rates 0.85 -> 0.95 of saturation missed a crossover the full run found between 0.85 and
    0.9)."""
    if os.environ.get("SIMSERVE_UPDATE_GOLDEN") == "1":
        FULL_CONCLUSIONS.write_text(json.dumps(_conclusions(tmp_path / "full"), indent=1,
                                               sort_keys=True) + "\n")
    full = json.loads(FULL_CONCLUSIONS.read_text())
    assert full["faster_at_lowest_rate"] == SPEC
    assert _conclusions(tmp_path / "quick", "--quick") == full
