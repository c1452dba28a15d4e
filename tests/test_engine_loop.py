"""The engine loop's CPU terms: shipped per engine generation, fitted on real runs only, and
what the kernel model plus those terms reproduces of the real vLLM runs."""

from __future__ import annotations

import numpy as np
import pytest

from simserve.calibration.engine_loop_fit import loop_runs, replay_run
from simserve.calibration.served_v1 import V1_DIR, V1_RUNS, occupancy_series, v1_run_csv
from simserve.calibration.v1_steps import TickStep, by_batch, fit_extra, v1_step_evidence
from simserve.config import load_scenario
from simserve.costmodel.engine_loop import loop_terms
from simserve.errors import InputError
from simserve.resolve import resolve


def test_shipped_v1_csvs_are_the_conversion_of_the_server_logs() -> None:
    for name in V1_RUNS:
        assert (V1_DIR / name / "requests.csv").read_text() == v1_run_csv(V1_DIR / name)


def test_occupancy_counts_running_and_waiting() -> None:
    t, running, waiting = occupancy_series(np.array([0.0, 0.5]), np.array([0.2, 1.5]),
                                           np.array([2.5, 3.0]))
    assert list(t) == [0.0, 1.0, 2.0, 3.0]
    assert list(running) == [0, 1, 2, 0]
    assert list(waiting) == [1, 1, 0, 0]


def test_shipped_terms_are_physical_and_per_generation() -> None:
    v0, v1 = loop_terms("v0"), loop_terms("v1")
    assert v0.version == "v0" and v1.version == "v1"
    # V0 (Ray actors, serial): time per running sequence; V1: a serial per-step part only.
    assert 100 <= v0.per_seq_us <= 2000
    assert 1000 <= v1.per_step_us <= 20000
    assert "OPT-13B" in v0.source and "RTX PRO 6000" in v1.source


def test_scenario_overrides_loop_terms(tmp_path) -> None:
    sc = load_scenario("scenarios/validation/llama31-8b-rtxpro6000-vllm-v1.yaml",
                       ["cost_model.loop_per_step_us=1234", "workload.num_requests=5"])
    loop = resolve(sc).cost_model.describe()["engine_loop"]
    assert loop["per_step_us"] == 1234 and loop["source"] == "scenario"
    assert loop["per_seq_us"] == loop_terms("v1").per_seq_us
    with pytest.raises(InputError, match=r"cost_model\.loop_per_seq_us: must be >= 0"):
        load_scenario("scenarios/validation/llama31-8b-rtxpro6000-vllm-v1.yaml",
                      ["cost_model.loop_per_seq_us=-1"])


def test_more_loop_time_slows_the_replay() -> None:
    run = next(r for r in loop_runs() if r.version == "v1" and "8B" in r.label)
    fast = replay_run(run, {"per_step_us": 0.0, "per_seq_us": 0.0})
    slow = replay_run(run, {"per_step_us": 5000.0, "per_seq_us": 0.0})
    assert slow.simulated["TPOT mean"] > fast.simulated["TPOT mean"] + 3.0


def test_v0_runs_at_1_and_3_req_s_within_10_percent_and_the_knee() -> None:
    # REPORT.md §7.6: only the loop terms were fitted (on the 1-3 req/s runs); the 4 req/s
    # run is held out and must sit past the knee.
    runs = {r.label: replay_run(r) for r in loop_runs() if r.version == "v0"}
    for rate, metric, tolerance in (("1", "TTFT p50", 0.10), ("3", "TTFT p50", 0.10),
                                    ("3", "TPOT mean", 0.10), ("1", "TPOT mean", 0.15)):
        # NOTE: 1 req/s misses the 10% TPOT target (REPORT.md §7.10): its simulated median
        # TPOT is 11% low, and its mean (100 requests) moves by several percent with whether
        # one request of two output tokens waits behind another's prefill (a 0.26 s TPOT).
        r = runs[f"OPT-13B A100 {rate} req/s"]
        assert r.simulated[metric] == pytest.approx(r.measured[metric], rel=tolerance)
    p90_3 = runs["OPT-13B A100 3 req/s"].simulated["TTFT p90"]
    p90_4 = runs["OPT-13B A100 4 req/s"].simulated["TTFT p90"]
    assert p90_4 / p90_3 >= 10


