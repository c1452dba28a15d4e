"""Figures: every plotting function renders a labelled PNG for a tiny run; the step timeline's
reconstruction of who ran in which step matches an exact constant-cost timeline; `run --plots`
writes the figures into the run directory; a disaggregated run shows a prefill and a decode
instance, with KV handoffs drawn as such and never as preemptions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.figure import Figure

from simserve import plots
from simserve.cli import main
from simserve.config import load_scenario, scenario_from_mapping
from simserve.costmodel import ConstantCostModel
from simserve.engine import POLICIES, EngineLimits, EngineSetup, PoolSetup, simulate
from simserve.experiments.atomic import MARKER
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
    slo_lines = [ln for ln in ax.lines if ln.get_label() == "SLO 40 ms"]
    assert len(slo_lines) == 1 and slo_lines[0].get_xdata()[0] == 40.0
    # The axis fits the data (to the largest sample), not stretched to an SLO.
    assert ax.get_xlim()[1] == pytest.approx(max(a.max(), b.max()) * 1.03)
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
    # The engine logs each preemption with the step it planned: the per-step counts add up to
    # the per-request ones, and every such step (and only those) is marked.
    assert int(result.steps.num_preempted.sum()) == num_preemptions
    marked = plots._preemption_steps(result, plots._replica_step_ids(result, 0))
    assert marked.tolist() == np.flatnonzero(result.steps.num_preempted).tolist()
    (crosses,) = [ln for ln in top.lines if ln.get_marker() == "x"]
    assert len(crosses.get_xdata()) == marked.size


def test_exact_gantt_of_a_prefill_first_stall():
    # r0 decodes from step 1; r1's 32-token prompt arrives mid-step 1 and is prefilled alone in
    # step 2 (prefill_first), so r0 sits that step out: the stall the figure must show.
    step_s = 0.01
    workload = Workload(arrived_at=np.array([0.0, 0.015]), prompt_len=np.array([4, 32]),
                        output_len=np.array([6, 2]))
    limits = EngineLimits(num_blocks=100, block_size=4, max_num_seqs=8,
                          max_num_batched_tokens=32, max_model_len=10_000)
    result = simulate(workload, EngineSetup.colocated(
        POLICIES["prefill_first"], ConstantCostModel(step_s), limits))
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
    ttft = tiny_run.requests["ttft_s"][tiny_run.requests["measured"]] * 1e3
    # The SLO (100 ms) lies right of every TTFT: the axis fits the data and an arrow at its
    # right edge points to the SLO.
    assert ttft.max() < 100.0 and ttft_ax.get_xlim()[1] < 100.0
    assert any(ln.get_label().startswith("SLO 100 ms") for ln in ttft_ax.lines)
    assert any(t.get_text() == "SLO 100 ms →" for t in ttft_ax.texts)
    tbt_ax = figures["tbt_cdf"].axes[0]
    # The TBT CDF gets the max-TBT SLO (40 ms here).
    assert any(str(ln.get_label()).startswith("SLO 40 ms") for ln in tbt_ax.lines)
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
    assert names == sorted([MARKER, "requests.csv", "scenario.yaml", "steps.csv", "summary.json",
                            "step_timeline.png", "token_timeline.png", "ttft_cdf.png",
                            "tpot_cdf.png", "tbt_cdf.png", "kv_occupancy.png"])
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "summary.json").read_text())["completed"] == 24
    # No temporary directory is left beside the run.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tiny.yaml"]


# --------------------------------------------------------------------------- disaggregated

DISAGG_YAML = """\
name: tiny-disagg
seed: 2
model: opt-13b
hardware: a100-80gb-sxm
cost_model: {kind: roofline}
engine: {policy: prefill_first}
cluster:
  mode: disaggregated
  prefill: {instances: 1, tp: 2}
  decode: {instances: 2, tp: 1}
workload:
  num_requests: 40
  arrival: {rate: 8}
  lengths: {dist: lognormal, prompt_len: 300, output_len: 40}
