"""Anti-pattern catalog: conclusion rules, catalog structure, a tiny run of every entry, the
report and figures written from verdicts.json, and the `antipatterns` command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
from test_sweep_resume import ROOT, _alive, _children

from simserve.antipatterns.catalog import CATALOG, SCENARIOS_DIR, SIZES, get_entries
from simserve.antipatterns.items import CHECKLIST
from simserve.antipatterns.model import (
    CHANGE_MARGIN,
    METRICS,
    OUTCOMES,
    TIE_MARGIN,
    Capacity,
    Conclusion,
    Entry,
    Metric,
    Point,
    Setup,
    Sweep,
    advantage,
    capacity_metric,
    classify,
    classify_trend,
    conclude,
    trend,
)
from simserve.antipatterns.report import fmt_value, render_report, write_outputs
from simserve.antipatterns.runner import CatalogRunner, ratio_ci, seed_values
from simserve.cli import main
from simserve.config import load_scenario
from simserve.errors import InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOWER = Metric("p99_tbt_ms", "P99 TBT", "ms", "lower")
HIGHER = Metric("capacity_rps", "capacity", "req/s", "higher")


# --------------------------------------------------------------------------- conclusion rules


def test_advantage_is_oriented_by_direction():
    assert advantage(LOWER, 50.0, 100.0) == pytest.approx(2.0)  # candidate lower: better
    assert advantage(HIGHER, 50.0, 100.0) == pytest.approx(0.5)  # candidate lower: worse
    assert advantage(LOWER, 0.0, 10.0) == math.inf
    assert advantage(LOWER, 0.0, 0.0) is None
    assert advantage(LOWER, None, 1.0) is None
    assert advantage(LOWER, math.nan, 1.0) is None


def test_conclude_names_the_winner_and_the_ratio():
    c = conclude(LOWER, "chunked", "pf", 50.0, 150.0, where="at 3 req/s")
    assert c.winner == "chunked"
    assert c.ratio == pytest.approx(3.0)
    assert c.text.startswith("chunked is 3.00x better than pf on P99 TBT at 3 req/s")
    flipped = conclude(HIGHER, "chunked", "pf", 5.0, 10.0)
    assert flipped.winner == "pf"
    assert "pf is 2.00x better than chunked" in flipped.text


def test_conclude_reports_no_clear_winner_inside_the_tie_band():
    inside = conclude(LOWER, "a", "b", 100.0, 100.0 * (1 + TIE_MARGIN * 0.9))
    assert inside.winner is None and inside.text.startswith("no clear winner")
    outside = conclude(LOWER, "a", "b", 100.0, 100.0 * (1 + TIE_MARGIN * 1.1))
    assert outside.winner == "a"


def test_conclude_without_numbers_gives_no_verdict():
    c = conclude(LOWER, "a", "b", None, 3.0)
    assert c.ratio is None and c.winner is None and c.text.startswith("no verdict")


def _c(ratio: float | None, tie: float = TIE_MARGIN) -> Conclusion:
    """A conclusion with the given candidate advantage."""
    if ratio is None:
        return conclude(HIGHER, "a", "b", None, 1.0)
    if math.isinf(ratio):
        return conclude(HIGHER, "a", "b", 1.0, 0.0)  # the baseline fails entirely
    return conclude(HIGHER, "a", "b", ratio, 1.0, tie_margin=tie)


@pytest.mark.parametrize(
    ("unfair", "fair", "expected"),
    [
        (1.5, 0.6, "flipped"),  # a wins, then b wins
        (0.5, 2.0, "flipped"),
        (3.4, 1.1, "shrank"),
        (1.5, 1.02, "shrank"),  # clear winner -> no clear winner
        (1.02, 2.0, "grew"),  # no clear winner -> clear winner
        (1.1, 1.12, "unchanged"),
        (1.02, 0.98, "unchanged"),  # both ties: no winner named, no flip
        (2.0, 2.0 * (1 + CHANGE_MARGIN) * 1.01, "grew"),
        (2.0, 2.0 * (1 + CHANGE_MARGIN) * 0.99, "unchanged"),
        (math.inf, 2.0, "shrank"),
        (None, 2.0, "undetermined"),
    ],
)
def test_classify(unfair, fair, expected):
    assert classify(_c(unfair), _c(fair)) == expected


def test_trend_is_measured_per_doubling():
    xs = [100, 200, 400, 800]
    assert trend(xs, [1.0, 2.0, 4.0, 8.0]) == ("increasing", pytest.approx(2.0))
    assert trend(xs, [1.0, 1.05, 1.1, 1.3])[0] == "flat"  # x1.09 per doubling
    assert trend(xs, [8.0, 4.0, 2.0, 1.0])[0] == "decreasing"
    assert trend(xs, [1.0, None, None, None])[0] == "undetermined"
    assert trend([1, 1], [1.0, 2.0])[0] == "undetermined"


def test_seed_values_are_geometric_means_with_log_scale_intervals():
    found = seed_values(LOWER, [1.0, 2.0, 4.0])
    assert found["value"] == pytest.approx(2.0) and found["estimator"] == "geometric mean"
    # t(0.975, 2) = 4.302653; the logs have sd ln 2, so the interval is 2 x/÷ 2^(4.3027/√3).
    factor = 2.0 ** (4.302653 / math.sqrt(3.0))
    assert found["ci"] == pytest.approx([2.0 / factor, 2.0 * factor], rel=1e-5)
    assert seed_values(LOWER, [5.0])["ci"] is None
    assert seed_values(LOWER, [1.0, None])["value"] is None


def test_classify_trend_compares_the_size_of_the_dependence():
    assert classify_trend(2.0, 1.02) == "shrank"
    assert classify_trend(1.02, 2.0) == "grew"
    assert classify_trend(1.9, 2.0) == "unchanged"
    assert classify_trend(0.5, 1.0) == "shrank"  # a fall per doubling is a dependence too
    assert classify_trend(None, 1.0) == "undetermined"


def test_ratio_ci_pairs_seeds():
    ci = ratio_ci(LOWER, [50.0, 50.0, 50.0], [100.0, 100.0, 100.0])
    assert ci == pytest.approx((2.0, 2.0))
    lo, hi = ratio_ci(LOWER, [50.0, 40.0], [100.0, 100.0])
    assert lo < 2.0 < hi
    assert ratio_ci(LOWER, [1.0], [2.0]) is None


def test_capacity_per_gpu_metric():
    per_gpu = capacity_metric("attainment:0.9", per_gpu=True)
    assert per_gpu.key == "capacity_per_gpu_rps" and per_gpu.better == "higher"
    assert per_gpu.format(15.649) == "15.65 req/s per GPU"
    assert "Etalon: P99 deadline" in capacity_metric("etalon").label  # the rule in words
    assert capacity_metric("attainment:0.9").key == "capacity_rps"
    # 60 req/s on 3 GPUs beats 47 req/s on 3 GPUs by the same ratio per GPU as in total.
    assert advantage(per_gpu, 60.0 / 3, 47.0 / 3) == pytest.approx(60.0 / 47.0)
    with pytest.raises(ValueError, match="capacity measurement"):
        Setup("s", Capacity("sarathi"), METRICS["p99_ttft_ms"])


def test_capacity_per_gpu_is_read_from_the_capacity_record():
    from simserve.antipatterns.runner import _cap_value

    record = {"status": "ok", "capacity_rps": 60.0, "num_gpus": 3, "capacity_per_gpu_rps": 20.0,
              "bounded": True}
    assert _cap_value(record) == 60.0
    assert _cap_value(record, "capacity_per_gpu_rps") == 20.0
    # A censored capacity (only a bound) has no value a verdict could use.
    censored = {**record, "status": "above_range", "bounded": False}
    assert _cap_value(censored, "capacity_per_gpu_rps") is None
    with pytest.raises(ValueError):
        _cap_value(record, "p99_ttft_ms")


def test_metric_validation_and_format():
    with pytest.raises(ValueError):
        Metric("x", "x", "", "sideways")  # type: ignore[arg-type]
    assert METRICS["p99_tbt_ms"].format(53.456) == "53.46 ms"
    assert METRICS["p99_tbt_ms"].format(123.44) == "123.4 ms"
    assert capacity_metric("sarathi").better == "higher"
    assert fmt_value(1234.5, "ms") == "1,234 ms" or fmt_value(1234.5, "ms") == "1,235 ms"
    assert fmt_value(None) == "n/a" and fmt_value("inf") == "unbounded"


# --------------------------------------------------------------------------- catalog


def test_catalog_has_every_design_entry_once():
    ids = [e.id for e in CATALOG]
    assert ids == ["BF1", "BF2", "BF3", "ES1", "ES2", "ES3", "ES4", "MD1", "MD2", "MD3", "MD4",
                   "MD5"]
    for e in CATALOG:
        assert e.description.endswith(".") and len(e.description) < 200
        assert set(e.expected) <= set(OUTCOMES) and e.expected


def test_every_entry_names_a_checklist_item():
    assert list(CHECKLIST) == [f"C{i}" for i in range(1, 16)]
    for e in CATALOG:
        assert e.checklist and set(e.checklist) <= set(CHECKLIST), e.id
    with pytest.raises(ValueError, match="checklist"):
        dataclasses.replace(CATALOG[0], checklist=())
    with pytest.raises(ValueError, match="checklist"):
        dataclasses.replace(CATALOG[0], checklist=("C99",))


@pytest.mark.parametrize("entry", CATALOG, ids=lambda e: e.id)
def test_every_setup_and_system_builds_a_valid_scenario(entry):
    for setup in (entry.unfair, entry.fair):
        for system, overrides in entry.systems.items():
            options = setup.tuning.get(system) or ((),)
            for option in options:
                scenario = load_scenario(SCENARIOS_DIR / entry.base, [
                    *setup.overrides, *overrides, *setup.system_overrides.get(system, ()),
                    *option])
                assert scenario.workload.arrival.process in ("poisson", "gamma")


def test_entry_validation_refuses_unknown_systems():
    entry = CATALOG[0]
    with pytest.raises(ValueError, match="not in systems"):
        dataclasses.replace(entry, candidate="nope")
    with pytest.raises(ValueError, match="unknown expected outcome"):
        dataclasses.replace(entry, expected=("maybe",))
    with pytest.raises(ValueError):
        Capacity("sarathi", low=1.5)
    with pytest.raises(ValueError):
        Sweep(points=(Point(0.5),), axis="load")


def test_get_entries_filters_and_refuses_unknown_ids():
    assert [e.id for e in get_entries(["md1", "BF1"])] == ["BF1", "MD1"]
    with pytest.raises(InputError, match="XX9"):
        get_entries(["XX9"])


# --------------------------------------------------------------------------- tiny run


@pytest.fixture(scope="module")
def tiny_verdicts():
    """The whole catalog at the test-only `tiny` size, in this process."""
    with CatalogRunner(SIZES["tiny"], jobs=1) as runner:
        entries = [runner.run_entry(e) for e in CATALOG]
        meta = runner.metadata()
        num_runs = runner.num_runs
    return {"simserve_version": "test", "command": "simserve antipatterns --size=tiny",
            **meta, "num_runs": num_runs, "wall_s": 0.0, "entries": entries}


def test_every_entry_produces_a_verdict(tiny_verdicts):
    assert [e["id"] for e in tiny_verdicts["entries"]] == [e.id for e in CATALOG]
    for e in tiny_verdicts["entries"]:
        assert e["outcome"] in OUTCOMES
        assert isinstance(e["as_expected"], bool)
        for key in ("unfair", "fair"):
            c = e[key]["conclusion"]
            assert c["text"] and c["metric"] == e[key]["verdict_metric"]
            assert c["ratio"] is not None or c["text"].startswith("could not be decided"), (
                e["id"], key, c["text"])
            assert e[key]["saturation_rps"] > 0
        assert e["change"].endswith(".")
        assert e["checklist"] == list(next(x for x in CATALOG if x.id == e["id"]).checklist)
    json.dumps(tiny_verdicts, allow_nan=False)  # verdicts.json is strict JSON


def test_seeds_are_fixed_and_shared_by_both_systems(tiny_verdicts):
    from simserve.experiments.capacity import replication_seeds

    assert tiny_verdicts["seeds"] == replication_seeds(0, SIZES["tiny"].seeds)
    md1 = next(e for e in tiny_verdicts["entries"] if e["id"] == "MD1")
    # Both setups of MD1 report from the same runs: the same rate and request count.
    for key in ("unfair", "fair"):
        points = [s["point"] for s in md1[key]["systems"].values()]
        assert len({(p["rate_rps"], p["num_requests"]) for p in points}) == 1


def test_md5_judges_goodput_per_gpu_at_equal_gpu_count(tiny_verdicts):
    md5 = next(e for e in tiny_verdicts["entries"] if e["id"] == "MD5")
    assert md5["unfair"]["verdict_metric"] == "mean_ttft_ms"
    fair = md5["fair"]
    assert fair["verdict_metric"] == "capacity_per_gpu_rps"
    caps = {name: record["capacity"] for name, record in fair["systems"].items()}
    assert {cap["num_gpus"] for cap in caps.values()} == {3}  # the same GPUs, placed differently
    conclusion = fair["conclusion"]
    for name, key in ((md5["candidate"], "candidate_value"), (md5["baseline"], "baseline_value")):
        cap = caps[name]
        expected = cap["capacity_rps"] / 3 if cap["bounded"] else None
        assert conclusion[key] == pytest.approx(expected)
    assert "req/s per GPU" in render_report(tiny_verdicts)


def test_report_and_figures_are_rendered_from_verdicts(tiny_verdicts, tmp_path):
    out = write_outputs(tiny_verdicts, tmp_path / "ap")
    report = (out / "report.md").read_text()
    data = json.loads((out / "verdicts.json").read_text())
    assert data == json.loads(json.dumps(tiny_verdicts))
    for e in data["entries"]:
        assert f"## {e['id']} · {e['title']}" in report
        assert (out / e["figure"]).read_bytes()[:8] == PNG_MAGIC
        for key in ("unfair", "fair"):
            assert e[key]["conclusion"]["text"] in report
        assert f"**Outcome: {e['outcome']}**" in report
        checklist = report.split("## The evaluation checklist")[1]
        assert f"[{e['id']}](#{e['id'].lower()}" in checklist  # every entry is in the table
    assert "Seeds " + str(data["seeds"][0]) in report
    assert not list(tmp_path.glob(".ap.tmp-*"))  # nothing half-written left behind


def test_report_numbers_are_the_verdicts_numbers(tiny_verdicts):
    report = render_report(tiny_verdicts)
    for e in tiny_verdicts["entries"]:
        for key in ("unfair", "fair"):
            setup = e[key]
            if setup["measure"]["kind"] != "point":
                continue
            unit = setup["metric_info"][setup["verdict_metric"]]["unit"]
            for record in setup["systems"].values():
                value = record["point"]["values"][setup["verdict_metric"]]["value"]
                assert fmt_value(value, unit) in report


def test_an_entry_without_a_difference_says_so():
    """Two identical systems: the conclusion comes from the numbers, not from the entry's text."""
    base = next(e for e in CATALOG if e.id == "MD1")
    same = ("engine.policy=chunked_prefill",)
    entry = dataclasses.replace(
        base, id="XX1", systems={"a": same, "b": same}, candidate="a", baseline="b",
        unfair=dataclasses.replace(base.unfair, measure=Point(0.3)),
        fair=dataclasses.replace(base.fair, measure=Point(0.3)))
    with CatalogRunner(SIZES["tiny"], jobs=1) as runner:
        result = runner.run_entry(entry)
    assert result["unfair"]["conclusion"]["winner"] is None
    assert result["fair"]["conclusion"]["winner"] is None
    assert result["outcome"] == "unchanged"
    assert not result["as_expected"]
    assert "no clear winner" in result["fair"]["conclusion"]["text"]


