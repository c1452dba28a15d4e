"""Capacity search: SLO rule syntax, bisection against analytic answers, capacity sweeps, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simserve.cli import main
from simserve.config import scenario_from_mapping
from simserve.errors import InputError
from simserve.experiments.capacity import (
    CapacitySettings,
    check_rule,
    parse_slo_rule,
    replication_seeds,
    search_capacity,
)
from simserve.experiments.pool import RunPool
from simserve.experiments.sweep import load_sweep_spec, plan_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]
STEP_MS = 10.0


def _queue(num_requests: int = 50, process: str = "constant", max_num_seqs: int = 1,
           output_len: int = 1, **extra) -> dict:
    """One server, constant step time D = 10 ms: with batch size 1 and one output token every
    request takes exactly one step, so the service rate is 1/D = 100 requests/s."""
    return {
        "name": "queue",
        "cost_model": {"kind": "constant", "step_time_ms": STEP_MS},
        "engine": {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": 64},
        "workload": {
            "num_requests": num_requests,
            "arrival": {"process": process, "rate": 20.0},
            "lengths": {"dist": "fixed", "prompt_len": 16, "output_len": output_len},
        },
        **extra,
    }


def _settings(rule: str, seeds=(0,), **kw) -> CapacitySettings:
    return CapacitySettings(rule=parse_slo_rule(rule), seeds=tuple(seeds), **kw)


# --------------------------------------------------------------------------- rules


def test_named_rules_expand_to_thresholds():
    assert parse_slo_rule("sarathi").describe() == (
        "p99_tbt_ms<=200 and median_scheduling_delay_ms<=2000"
    )
    assert parse_slo_rule("sarathi:100:500").describe() == (
        "p99_tbt_ms<=100 and median_scheduling_delay_ms<=500"
    )
    assert parse_slo_rule("etalon").describe() == "p99_deadline_miss_rate<=0.1"
    assert parse_slo_rule("etalon:0.05").describe() == "p99_deadline_miss_rate<=0.05"
    rule = parse_slo_rule("attainment:0.95")
    assert rule.describe() == "slo_attainment>=0.95" and rule.needs_slo
    combo = parse_slo_rule("sarathi:50, p99_ttft_ms < 2000,request_throughput>=3")
    assert combo.keys == (
        "p99_tbt_ms", "median_scheduling_delay_ms", "p99_ttft_ms", "request_throughput"
    )


def test_rules_judge_the_mean_over_seeds_and_missing_values_fail():
    rule = parse_slo_rule("p99_tbt_ms<=100,request_throughput>=2")
    ok, values = rule.evaluate([{"p99_tbt_ms": 80.0, "request_throughput": 3.0},
                                {"p99_tbt_ms": 110.0, "request_throughput": 2.0}])
    assert ok and values == {"p99_tbt_ms": 95.0, "request_throughput": 2.5}
    assert not rule.evaluate([{"p99_tbt_ms": 120.0, "request_throughput": 3.0}])[0]
    assert not rule.evaluate([{"p99_tbt_ms": None, "request_throughput": 3.0}])[0]
    assert not parse_slo_rule("p99_tbt_ms<50").evaluate([{"p99_tbt_ms": 50.0}])[0]


@pytest.mark.parametrize(
    "text",
    ["", "sarathi:x", "sarathi:1:2:3", "p99_tbt_ms=<5", "p99_tbt_ms<=fast", "etalon:2",
     "attainment:1.5", "sarathi:-1", "p99_tbt_ms<=inf"],
)
def test_bad_rules_are_input_errors(text):
    with pytest.raises(InputError):
        parse_slo_rule(text)


def test_rules_are_checked_against_the_scenario():
    scenario = scenario_from_mapping(_queue(output_len=4))
    check_rule(parse_slo_rule("sarathi,etalon,p95_ttft_ms<=10"), scenario)
    with pytest.raises(InputError, match="unknown summary key 'p99_tbt'"):
        check_rule(parse_slo_rule("p99_tbt<=10"), scenario)
    with pytest.raises(InputError, match=r"metrics\.slo"):
        check_rule(parse_slo_rule("attainment"), scenario)
    with_slo = scenario_from_mapping(_queue(metrics={"slo": {"ttft_ms": 100.0}}))
    check_rule(parse_slo_rule("attainment"), with_slo)


# --------------------------------------------------------------------------- known answers


def test_deterministic_queue_capacity_is_one_over_the_step_time():
    # D/D/1: with arrivals every 1/rate s and one 10 ms step per request, nobody ever waits
    # while rate <= 1/D = 100/s; above it the queue (and the mean delay) grows with every
    # request. So the largest rate with mean scheduling delay ~0 is 100/s exactly.
    scenario = scenario_from_mapping(_queue())
    tolerance = 0.01
    result = search_capacity(scenario, _settings("mean_scheduling_delay_ms<=0.5",
                                                 tolerance=tolerance))
    assert result.status == "ok"
    assert result.low_rps <= 100.0 * (1 + 1e-9) <= result.high_rps
    assert result.high_rps - result.low_rps <= tolerance * result.low_rps
    assert result.capacity_rps == pytest.approx(100.0, rel=tolerance)
    assert result.at_capacity().passed
    # Bracketing doubles from the scenario's rate (20/s) until the rule fails.
    assert [p.rate for p in result.probes[:4]] == [20.0, 40.0, 80.0, 160.0]


@pytest.mark.slow
def test_md1_capacity_matches_pollaczek_khinchine():
    # M/D/1 (Poisson arrivals, batch size 1, constant service D): the mean wait is
    # W = rho D / (2 (1 - rho)) with rho = lambda D (Pollaczek-Khinchine). W <= D/2 holds up to
    # rho = 1/2, i.e. lambda = 50/s. Statistical: 3 seeds x 2,000 requests per rate.
    scenario = scenario_from_mapping(_queue(num_requests=2000, process="poisson"))
    result = search_capacity(
        scenario,
        _settings("mean_scheduling_delay_ms<=5", seeds=replication_seeds(0, 3),
                  tolerance=0.01, low=30.0, high=70.0),
    )
    assert result.status == "ok"
    assert result.capacity_rps == pytest.approx(50.0, rel=0.08)


def test_bracket_statuses_and_undefined_rules():
    scenario = scenario_from_mapping(_queue())
    rule = "mean_scheduling_delay_ms<=0.5"
    above = search_capacity(scenario, _settings(rule, low=10.0, high=50.0))
    assert (above.status, above.capacity_rps, len(above.probes)) == ("above_range", 50.0, 2)
    below = search_capacity(scenario, _settings(rule, low=150.0))
    assert (below.status, below.capacity_rps) == ("below_range", None)
    # One output token: there are no token gaps, so a TBT rule cannot judge any rate.
    undefined = search_capacity(scenario, _settings("sarathi"))
    assert undefined.status.startswith("undefined: p99_tbt_ms")
    assert len(undefined.probes) == 1
    with pytest.raises(InputError, match="arrival"):
        search_capacity(scenario_from_mapping(_queue(process="offline")), _settings(rule))


def test_extended_brackets_bound_the_capacity_on_both_sides():
    # D/D/1 at 10 ms per request: the rule holds up to 100/s. A bracket entirely below (10-50)
    # or above (150-300) the knee is extended (doubling up, halving down) until it holds the
    # knee, so the capacity is never a censored bound.
    scenario = scenario_from_mapping(_queue())
    rule = "mean_scheduling_delay_ms<=0.5"
    for low, high in ((10.0, 50.0), (150.0, 300.0)):
        found = search_capacity(scenario, _settings(rule, low=low, high=high, tolerance=0.01,
                                                    extend=True))
        assert found.status == "ok" and found.bounded and not found.capped
        assert found.capacity_rps == pytest.approx(100.0, rel=0.01)
    censored = search_capacity(scenario, _settings(rule, low=10.0, high=50.0))
    assert censored.status == "above_range" and not censored.bounded


def test_the_ceiling_fails_without_a_run_and_caps_the_capacity():
    # The overload guard: a ceiling of 80/s (below the 100/s knee) fails by itself, without a
    # simulation, so the capacity is the largest rate below it and is marked as capped.
    scenario = scenario_from_mapping(_queue())
    found = search_capacity(scenario, _settings("mean_scheduling_delay_ms<=0.5", low=20.0,
                                                tolerance=0.02, ceiling=80.0, extend=True))
    guarded = [p for p in found.probes if p.guarded]
    assert [p.rate for p in guarded] == [80.0] and guarded[0].summaries == ()
    assert found.bounded and found.capped and found.high_rps == 80.0
    assert 80.0 / 1.02 <= found.capacity_rps < 80.0
    assert all(p.passed for p in found.probes if not p.guarded)
    assert found.to_mapping()["capped"] is True


# --------------------------------------------------------------------------- saturation


def _conv(policy: str, *extra: str):
    from simserve.config import load_scenario

    budget = 8192 if policy == "prefill_first" else 2048
    return load_scenario(ROOT / "scenarios" / "antipatterns" / "llama3-8b-h100-conv.yaml", [
        f"engine.policy={policy}", f"engine.max_num_batched_tokens={budget}",
        "workload.lengths.dist=fixed", "workload.lengths.prompt_len=512",
        "workload.lengths.output_len=128", "engine.max_num_seqs=128", "metrics.warmup_s=0",
        "metrics.cooldown_s=0", *extra])


def _pool_summaries(scenarios):
    from simserve.config import scenario_to_mapping
    from simserve.experiments.pool import run_summary_task

    return [run_summary_task(scenario_to_mapping(s)) for s in scenarios]


@pytest.mark.parametrize("policy", ["chunked_prefill", "prefill_first"])
def test_saturation_is_the_rate_a_never_empty_backlog_sustains(policy):
    # The offline run's completion rate while requests wait equals that of an open-loop run at
    # 4x the rate (a backlog that never empties, arrivals staggered), within 2%. The old window
    # (10%-90% of finishes) counted the drain: slower for chunked prefill's emptying batches,
    # faster for prefill-first's decode-only steps.
    from simserve.experiments.pool import steady_throughput
    from simserve.experiments.run import run_scenario
    from simserve.experiments.saturation import measure_saturation

    sat = measure_saturation(_conv(policy), _pool_summaries, num_requests=600)
    assert sat.window_completions >= 0.25 * 600
    overload = run_scenario(_conv(policy, f"workload.arrival.rate={4 * sat.rps}",
                                  "workload.num_requests=600")).result
    backlogged, _ = steady_throughput(overload.finished_at, overload.first_scheduled_at)
    assert backlogged == pytest.approx(sat.rps, rel=0.02)


def test_no_steady_state_above_saturation():
    # Below the line the queue is steady: mean TTFT does not depend on how long the run lasts.
    # 10% above it the queue never drains: mean TTFT grows with the run (x1.25 per doubling
    # or more), although a short run there still looks harmless. So no steady-state capacity
    # can exceed the saturation throughput, and the overload guard fails such rates.
    from simserve.experiments.run import run_scenario
    from simserve.experiments.saturation import measure_saturation

    sat = measure_saturation(_conv("chunked_prefill"), _pool_summaries, num_requests=600).rps

    def per_doubling(load: float) -> float:
        ttft = [run_scenario(_conv("chunked_prefill", f"workload.arrival.rate={load * sat}",
                                   f"workload.num_requests={n}")).summary["mean_ttft_ms"]
                for n in (600, 2400)]
        return (ttft[1] / ttft[0]) ** 0.5

    assert per_doubling(0.8) == pytest.approx(1.0, abs=0.1)
    assert per_doubling(1.1) > 1.25


# --------------------------------------------------------------------------- capacity sweep


def test_capacity_as_a_sweep_axis(tmp_path):
    # max_num_seqs k serves k one-token requests per 10 ms step: capacity k/D = 100k /s. A
    # request then waits at most one step, so "median delay <= one step" holds up to k/D.
    import yaml

    base = _queue(num_requests=400)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "spec.yaml").write_text(
        "name: cap\nbase: base.yaml\n"
        "grid: {engine.max_num_seqs: [1, 2]}\n"
        "capacity: {slo: 'median_scheduling_delay_ms<=10', tolerance: 0.02}\n"
    )
    plan = plan_sweep(load_sweep_spec(tmp_path / "spec.yaml"))
    assert plan.mode == "capacity" and [r.run_id for r in plan.runs] == ["p0000", "p0001"]
    with RunPool(2) as pool:
        outcome = run_sweep(plan, tmp_path / "out", pool)
    assert not outcome.errors
    caps = [row["capacity_rps"] for row in outcome.rows]
    assert caps == [pytest.approx(100.0, rel=0.05), pytest.approx(200.0, rel=0.05)]
    assert [row["capacity_status"] for row in outcome.rows] == ["ok", "ok"]
    assert outcome.rows[0]["engine.max_num_seqs"] == 1
    assert outcome.rows[0]["request_throughput"] > 0  # metrics at the capacity rate
    doc = json.loads((tmp_path / "out" / "points" / "p0001" / "capacity.json").read_text())
    assert doc["results"][0]["capacity_rps"] == caps[1]
    # One worker, searching the points one after the other, writes the same bytes.
    with RunPool(1) as pool:
        run_sweep(plan, tmp_path / "serial", pool)
    for name in ("summary.csv", "points/p0000/capacity.json", "points/p0001/capacity.json"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()
    # Resuming rebuilds the same rows from capacity.json.
    summary = (tmp_path / "out" / "summary.csv").read_bytes()
    with RunPool(1) as pool:
        again = run_sweep(plan, tmp_path / "out", pool, resume=True)
    assert again.num_ran == 0
    assert (tmp_path / "out" / "summary.csv").read_bytes() == summary
    assert main(["plot", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "plots" / "capacity.png").read_bytes()[:4] == b"\x89PNG"


def test_a_capacity_sweep_refuses_a_rate_axis(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        "name: cap\nscenario: {workload: {arrival: {rate: 1.0}}}\n"
        "grid: {workload.arrival.rate: [1, 2]}\ncapacity: {slo: sarathi}\n"
    )
    with pytest.raises(InputError, match="searches the arrival rate"):
        load_sweep_spec(tmp_path / "spec.yaml")


# --------------------------------------------------------------------------- CLI


def _scenario_file(tmp_path: Path, **kw) -> Path:
    import yaml

    path = tmp_path / "queue.yaml"
    path.write_text(yaml.safe_dump(_queue(**kw)))
    return path


def test_capacity_cli_prints_probes_and_writes_capacity_json(tmp_path, capsys):
    out = tmp_path / "cap"
    code = main(["capacity", str(_scenario_file(tmp_path)), "--slo",
                 "mean_scheduling_delay_ms<=0.5", "--slo", "etalon", "--tolerance", "0.01",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "capacity: 100 req/s" in printed
    assert "capacity under etalon (p99_deadline_miss_rate<=0.1)" in printed
    doc = json.loads((out / "capacity.json").read_text())
    assert [r["rule"] for r in doc["results"]] == ["mean_scheduling_delay_ms<=0.5", "etalon"]
    assert (out / "scenario.yaml").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--slo", "bogus"], "cannot parse"),
        (["--slo", "attainment"], "metrics.slo"),
        (["--slo", "sarathi", "--set", "workload.arrival.process=offline",
          "--set", "workload.arrival.rate=null"], "arrival"),
        (["--slo", "sarathi", "--low", "5", "--high", "2"], "--low"),
        (["--slo", "sarathi", "--tolerance", "0"], "--tolerance"),
        (["--slo", "sarathi", "--replications", "0"], "--replications"),
    ],
)
def test_capacity_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, args, expected):
    out = tmp_path / "cap"
    code = main(["capacity", str(_scenario_file(tmp_path, output_len=4)), *args,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not out.exists()
