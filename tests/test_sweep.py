"""Sweep specs: grid/zip expansion, seeds, validation, the store, determinism, resume rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_sweep import tiny_base

from simserve.cli import main
from simserve.errors import InputError
from simserve.experiments.atomic import MARKER
from simserve.experiments.capacity import replication_seeds
from simserve.experiments.pool import RunPool
from simserve.experiments.sweep import (
    execute_task,
    load_sweep_spec,
    plan_sweep,
    read_csv_rows,
    run_sweep,
)

BASE = tiny_base(20)

SPEC = """\
name: tiny_sweep
base: base.yaml
grid:
  engine.policy: [prefill_first, chunked_prefill]
  workload.arrival.rate: [10, 40]
replications: 2
"""


def _write(tmp_path: Path, spec: str = SPEC, base: str = BASE, name: str = "spec.yaml") -> Path:
    (tmp_path / "base.yaml").write_text(base)
    path = tmp_path / name
    path.write_text(spec)
    return path


def _plan(tmp_path: Path, spec: str = SPEC):
    return plan_sweep(load_sweep_spec(_write(tmp_path, spec)))


# --------------------------------------------------------------------------- expansion


def test_grid_is_a_product_in_listed_order_with_spawned_seeds(tmp_path):
    plan = _plan(tmp_path)
    assert len(plan.runs) == 2 * 2 * 2
    assert [r.run_id for r in plan.runs[:3]] == ["p0000-r00", "p0000-r01", "p0001-r00"]
    assert [dict(r.axes) for r in plan.runs[::2]] == [
        {"engine.policy": "prefill_first", "workload.arrival.rate": 10},
        {"engine.policy": "prefill_first", "workload.arrival.rate": 40},
        {"engine.policy": "chunked_prefill", "workload.arrival.rate": 10},
        {"engine.policy": "chunked_prefill", "workload.arrival.rate": 40},
    ]
    run = plan.runs[3]
    assert run.scenario.engine.policy == "prefill_first"
    assert run.scenario.workload.arrival.rate == 40.0
    # Replication r has the same seed at every point (common random numbers), spawned from the
    # base scenario's seed when root_seed is not given.
    seeds = replication_seeds(3, 2)
    assert [r.scenario.seed for r in plan.runs] == seeds * 4
    assert len(set(seeds)) == 2


def test_zip_pairs_axes_and_combines_with_the_grid(tmp_path):
    spec = """\
name: z
base: base.yaml
grid:
  engine.policy: [prefill_first, chunked_prefill]
zip:
  engine.max_num_seqs: [2, 8, 16]
  engine.max_num_batched_tokens: [32, 128, 512]
root_seed: 11
"""
    plan = _plan(tmp_path, spec)
    assert len(plan.runs) == 2 * 3
    pairs = [(r.scenario.engine.max_num_seqs, r.scenario.engine.max_num_batched_tokens)
             for r in plan.runs]
    assert pairs == [(2, 32), (8, 128), (16, 512)] * 2
    assert {r.scenario.seed for r in plan.runs} == set(replication_seeds(11, 1))
    assert plan.spec.axis_keys == (
        "engine.policy", "engine.max_num_seqs", "engine.max_num_batched_tokens"
    )


def test_axes_vary_in_the_order_the_spec_writes_grid_and_zip(tmp_path):
    spec = """\
name: order
base: base.yaml
zip:
  engine.policy: [mixed, static]
  engine.max_num_seqs: [2, 4]
grid:
  workload.arrival.rate: [1, 2, 3]
"""
    plan = _plan(tmp_path, spec)
    assert plan.spec.axis_keys == ("engine.policy", "engine.max_num_seqs", "workload.arrival.rate")
    assert [(r.scenario.engine.policy, r.scenario.workload.arrival.rate) for r in plan.runs] == [
        ("mixed", 1.0), ("mixed", 2.0), ("mixed", 3.0), ("static", 1.0), ("static", 2.0),
        ("static", 3.0),
    ]


def test_several_zip_groups_and_a_seed_axis(tmp_path):
    spec = """\
name: z2
base: base.yaml
zip:
  - {engine.max_num_seqs: [2, 4], engine.policy: [mixed, static]}
  - {seed: [5, 6, 7]}
"""
    plan = _plan(tmp_path, spec)
    assert len(plan.runs) == 6
    assert [r.scenario.seed for r in plan.runs] == [5, 6, 7, 5, 6, 7]
    assert [r.scenario.engine.policy for r in plan.runs[::3]] == ["mixed", "static"]


def test_set_applies_fixed_overrides_and_inline_scenarios_work(tmp_path):
    spec = """\
name: inline
scenario:
  cost_model: {kind: constant, step_time_ms: 5.0}
  workload: {num_requests: 5, arrival: {rate: 3.0}, lengths: {prompt_len: 8, output_len: 2}}
set:
  engine.max_num_seqs: 3
grid:
  workload.lengths.output_len: [2, 4]