def test_shipped_fitted_range_is_that_of_the_fit_replays() -> None:
    # The batches and steps the V0 terms were fitted on, as write_loop_terms records them.
    v0 = loop_terms("v0")
    seqs = tokens = 0
    for run in (r for r in loop_runs() if r.version == "v0" and r.fit):
        steps = replay_run(run).output.result.steps
        seqs = max(seqs, int(np.max(steps.num_seqs)))
        tokens = max(tokens, int(np.max(np.asarray(steps.num_prefill_tokens)
                                        + np.asarray(steps.num_decode_tokens))))
    assert (v0.fitted_max_seqs, v0.fitted_max_tokens) == (seqs, tokens)


def test_a_v0_run_past_the_fitted_batches_says_its_cpu_time_is_extrapolated() -> None:
    v0 = loop_terms("v0")
    assert v0.fitted_max_seqs is not None and v0.fitted_max_tokens is not None
    inside = v0.extrapolation_warning(np.array([1, v0.fitted_max_seqs]),
                                      np.array([10, v0.fitted_max_tokens]))
    assert inside is None
    line = v0.extrapolation_warning(np.array([1, v0.fitted_max_seqs + 1, 2]),
                                    np.array([10, 10, v0.fitted_max_tokens + 1]))
    assert line is not None and line.startswith("2 of 3 steps (66.7%)")
    assert f"1 with more than {v0.fitted_max_seqs} running sequences" in line
    # V1's terms do not grow with the batch: nothing to extrapolate.
    assert loop_terms("v1").extrapolation_warning(np.array([1000]), np.array([9000])) is None


def test_v1_terms_fitted_on_the_tp1_run_and_the_tp2_run_held_out() -> None:
    # REPORT.md §7.7: the TP2 run's extra is its all-reduces (slower than the table), not the
    # engine loop; the V1 terms are fitted on the TP1 run only.
    runs = {r.label: r for r in loop_runs() if r.version == "v1"}
    tp1, tp2 = runs["Llama-3.1-8B RTX PRO 6000"], runs["Qwen3-32B RTX PRO 6000"]
    assert tp1.fit and not tp2.fit and "all-reduce" in tp2.held_out
    assert loop_terms("v1").source == tp1.label
    fitted = replay_run(tp1)
    for metric in ("TTFT p50", "TPOT mean"):
        assert fitted.simulated[metric] == pytest.approx(fitted.measured[metric], rel=0.10)
    # Held out, it runs too fast by what its slow collectives add (§7.7: ~20-30%).
    held = replay_run(tp2)
    for metric in ("TTFT p50", "TPOT mean"):
        assert 0.65 <= held.simulated[metric] / held.measured[metric] <= 0.95


def test_extra_per_step_fit_recovers_a_known_mechanism() -> None:
    # Seconds of steps whose extra is 1.5 ms + 2x their all-reduces: the all-reduce form
    # recovers it exactly, the flat form cannot.
    ticks = []
    for batch in (1, 8, 32, 64, 128):
        kernel_ms, allreduce_ms = 20.0 + 0.1 * batch, 0.5 + 0.04 * batch
        step_ms = kernel_ms + 1.5 + 2.0 * allreduce_ms
        ticks.append(TickStep(float(batch), 0.0, float(batch), 1000.0, 1e3 / step_ms,
                              kernel_ms, allreduce_ms))
    fit = fit_extra(ticks, "flat + x all-reduces")
    assert fit.coefficients["per_step_ms"] == pytest.approx(1.5)
    assert fit.coefficients["x_allreduce"] == pytest.approx(2.0)
    assert fit.rms_pct < 1e-6 < fit_extra(ticks, "flat").rms_pct


def test_tp2_run_extra_grows_with_its_all_reduces_not_its_kernels() -> None:
    # The step-level evidence REPORT.md §7.7 argues from: the TP2 run's decode seconds.
    tp2 = next(r for r in v1_step_evidence() if r.tp == 2)
    groups = by_batch(tp2.decode)
    small = np.mean([x.extra_ms for x in groups[0][1]])
    large = np.mean([x.extra_ms for x in groups[-1][1]])
    assert small < 1.5 and large > 8.0
    assert (fit_extra(tp2.decode, "flat + x all-reduces").rms_pct
            < 0.5 * fit_extra(tp2.decode, "flat").rms_pct)
    # Clocks (a multiple of the kernels) need a negative per-step part: unphysical.
    assert fit_extra(tp2.decode, "flat + x kernel step").coefficients["per_step_ms"] < 0
