"""Figures: every plotting function renders a labelled PNG for a tiny run; the step timeline's
reconstruction of who ran in which step matches an exact constant-cost timeline; `run --plots`
writes the figures into the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.figure import Figure

from simserve import plots
from simserve.cli import main
from simserve.config import scenario_from_mapping
from simserve.costmodel import ConstantCostModel
from simserve.engine import EngineLimits, make_policy, simulate
from simserve.experiments.run import run_scenario
from simserve.metrics import request_metrics
from simserve.workload import Workload

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY = {
    "name": "tiny",
    "seed": 3,
    "cost_model": {"kind": "constant", "step_time_ms": 10.0},
    "engine": {"policy": "chunked_prefill", "max_num_seqs": 8, "max_num_batched_tokens": 64},
    "workload": {
        "num_requests": 24,
        "arrival": {"process": "poisson", "rate": 40.0},
        "lengths": {"dist": "uniform", "prompt_len": 40, "output_len": 12, "range_ratio": 0.5},
    },
    "metrics": {"slo": {"ttft_ms": 100.0, "tpot_ms": 30.0, "max_tbt_ms": 40.0}},
}


@pytest.fixture(scope="module")
def tiny_run():
    return run_scenario(scenario_from_mapping(TINY))


def _png(fig: Figure, tmp_path: Path, name: str) -> Path:
    path = plots.save_figure(fig, tmp_path / "nested" / f"{name}.png")
    assert path.exists() and path.stat().st_size > 5_000
    assert path.read_bytes()[:8] == PNG_MAGIC
    return path


def _labels(fig: Figure) -> list[tuple[str, str]]:
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def test_step_timeline_png_and_labels(tiny_run, tmp_path):
    fig = plots.step_timeline(tiny_run.result, max_steps=40, token_budget=64)
    _png(fig, tmp_path, "step_timeline")
    top, bottom = fig.axes
    assert top.get_ylabel() == "request id"
    assert bottom.get_xlabel() == "time (s)" and bottom.get_ylabel() == "tokens in step"
    assert "steps 1-40" in top.get_title()


def test_step_timeline_outside_the_run_says_so(tiny_run, tmp_path):
    fig = plots.step_timeline(tiny_run.result, start_step=10**6)
    _png(fig, tmp_path, "empty_timeline")
    assert "no steps" in fig.axes[0].get_title()


def test_token_timeline_png_and_staircase(tiny_run, tmp_path):
    result = tiny_run.result
    fig = plots.token_timeline(result, [0, 5], labels=["first", "sixth"], title="two requests")
    _png(fig, tmp_path, "token_timeline")
    (ax,) = fig.axes
    assert _labels(fig) == [("time since arrival (s)", "output tokens received")]
    assert ax.get_title() == "two requests"
    staircase = ax.lines[0]
    times = result.tokens_of(0) - result.arrived_at[0]
    np.testing.assert_allclose(staircase.get_xdata(), np.concatenate(([0.0], times)))
    assert staircase.get_ydata()[-1] == times.size
    with pytest.raises(ValueError, match="labels"):
        plots.token_timeline(result, [0, 1], labels=["only one"])


def test_latency_cdf_markers_are_the_percentiles(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.gamma(2.0, 10.0, 500), rng.gamma(2.0, 14.0, 300)
    fig = plots.latency_cdf({"A": a, "B": b}, metric="TTFT", slo_ms=40.0, population="per request")
    _png(fig, tmp_path, "cdf")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "TTFT (ms)"
    assert "per request" in ax.get_ylabel()
    p99_marks = [ln.get_xdata()[0] for ln in ax.lines if ln.get_marker() == "v" and
                 len(ln.get_xdata())]
    np.testing.assert_allclose(p99_marks, [np.percentile(a, 99), np.percentile(b, 99)])
    slo_lines = [ln for ln in ax.lines if ln.get_label() == "SLO 40.0 ms"]
    assert len(slo_lines) == 1 and slo_lines[0].get_xdata()[0] == 40.0
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("A: P50") and "≤ SLO" in t for t in legend)


def test_latency_cdf_log_axis_pins_zeros_and_handles_empty(tmp_path):
    tbt = np.array([0.0, 0.0, 0.0, 10.0, 11.0, 250.0])
    fig = plots.latency_cdf({"spec": tbt, "none": np.array([])}, metric="TBT", log_x=True)
    _png(fig, tmp_path, "cdf_log")
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert "3 zero samples" in ax.get_title()
    assert any("no samples" in t.get_text() for t in ax.get_legend().get_texts())


def test_metric_vs_rate_png_and_labels(tmp_path):
    rates = [1.0, 2.0, 4.0, 8.0]
    fig = plots.metric_vs_rate(
        rates,
        {"chunked": [20.0, 22.0, 30.0, np.nan], "prefill_first": [25.0, 40.0, 90.0, 300.0]},
        ylabel="P99 TBT (ms)",
        title="P99 TBT vs rate",
        slo=100.0,
        bands={"chunked": ([18.0, 20.0, 27.0, np.nan], [22.0, 24.0, 33.0, np.nan])},
        log_y=True,
    )
    _png(fig, tmp_path, "vs_rate")
    (ax,) = fig.axes
    assert _labels(fig) == [("arrival rate (req/s)", "P99 TBT (ms)")]
    assert ax.get_yscale() == "log"
    assert "P99 TBT vs rate" in ax.get_title()
    with pytest.raises(ValueError, match="3 values for 4 rates"):
        plots.metric_vs_rate(rates, {"x": [1.0, 2.0, 3.0]}, ylabel="y")


def test_capacity_bars_png_and_missing_values(tmp_path):
    fig = plots.capacity_bars(
        {"TTFT+TPOT": {"spec": 6.0, "no spec": 5.0},
         "TTFT+P99 TBT": {"spec": 2.5, "no spec": 4.5},
         "deadline": {"spec": float("nan"), "no spec": 4.0}},
        title="Capacity under three SLO rules",
    )
    _png(fig, tmp_path, "capacity")
    (ax,) = fig.axes
    assert _labels(fig) == [("SLO rule", "capacity (req/s)")]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["TTFT+TPOT", "TTFT+P99 TBT",
                                                            "deadline"]
    texts = [t.get_text() for t in ax.texts]
    assert "n/a" in texts and "2.5" in texts


def test_kv_occupancy_png_and_preemptions(tmp_path):
    # 12 blocks of 4 tokens cannot hold four 8+12-token requests: preemptions must happen.
    scenario = scenario_from_mapping({
        **TINY,
        "engine": {"policy": "chunked_prefill", "max_num_seqs": 8, "max_num_batched_tokens": 64,
                   "block_size": 4, "num_gpu_blocks_override": 12},
        "workload": {"num_requests": 8, "arrival": {"process": "offline"},
                     "lengths": {"dist": "fixed", "prompt_len": 8, "output_len": 12}},
    })
    result = run_scenario(scenario).result
    num_preemptions = int(result.num_preemptions.sum())
    assert num_preemptions > 0
    fig = plots.kv_occupancy(result)
    _png(fig, tmp_path, "kv")
    top, bottom = fig.axes
    assert top.get_ylabel() == "KV blocks used (%)"
    assert bottom.get_xlabel() == "time (s)" and bottom.get_ylabel() == "requests"
    assert f"{num_preemptions} preemptions" in top.get_title()
    # Every marked step really freed blocks without a request finishing.
    marked = plots._preemption_steps(result, plots._replica_step_ids(result, 0))
    assert marked.size > 0
    ends = result.steps.started_at + result.steps.duration_s
    for s in marked.tolist():
        assert result.steps.kv_blocks_used[s] < result.steps.kv_blocks_used[s - 1]
        assert not np.any(result.finished_at == ends[s])


def test_exact_gantt_of_a_prefill_first_stall():
    # r0 decodes from step 1; r1's 32-token prompt arrives mid-step 1 and is prefilled alone in
    # step 2 (prefill_first), so r0 sits that step out: the stall the figure must show.
    step_s = 0.01
    workload = Workload(arrived_at=np.array([0.0, 0.015]), prompt_len=np.array([4, 32]),
                        output_len=np.array([6, 2]))
    limits = EngineLimits(num_blocks=100, block_size=4, max_num_seqs=8,
                          max_num_batched_tokens=32, max_model_len=10_000)
    result = simulate(workload, lambda: make_policy("prefill_first"), ConstantCostModel(step_s),
                      limits)
    gantt = plots._gantt(result, replica=0, start_step=0, max_steps=100, max_requests=10)
    assert gantt is not None and gantt.rows.tolist() == [0, 1]

    def steps_of(kind: str, row: int) -> list[int]:
        return [round(lo / step_s) for r, lo, _hi in gantt.bars[kind] if r == row]

    assert steps_of("prefill", 0) == [0]
    assert steps_of("decode", 0) == [1, 3, 4, 5, 6]  # no bar in step 2: the stall
    # Queued from its arrival mid-step 1 to the start of its prefill step.
    queued = [(lo, hi) for r, lo, hi in gantt.bars["queued"] if r == 1]
    assert len(queued) == 1 and queued[0] == pytest.approx((0.015, 0.02))
    assert steps_of("prefill", 1) == [2]
    assert steps_of("decode", 1) == [3]
    assert not gantt.bars["burst"] and not gantt.bars["recompute"]


def test_run_figures_set_uses_the_scenario_slos(tiny_run, tmp_path):
    figures = plots.run_figures(tiny_run)
    assert list(figures) == ["step_timeline", "token_timeline", "ttft_cdf", "tpot_cdf",
                             "tbt_cdf", "kv_occupancy"]
    ttft_ax = figures["ttft_cdf"].axes[0]
    assert any(ln.get_label() == "SLO 100 ms" for ln in ttft_ax.lines)
    tbt_ax = figures["tbt_cdf"].axes[0]
    assert tbt_ax.get_xlabel() == "TBT (ms)" and "per token" in tbt_ax.get_ylabel()
    # The TBT population is the summary's: its P99 marker sits at the summary's P99.
    p99 = [ln.get_xdata()[0] for ln in tbt_ax.lines if ln.get_marker() == "v"]
    assert p99 == pytest.approx([tiny_run.summary["p99_tbt_ms"]])
    token_ax = figures["token_timeline"].axes[0]
    assert any("median E2EL" in t.get_text() for t in token_ax.get_legend().get_texts())
    paths = plots.write_run_figures(tiny_run, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{k}.png" for k in figures)


def test_representative_requests_are_measured_and_distinct(tiny_run):
    table = request_metrics(tiny_run.result, tiny_run.resolved.scenario.metrics)
    ids, labels = plots._representative_requests(table)
    assert len(ids) == len(set(ids)) == len(labels) >= 1
    assert all(table["measured"][i] for i in ids)
    assert labels[0].startswith(f"request {ids[0]} (median E2EL")


def _scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_cli_run_plots_writes_pngs_into_the_run_directory(tmp_path):
    out = tmp_path / "run"
    code = main(["run", str(_scenario_file(tmp_path)), "--out", str(out), "--plots"])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["requests.csv", "scenario.yaml", "steps.csv", "summary.json",
                            "step_timeline.png", "token_timeline.png", "ttft_cdf.png",
                            "tpot_cdf.png", "tbt_cdf.png", "kv_occupancy.png"])
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "summary.json").read_text())["completed"] == 24
    # No temporary directory is left beside the run.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tiny.yaml"]