def test_tuning_keeps_the_best_option():
    entry = Entry(
        id="XX2", dimension="baseline fairness", title="t", description="d.",
        base="llama3-8b-h100-conv.yaml",
        systems={"a": ("engine.policy=chunked_prefill",), "b": ("engine.policy=chunked_prefill",)},
        candidate="a", baseline="b",
        unfair=Setup("u", Point(0.5), METRICS["mean_e2el_ms"]),
        fair=Setup("f", Point(0.5), METRICS["mean_e2el_ms"], tuning={
            "b": (("cost_model.serving_step_ms=20",), ("cost_model.serving_step_ms=1",))}),
        expected=("unchanged",), expected_text="x", checklist=("C2",))
    with CatalogRunner(SIZES["tiny"], jobs=1) as runner:
        result = runner.run_entry(entry)
    tuning = result["fair"]["systems"]["b"]["tuning"]
    assert tuning["chosen"] == ["cost_model.serving_step_ms=1"]
    values = [o["value"] for o in tuning["options"]]
    assert values[1] < values[0]


_INTERVAL = re.compile(r"(?:95% CI|bisection bracket) (-?[\d,.]+)x?–(-?[\d,.]+)x?")


def _printed_intervals(text: str) -> list[tuple[float, float]]:
    return [(float(a.replace(",", "")), float(b.replace(",", "")))
            for a, b in _INTERVAL.findall(text)]