"""
    plan = _plan(tmp_path, spec)
    assert [r.scenario.workload.lengths.output_len for r in plan.runs] == [2, 4]
    assert all(r.scenario.engine.max_num_seqs == 3 for r in plan.runs)


def test_command_line_set_wins_over_the_spec(tmp_path, capsys):
    spec = SPEC.replace("grid:", "set: {workload.num_requests: 7}\ngrid:")
    plan = plan_sweep(load_sweep_spec(_write(tmp_path, spec), ["workload.num_requests=5"]))
    assert {r.scenario.workload.num_requests for r in plan.runs} == {5}
    code = main(["sweep", str(tmp_path / "spec.yaml"), "--set", "engine.max_num_seqs=zero",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "--set: engine.max_num_seqs" in capsys.readouterr().err


def test_spec_hash_depends_on_what_runs_not_on_formatting(tmp_path):
    a = _plan(tmp_path, SPEC).spec_hash
    b = _plan(tmp_path, SPEC.replace("[10, 40]", "[10,   40]") + "\n# comment\n").spec_hash
    c = _plan(tmp_path, SPEC.replace("[10, 40]", "[10, 41]")).spec_hash
    assert a == b != c


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (SPEC.replace("engine.policy:", "engine.polcy:"), "engine.polcy: unknown key"),
        (SPEC.replace("engine.policy:", "engine.polcy:"), "spec.yaml:4:"),
        (SPEC.replace("[10, 40]", "[10, fast]"), "expected a number"),
        (SPEC.replace("[prefill_first, chunked_prefill]", "[prefill_first, fifo]"),
         "engine.policy: unknown policy 'fifo'"),
        (SPEC.replace("[10, 40]", "10"), "must be a non-empty list"),
        (SPEC.replace("grid:", "grdi:"), "unknown key"),
        (SPEC.replace("replications: 2", "replications: 0"), "replications"),
        (SPEC + "zip: {engine.max_num_seqs: [1, 2], engine.block_size: [8]}\n",
         "same number of values"),
        (SPEC.replace("base: base.yaml", "base: missing.yaml"), "not found"),
        (SPEC.replace("workload.arrival.rate:", "seed.value:"), "seed is a value"),
        (SPEC + "slo: p99_nonsense_ms<=3\n", "unknown summary key"),
    ],
)
def test_bad_specs_fail_before_anything_runs(tmp_path, capsys, spec, expected):
    path = _write(tmp_path, spec)
    out = tmp_path / "out"
    code = main(["sweep", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("simserve: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not out.exists()


def test_an_axis_combination_is_validated_too(tmp_path):
    # Each value is fine alone, but 8 tokens per step is below the 16-token block size.
    spec = SPEC + "zip: {engine.block_size: [16, 32], engine.max_num_seqs: [2, 3]}\n"
    spec = spec.replace("[10, 40]", "[10]").replace(
        "base: base.yaml", "base: base.yaml\nset: {engine.max_num_batched_tokens: 16}")
    with pytest.raises(InputError, match=r"engine\.max_num_batched_tokens"):
        _plan(tmp_path, spec)


# --------------------------------------------------------------------------- store


def test_sweep_writes_run_dirs_and_summary_tables(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "sw"
    code = main(["sweep", str(_write(tmp_path)), "--out", str(out), "--jobs", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "8 of 8 finished" in printed and "± " in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "points", "summary.csv", "summary.parquet", "summary_by_point.csv",
        "summary_by_point.parquet", "sweep.json", "sweep.yaml",
    ]
    points = sorted(p.name for p in (out / "points").iterdir())
    assert points[0] == "p0000-r00" and len(points) == 8
    assert sorted(p.name for p in (out / "points" / "p0000-r00").iterdir()) == [
        MARKER, "requests.csv", "scenario.yaml", "steps.csv", "summary.json"
    ]
    rows = read_csv_rows(out / "summary.csv")
    assert [r["run_id"] for r in rows] == points
    first = rows[0]
    assert first["engine.policy"] == "prefill_first" and first["workload.arrival.rate"] == 10
    summary = json.loads((out / "points" / "p0000-r00" / "summary.json").read_text())
    for key, value in summary.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert first[key] == value, key  # floats round-trip exactly
    assert first["completed"] == 20 and "p99_deadline_miss_rate" in first
    table = pa.read_table(out / "summary.parquet").to_pylist()
    assert [r["run_id"] for r in table] == points
    assert table[0]["mean_ttft_ms"] == first["mean_ttft_ms"]
    by_point = read_csv_rows(out / "summary_by_point.csv")
    assert len(by_point) == 4 and by_point[0]["num_seeds"] == 2
    values = [r["mean_ttft_ms"] for r in rows[:2]]
    assert by_point[0]["mean_ttft_ms_mean"] == pytest.approx(sum(values) / 2)
    assert by_point[0]["mean_ttft_ms_ci95"] > 0
    state = json.loads((out / "sweep.json").read_text())
    assert state["num_runs"] == 8 and state["axes"] == ["engine.policy", "workload.arrival.rate"]
    assert (out / "sweep.yaml").read_text() == SPEC


def test_summary_is_identical_for_one_and_two_workers(tmp_path):
    spec = load_sweep_spec(_write(tmp_path))
    plan = plan_sweep(spec)
    with RunPool(1) as one:
        run_sweep(plan, tmp_path / "one", one)
    with RunPool(2) as two:
        outcome = run_sweep(plan, tmp_path / "two", two)
    assert outcome.num_ran == 8 and not outcome.errors
    assert (tmp_path / "one" / "summary.csv").read_bytes() == (
        tmp_path / "two" / "summary.csv").read_bytes()


def test_resume_reruns_only_unfinished_points(tmp_path):
    plan = plan_sweep(load_sweep_spec(_write(tmp_path)))
    out = tmp_path / "sw"
    with RunPool(1) as pool:
        run_sweep(plan, out, pool)
    reference = (out / "summary.csv").read_bytes()
    # Simulate a kill: two points never finished, one worker died mid-write.
    for run_id in ("p0001-r00", "p0003-r01"):
        for f in (out / "points" / run_id).iterdir():
            f.unlink()
        (out / "points" / run_id).rmdir()
    (out / "points" / ".p0001-r00.tmp-abc").mkdir()
    (out / "points" / ".p0001-r00.tmp-abc" / "summary.json").write_text("{")
    (out / "summary.csv").unlink()
    with RunPool(1) as pool:
        outcome = run_sweep(plan, out, pool, resume=True)
    assert (outcome.num_resumed, outcome.num_ran) == (6, 2)
    assert (out / "summary.csv").read_bytes() == reference
    assert not any(p.name.startswith(".") for p in (out / "points").iterdir())


def test_existing_directory_needs_resume_and_the_same_spec(tmp_path, capsys):
    path = _write(tmp_path)
    out = tmp_path / "sw"
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "1"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    assert main(["sweep", str(path), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err

    other = _write(tmp_path, SPEC.replace("[10, 40]", "[10, 50]"), name="other.yaml")
    assert main(["sweep", str(other), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different sweep spec" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    (tmp_path / "notasweep").mkdir()
    (tmp_path / "notasweep" / "precious.txt").write_text("keep")
    assert main(["sweep", str(path), "--out", str(tmp_path / "notasweep"), "--resume"]) == 2
    assert (tmp_path / "notasweep" / "precious.txt").read_text() == "keep"

    # Resuming a finished sweep reruns nothing and rewrites the same summary.
    assert main(["sweep", str(path), "--out", str(out), "--resume"]) == 0
    assert "(8 resumed, 0 ran)" in capsys.readouterr().out
    assert (out / "summary.csv").read_bytes() == before[out / "summary.csv"]


def test_dry_run_lists_runs_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", str(_write(tmp_path)), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "8 runs" in printed and "p0003-r01" in printed
    assert not out.exists()


def test_local_backend_address_is_refused(tmp_path, capsys):
    code = main(["sweep", str(_write(tmp_path)), "--out", str(tmp_path / "o"),
                 "--address", "127.0.0.1:1"])
    assert code == 2 and "--address" in capsys.readouterr().err


def test_failed_runs_are_reported_kept_out_of_the_summary_and_rerun_on_resume(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_len,output_len\n"
                     + "".join(f"{i * 0.05},{32 + i},{4}\n" for i in range(40)))
    spec = SPEC.replace("replications: 2",
                        "set: {workload.lengths.dist: trace, workload.trace: trace.csv}")
    spec += "zip: {workload.trace: [trace.csv, gone.csv]}\n"
    (tmp_path / "gone.csv").write_text(trace.read_text())
    path = _write(tmp_path, spec)
    plan = plan_sweep(load_sweep_spec(path))
    (tmp_path / "gone.csv").unlink()  # the runs that read it fail in their worker
    out = tmp_path / "sw"
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "2"]) == 1
    err = capsys.readouterr().err
    assert "4 run(s) failed" in err and "errors.json" in err
    errors = json.loads((out / "errors.json").read_text())
    assert sorted(errors) == [r.run_id for r in plan.runs if r.point % 2 == 1]
    assert len(read_csv_rows(out / "summary.csv")) == 4
    (tmp_path / "gone.csv").write_text(trace.read_text())
    assert main(["sweep", str(path), "--out", str(out), "--resume"]) == 0
    assert len(read_csv_rows(out / "summary.csv")) == 8
    assert not (out / "errors.json").exists()


def test_a_failing_task_comes_back_as_an_error_not_an_exception():
    result = execute_task({"id": "x", "kind": "run", "scenario": {"seed": -1}})
    assert result["id"] == "x" and "seed" in result["error"]


def test_shipped_sweep_specs_are_valid():
    root = Path(__file__).resolve().parent.parent / "scenarios" / "sweeps"
    specs = sorted(root.glob("*.yaml"))
    assert len(specs) >= 3
    for path in specs:
        plan = plan_sweep(load_sweep_spec(path))
        assert plan.runs, path
    # The first in name order is the small policy x rate grid a newcomer tries first.
    first = plan_sweep(load_sweep_spec(specs[0]))
    assert {"engine.policy", "workload.arrival.rate"} <= set(first.spec.axis_keys)
    assert len(first.runs) <= 100