metrics: {slo: {ttft_ms: 200, tpot_ms: 100}}
"""
STEP_S = 0.010
LINK_S = 0.005


@pytest.fixture(scope="module")
def disagg_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("disagg") / "disagg.yaml"
    path.write_text(DISAGG_YAML)
    return run_scenario(load_scenario(path))


def _pool(num_blocks: int = 100) -> PoolSetup:
    limits = EngineLimits(num_blocks=num_blocks, block_size=16, max_num_seqs=8,
                          max_num_batched_tokens=256, max_model_len=10_000)
    return PoolSetup(1, limits, ConstantCostModel(STEP_S), POLICIES["prefill_first"])


def _disagg(arrived_at, prompt_len, output_len, decode_blocks: int = 100):
    workload = Workload(arrived_at=np.asarray(arrived_at, dtype=float),
                        prompt_len=np.asarray(prompt_len), output_len=np.asarray(output_len))
    setup = EngineSetup((_pool(), _pool(decode_blocks)), kv_transfer_s=lambda n: LINK_S)
    return simulate(workload, setup)


def test_disaggregated_run_figures_show_a_prefill_and_a_decode_instance(disagg_run, tmp_path):
    result = disagg_run.result
    figures = plots.run_figures(disagg_run)
    assert list(figures) == ["step_timeline_prefill", "step_timeline_decode", "token_timeline",
                             "ttft_cdf", "tpot_cdf", "tbt_cdf", "kv_occupancy_prefill",
                             "kv_occupancy_decode"]
    assert "prefill instance 0 of 1" in figures["step_timeline_prefill"].axes[0].get_title()
    assert "decode instance 0 of 2" in figures["step_timeline_decode"].axes[0].get_title()
    assert "prefill instance 0 of 1" in figures["kv_occupancy_prefill"].axes[0].get_title()
    assert "decode instance 0 of 2" in figures["kv_occupancy_decode"].axes[0].get_title()
    for name in ("step_timeline_prefill", "step_timeline_decode"):
        legend = [t.get_text() for t in figures[name].axes[0].get_legend().get_texts()]
        assert any("KV transfer" in t for t in legend), name
        assert not any("preemption" in t for t in legend), name
    # The token timeline zooms in on the handoff of the requests it shows.
    token_top, token_kv = figures["token_timeline"].axes[:2]
    assert any("KV transfer" in t.get_text() for t in token_top.get_legend().get_texts())
    assert token_kv.get_xlabel() == "time after the first token (ms)"
    paths = plots.write_run_figures(disagg_run, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{k}.png" for k in figures)
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC
    # No preemption in this run, yet the prefill instance's KV drops between steps (blocks
    # freed when transfers end): none of those drops may be drawn as a preemption.
    assert int(result.num_preemptions.sum()) == 0
    prefill_steps = plots._replica_step_ids(result, 0)
    assert np.any(np.diff(result.steps.kv_blocks_used[prefill_steps]) < 0)
    assert plots._preemption_steps(result, prefill_steps).size == 0
    kv_ax = figures["kv_occupancy_prefill"].axes[0]
    assert not any(ln.get_marker() == "x" for ln in kv_ax.lines)
    assert "0 preemptions here" in kv_ax.get_title()
    assert "0 preemptions" in figures["kv_occupancy_decode"].axes[0].get_title()


def test_exact_gantt_of_a_disaggregated_handoff():
    # r0: prefill [0, 10 ms] -> first token; KV on the link [10, 15]; decode steps [15, 25]
    # and [25, 35]. r1 queues until 10 ms, prefills [10, 20]; the 3-block decode engine only
    # has room once r0 finishes at 35 ms, so r1's KV waits [20, 35], moves [35, 40], and r1
    # decodes [40, 50].
    result = _disagg([0.0, 0.001], [32, 32], [3, 2], decode_blocks=3)
    assert result.tokens_of(1).tolist() == pytest.approx([0.020, 0.050])

    def bars(gantt, kind: str, row: int) -> list[float]:
        """(start, end) of every bar of a kind in a row, flattened, in ms."""
        return [round(t * 1e3, 6) for r, lo, hi in gantt.bars[kind] if r == row
                for t in (lo, hi)]

    pre = plots._gantt(result, replica=0, start_step=0, max_steps=100, max_requests=10)
    assert pre is not None and pre.role == "prefill" and pre.rows.tolist() == [0, 1]
    assert bars(pre, "prefill", 0) == [0.0, 10.0]
    assert bars(pre, "kv_transfer", 0) == [10.0, 15.0]
    assert bars(pre, "queued", 1) == [1.0, 10.0]
    assert bars(pre, "prefill", 1) == [10.0, 20.0]
    # The prefill instance's last step ends at 20 ms, where r1's wait begins: nothing to draw.
    assert not pre.bars["kv_wait"]
    assert not pre.bars["decode"] and not pre.bars["recompute"]  # decoding happens elsewhere
    assert [(row, round(t * 1e3, 6)) for row, t in pre.kv_done] == [(0, 15.0)]

    dec = plots._gantt(result, replica=1, start_step=0, max_steps=100, max_requests=10)
    assert dec is not None and dec.role == "decode" and dec.rows.tolist() == [0, 1]
    assert not dec.bars["queued"] and not dec.bars["prefill"]
    # r0's transfer ends where the decode instance's first step begins (the window's start).
    assert not bars(dec, "kv_transfer", 0)
    assert bars(dec, "decode", 0) == [15.0, 25.0, 25.0, 35.0]
    assert bars(dec, "kv_wait", 1) == [20.0, 35.0]
    assert bars(dec, "kv_transfer", 1) == [35.0, 40.0]
    assert bars(dec, "decode", 1) == [40.0, 50.0]
    assert [(row, round(t * 1e3, 6)) for row, t in dec.kv_done] == [(0, 15.0), (1, 40.0)]
    assert not dec.bars["recompute"] and not dec.bars["burst"]
    fig = plots.step_timeline(result, replica=1)
    assert "decode instance 0" in fig.axes[0].get_title()


def test_kv_freed_by_a_finished_transfer_is_not_a_preemption(tmp_path):
    # r0 (2 blocks) is prefilled [0, 10 ms] and its KV leaves at 15 ms; r1 (1 block) arrives at
    # 30 ms: the prefill instance's KV drops from 2 to 1 blocks with no request finishing.
    result = _disagg([0.0, 0.030], [32, 16], [3, 3])
    prefill_steps = plots._replica_step_ids(result, 0)
    assert result.steps.kv_blocks_used[prefill_steps].tolist() == [2, 1]
    assert plots._preemption_steps(result, prefill_steps).size == 0
    fig = plots.kv_occupancy(result, replica=0)
    _png(fig, tmp_path, "kv_prefill")
    assert "prefill instance 0" in fig.axes[0].get_title()
    assert not any(ln.get_marker() == "x" for ln in fig.axes[0].lines)
    assert any("KV held" in t.get_text() for t in fig.axes[1].get_legend().get_texts())


def test_decode_instance_preemptions_are_marked_there():
    # 6 decode blocks of 16 tokens: both 32-token prompts fit (2 blocks each), but growing to
    # 32 + 40 tokens (5 blocks each) they cannot both stay: the decode instance preempts.
    result = _disagg([0.0, 0.0], [32, 32], [40, 40], decode_blocks=6)
    num_preemptions = int(result.num_preemptions.sum())
    assert num_preemptions > 0
    assert plots._preemption_steps(result, plots._replica_step_ids(result, 0)).size == 0
    marked = plots._preemption_steps(result, plots._replica_step_ids(result, 1))
    assert 0 < marked.size <= num_preemptions
    fig = plots.kv_occupancy(result, replica=1)
    assert f"{num_preemptions} preemption" in fig.axes[0].get_title()
    # The re-prefill after the preemption happens on the decode instance and is drawn there.
    gantt = plots._gantt(result, replica=1, start_step=0, max_steps=10_000, max_requests=10)
    assert gantt is not None and gantt.bars["recompute"]


def test_pipeline_parallel_kv_uses_each_virtual_engines_blocks(tmp_path):
    workload = Workload(arrived_at=np.zeros(12), prompt_len=np.full(12, 40),
                        output_len=np.full(12, 30))
    limits = EngineLimits(num_blocks=40, block_size=16, max_num_seqs=4,
                          max_num_batched_tokens=256, max_model_len=10_000)
    result = simulate(workload, EngineSetup.colocated(
        POLICIES["chunked_prefill"], ConstantCostModel(STEP_S), limits, pp=2))
    assert np.all(result.steps.kv_blocks_total == 20)
    step_ids = plots._replica_step_ids(result, 0)
    assert plots._has_virtual_engines(result, step_ids)
    assert plots._preemption_steps(result, step_ids).size == 0
    fig = plots.kv_occupancy(result, pp=2)
    _png(fig, tmp_path, "kv_pp")
    (dots,) = [ln for ln in fig.axes[0].lines if ln.get_marker() == "."]
    expected = 100.0 * result.steps.kv_blocks_used[step_ids] / 20
    np.testing.assert_allclose(dots.get_ydata(), expected)
    assert dots.get_ydata().max() <= 100.0
    assert "2 pipeline-parallel virtual engines" in fig.axes[0].get_title()
    _png(plots.step_timeline(result, max_steps=60), tmp_path, "timeline_pp")