def test_no_printed_interval_of_a_positive_quantity_goes_below_zero(tiny_verdicts):
    # Every quantity the catalog prints an interval for (latencies, throughputs, rates, ratios)
    # is positive: no printed interval may reach below zero, even from two wildly different
    # seeds (the 2-seed t-interval of 4,938 ms once printed "95% CI -433.4-10,310 ms").
    spread = seed_values(METRICS["mean_e2el_ms"], [1200.0, 8676.0])
    assert 0 < spread["ci"][0] < spread["value"] < spread["ci"][1]
    report = render_report(tiny_verdicts)
    intervals = _printed_intervals(report)
    assert len(intervals) > 20  # the report prints intervals for points and for every verdict
    assert all(0 <= low <= high for low, high in intervals), intervals


def test_no_verdict_rests_on_a_censored_capacity(tiny_verdicts):
    from simserve.antipatterns.runner import _conclusion

    # In the run: every capacity verdict that names a ratio has both capacities bounded.
    for e in tiny_verdicts["entries"]:
        for key in ("unfair", "fair"):
            setup = e[key]
            if setup["measure"]["kind"] != "capacity" or setup["conclusion"]["ratio"] is None:
                continue
            for name in (e["candidate"], e["baseline"]):
                assert setup["systems"][name]["capacity"]["bounded"], (e["id"], key, name)
    # And by construction: a censored capacity gives "could not be decided", with the reason.
    entry = next(x for x in CATALOG if x.id == "BF3")
    cap = {"rule": "sarathi", "capacity_rps": 6.0, "high_rps": 6.3, "status": "ok",
           "bounded": True, "num_gpus": 1, "capacity_per_gpu_rps": 6.0}
    censored = {**cap, "capacity_rps": 9.0, "high_rps": None, "status": "above_range",
                "bounded": False}
    systems = {entry.candidate: {"capacity": censored}, entry.baseline: {"capacity": cap}}
    conclusion, _ = _conclusion(entry, entry.fair, systems)
    assert conclusion.ratio is None and conclusion.winner is None
    assert conclusion.text.startswith("could not be decided")
    assert "at least 9 req/s" in conclusion.text
    unfair = conclude(HIGHER, "a", "b", 2.0, 1.0)
    assert classify(unfair, conclusion) == "undetermined"


