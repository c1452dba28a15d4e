"""`simserve plot SWEEP_DIR`: latency-vs-rate curves with bands and SLO lines, capacity, Pareto."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_sweep import tiny_base

from simserve.cli import main
from simserve.experiments.capacity import parse_slo_rule
from simserve.plots_sweep import (
    SweepTable,
    capacity_figure,
    latency_vs_rate_figure,
    load_sweep_table,
    pareto_figure,
)

BASE = tiny_base(30, seed=None)

SPEC = """\
name: plot_sweep
base: base.yaml
grid:
  engine.policy: [prefill_first, chunked_prefill]
  workload.arrival.rate: [10, 40, 80]
replications: 2
slo: p99_tbt_ms<=12,median_scheduling_delay_ms<=20
"""


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plots")
    (tmp / "base.yaml").write_text(BASE)
    (tmp / "spec.yaml").write_text(SPEC)
    assert main(["sweep", str(tmp / "spec.yaml"), "--out", str(tmp / "sw"), "--jobs", "1"]) == 0
    return tmp / "sw"


def test_plot_writes_the_three_figures(sweep_dir, capsys):
    assert main(["plot", str(sweep_dir)]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(Path(p).name for p in printed)
    assert names == ["capacity.png", "latency_vs_rate.png", "pareto.png"]
    for path in printed:
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_figures_have_labelled_axes_bands_and_slo_lines(sweep_dir):
    table = load_sweep_table(sweep_dir)
    rule = parse_slo_rule(table.slo)
    fig = latency_vs_rate_figure(table, ["p99_tbt_ms", "p99_ttft_ms"], "workload.arrival.rate",
                                 rule)
    tbt, ttft = fig.axes
    assert tbt.get_xlabel() == "arrival rate (req/s)" and tbt.get_ylabel() == "P99 TBT (ms)"
    assert [line.get_label() for line in tbt.get_lines()] == [
        "prefill_first", "chunked_prefill", "SLO: p99_tbt_ms<=12"
    ]
    assert len(tbt.collections) == 2  # one confidence band per policy
    assert not any("SLO" in line.get_label() for line in ttft.get_lines())

    cap = capacity_figure(table, rule, "workload.arrival.rate")
    (ax,) = cap.axes
    assert ax.get_ylabel() == "capacity: arrival rate (req/s)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["prefill_first", "chunked_prefill"]

    pareto = pareto_figure(table, rule)
    (ax,) = pareto.axes
    assert ax.get_xlabel() == "P99 TBT (ms)" and ax.get_ylabel() == "output throughput (tok/s)"
    assert "Pareto front of the points meeting the SLO" in [ln.get_label() for ln in ax.get_lines()]


def test_the_pareto_front_leaves_out_points_that_miss_the_slo():
    # Static batching's huge batches: the most throughput, but a P99 TBT far over the SLO. The
    # front runs through the points that meet it only, so static is not called Pareto-optimal.
    from simserve.plots_sweep import SweepTable

    rows = [
        {"point": 0, "engine.policy": "static", "seed": 0, "p99_tbt_ms": 900.0,
         "output_throughput": 5000.0},
        {"point": 1, "engine.policy": "chunked_prefill", "seed": 0, "p99_tbt_ms": 50.0,
         "output_throughput": 3000.0},
        {"point": 2, "engine.policy": "prefill_first", "seed": 0, "p99_tbt_ms": 150.0,
         "output_throughput": 3500.0},
    ]
    table = SweepTable(rows=rows, axes=("engine.policy", "seed"), mode="runs", slo=None,
                       name="t")
    fig = pareto_figure(table, parse_slo_rule("p99_tbt_ms<=200"))
    (ax,) = fig.axes
    (front,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("Pareto front")]
    assert list(front.get_xdata()) == [50.0, 150.0]  # static (900 ms) is not on it
    assert "left out of the front" in ax.get_title()


def test_long_series_labels_share_one_legend_and_name_classes_by_class():
    """Three axes per curve (the user-policy sweep) make long labels: one legend under the
    panels, and a user's class as its class name rather than its path."""
    policies = ["chunked_prefill", "../policies/shortest_prompt_first.py:ShortestPromptFirst"]
    rows = [{"engine.policy": policy, "engine.queue": "fcfs",
             "engine.max_num_batched_tokens": 2048, "workload.arrival.rate": rate,
             "p99_tbt_ms": 50.0 + rate + i, "p99_ttft_ms": 300.0 + rate + i}
            for i, policy in enumerate(policies) for rate in (10, 20)]
    table = SweepTable(rows=rows, axes=("engine.policy", "engine.queue",
                                        "engine.max_num_batched_tokens",
                                        "workload.arrival.rate"),
                       mode="runs", slo="p99_tbt_ms<=200", name="long")
    fig = latency_vs_rate_figure(table, ["p99_tbt_ms", "p99_ttft_ms"], "workload.arrival.rate",
                                 parse_slo_rule(table.slo))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "policy=chunked_prefill, queue=fcfs, max_num_batched_tokens=2048",
        "policy=ShortestPromptFirst, queue=fcfs, max_num_batched_tokens=2048",
    ]
    tbt, ttft = fig.axes
    assert [t.get_text() for t in tbt.get_legend().get_texts()] == ["SLO: p99_tbt_ms<=200"]
    assert ttft.get_legend() is None


def test_plot_options_and_bad_input(sweep_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["plot", str(sweep_dir), "--out", str(out), "--slo", "sarathi:20",
                 "--metric", "mean_e2el_ms"]) == 0
    assert (out / "latency_vs_rate.png").is_file()
    capsys.readouterr()
    for args, expected in [
        ([str(tmp_path)], "not a sweep directory"),
        ([str(sweep_dir), "--metric", "p99_nothing_ms"], "not a column"),
        ([str(sweep_dir), "--x", "engine.nothing"], "not a column"),
        ([str(sweep_dir), "--slo", "bogus"], "cannot parse"),
    ]:
        assert main(["plot", *args, "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "never").exists()