def test_sweep_verdicts_are_read_at_steady_points(tiny_verdicts):
    # A sweep point at or above a system's saturation is marked overloaded; a verdict read at
    # the worst or last point is read among the points where neither system is overloaded.
    for e in tiny_verdicts["entries"]:
        for key in ("unfair", "fair"):
            setup = e[key]
            if setup["measure"]["kind"] != "sweep":
                continue
            pairs = list(zip(setup["systems"][e["candidate"]]["sweep"],
                             setup["systems"][e["baseline"]]["sweep"], strict=True))
            for a, b in pairs:
                for p in (a, b):
                    sat = p["saturation_rps"]
                    assert p["overloaded"] == (sat is not None and p["rate_rps"] >= sat)
            index = next(p["index"] for p in setup["per_point"] if p["summary"])
            steady = [i for i, (a, b) in enumerate(pairs)
                      if not (a["overloaded"] or b["overloaded"])]
            if setup["measure"]["summary"] != "first" and steady:
                assert index in steady, (e["id"], key)


def test_es3_states_its_outcome_on_the_run_length_dependence(tiny_verdicts):
    from simserve.antipatterns.runner import _dependence

    es3 = next(e for e in tiny_verdicts["entries"] if e["id"] == "ES3")
    assert es3["outcome_on"] == "trend"
    assert es3["outcome"] == classify_trend(_dependence(es3["unfair"]), _dependence(es3["fair"]))
    assert "dependence of P99 TTFT on the run length" in es3["change"]
    assert "per doubling of the run" in render_report(tiny_verdicts)


# --------------------------------------------------------------------------- CLI


def test_cli_runs_one_entry_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "ap"
    code = main(["antipatterns", "--size", "tiny", "--only", "MD1", "--jobs", "1",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert re.search(r"^MD1 \w+ +unfair: .*; fair: ", printed, re.M)
    assert (out / "report.md").exists() and (out / "figures" / "MD1.png").exists()
    data = json.loads((out / "verdicts.json").read_text())
    assert [e["id"] for e in data["entries"]] == ["MD1"]
    assert "--only MD1" in data["command"]
    # Rerunning into the same directory replaces the earlier report.
    assert main(["antipatterns", "--size", "tiny", "--only", "MD1", "--jobs", "1",
                 "--out", str(out)]) == 0


def _figure_texts(fig) -> list[str]:
    """Every piece of text drawn on a figure (titles, labels, annotations, legends, ticks)."""
    from matplotlib.text import Text

    fig.canvas.draw()  # tick labels are decided when the figure is drawn
    return [t.get_text() for t in fig.findobj(Text)]


def _shows(text: str, number: str) -> bool:
    """Whether `number` is printed in `text` as a whole number, not as part of another."""
    return re.search(rf"(?<![\d.,]){re.escape(number)}(?![\d]|[.,]\d)", text) is not None


def test_a_number_reads_the_same_in_the_report_the_figure_and_the_console(tmp_path, capsys):
    # The defect: P99 TBT 123.44 ms was "123.4 ms" in the report and "123" on its figure.
    from simserve.antipatterns.figures import entry_figure
    from simserve.formatting import fmt_number, fmt_ratio

    out = tmp_path / "ap"
    assert main(["antipatterns", "--size", "tiny", "--only", "MD1", "--jobs", "1",
                 "--out", str(out)]) == 0
    console = capsys.readouterr().out
    report = (out / "report.md").read_text()
    entry = json.loads((out / "verdicts.json").read_text())["entries"][0]
    figure = _figure_texts(entry_figure(entry))
    checked = 0
    for key in ("unfair", "fair"):
        setup = entry[key]
        metric = setup["verdict_metric"]
        for name, record in setup["systems"].items():
            if "point" in record:  # each system's number: its bar's label and a table cell
                value = fmt_number(record["point"]["values"][metric]["value"])
                assert value in figure and _shows(report, value), (key, name, value)
                checked += 1
        ratio = setup["conclusion"]["ratio"]
        if isinstance(ratio, float):  # the candidate's advantage: verdict panel and table
            text = fmt_ratio(ratio)
            assert any(t.split(" (")[0] == text for t in figure), (key, text)
            assert _shows(report, text), (key, text)
            if setup["conclusion"]["winner"] is not None:  # the console says it as a magnitude
                assert _shows(console, fmt_ratio(max(ratio, 1 / ratio)))
            checked += 1
    assert checked >= 4


def test_a_partial_run_never_replaces_a_full_report(tiny_verdicts, tmp_path, monkeypatch,
                                                     capsys):
    # The defect: `--only X` silently overwrote the full report in the default directory.
    full = write_outputs(tiny_verdicts, tmp_path / "full")
    before = (full / "verdicts.json").read_text()
    code = main(["antipatterns", "--size", "tiny", "--only", "BF1", "--jobs", "1",
                 "--out", str(full)])
    err = capsys.readouterr().err
    assert code == 2 and "would drop" in err and err.count("simserve: error") == 1
    assert (full / "verdicts.json").read_text() == before
    # By default a partial run writes its own directory beside the full one.
    monkeypatch.chdir(tmp_path)
    assert main(["antipatterns", "--size", "tiny", "--only", "BF1", "MD1", "--jobs", "1"]) == 0
    assert (tmp_path / "runs" / "antipatterns-tiny-only-BF1-MD1" / "report.md").is_file()
    assert not (tmp_path / "runs" / "antipatterns-tiny").exists()


def test_cli_refuses_bad_arguments_before_running(tmp_path, capsys):
    assert main(["antipatterns", "--only", "ZZ1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--only" in err and "ZZ1" in err and len(err.strip().splitlines()) == 1
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    assert main(["antipatterns", "--size", "tiny", "--out", str(occupied)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (occupied / "notes.txt").read_text() == "mine"
    assert main(["antipatterns", "--jobs", "0", "--out", str(tmp_path / "y")]) == 2


def test_catalog_is_the_same_with_two_workers(tiny_verdicts):
    """Every entry at once over a pool of two processes: the same verdicts as one run after
    the other in this process (only the wall-clock times differ)."""
    with CatalogRunner(SIZES["tiny"], jobs=2) as runner:
        entries = runner.run_entries(CATALOG)
        assert runner.num_runs == tiny_verdicts["num_runs"]

    def strip(entry: dict) -> dict:
        return {k: v for k, v in entry.items() if k != "wall_s"}

    assert [strip(e) for e in entries] == [strip(e) for e in tiny_verdicts["entries"]]


BUSY_POOL = """
import os, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from simserve.experiments.backends import init_worker
if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(os.getpid(),))
    futures = [pool.submit(time.sleep, 120) for _ in range(2)]
    time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_busy_workers_die_with_their_parent(tmp_path):
    """A worker in the middle of a long run exits within about a second of its parent's
    SIGKILL (the pool's queue closing only stops idle workers)."""
    script = tmp_path / "busy.py"
    script.write_text(BUSY_POOL)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while len(workers := _children(proc.pid)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no workers started"
        time.sleep(0.05)
    time.sleep(1.0)  # both now sleeping in their task
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_sigterm_stops_a_running_catalog_promptly(tmp_path):
    """SIGTERM (or Ctrl-C) kills the pool's workers first, so the driver threads waiting on
    their runs fail at once: the catalog exits in seconds, not when its work is done."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "simserve", "antipatterns", "--quick", "--jobs", "2",
         "--out", str(tmp_path / "out")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(workers := _children(proc.pid)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no workers started"
        time.sleep(0.05)
    time.sleep(1.0)  # runs in progress
    proc.terminate()
    _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 143 and "simserve: terminated" in err
    # A killed worker's exit is asynchronous: allow it a moment to be gone.
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- quick vs full

# The full catalog's conclusions at the default seed (regenerate with SIMSERVE_UPDATE_GOLDEN=1,
# which runs the full catalog, about a minute and a half on two cores).
FULL_OUTCOMES = ROOT / "tests" / "golden" / "antipatterns-full.outcomes.json"


def _catalog_outcomes(out, *flags: str) -> dict[str, str]:
    subprocess.run([sys.executable, "-m", "simserve", "antipatterns", *flags, "--jobs", "2",
                    "--out", str(out)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    verdicts = json.loads((out / "verdicts.json").read_text())
    return {e["id"]: e["outcome"] for e in verdicts["entries"]}


def test_quick_draws_every_conclusion_of_the_full_catalog(tmp_path):
    """`--quick` may lose precision but never a conclusion: each entry's outcome (flipped,
    shrank, grew, unchanged) is the full catalog's. Shorter runs failed this (at 300 requests
    ES1, ES4 and MD3 came out differently)."""
    if os.environ.get("SIMSERVE_UPDATE_GOLDEN") == "1":
        FULL_OUTCOMES.write_text(json.dumps(_catalog_outcomes(tmp_path / "full"), indent=1,
                                            sort_keys=True) + "\n")
    full = json.loads(FULL_OUTCOMES.read_text())
    assert list(full) == sorted(e.id for e in CATALOG)
    # The full catalog (what `make run` shows) concludes as every entry expects.
    assert {e.id: full[e.id] for e in CATALOG if full[e.id] not in e.expected} == {}
    assert _catalog_outcomes(tmp_path / "quick", "--quick") == full
