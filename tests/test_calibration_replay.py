"""End-to-end replay of real vLLM runs (OPT-13B, one A100-80GB) through the calibrated model.

Tolerances are the achieved accuracy of the shipped profile with a margin (see
calibration/REPORT.md §4): the check is that a refit or an engine change does not silently make
the simulator drift away from the real system.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simserve.calibration.replay import measured_stats, replay_trace
from simserve.errors import InputError

GROUND_TRUTH = (Path(__file__).resolve().parent.parent / "calibration" / "data" / "distserve"
                / "ground_truth_opt13b_sharegpt")


def test_replay_of_the_1_req_per_s_run_is_within_tolerance():
    run = replay_trace(GROUND_TRUTH / "vllm-100-1.csv")
    assert run.num_requests == 100 and run.output.summary["completed"] == 100
    assert run.output.summary["num_rejected"] == 0
    assert run.error_pct("TPOT mean") == pytest.approx(0, abs=10)
    assert run.error_pct("TPOT p50") == pytest.approx(0, abs=10)
    assert run.error_pct("TTFT p50") == pytest.approx(0, abs=20)
    assert run.error_pct("TTFT p90") == pytest.approx(0, abs=20)


def test_saturation_is_a_kv_limited_queue_not_a_tpot_blowup():
    """At 4 req/s real vLLM holds prefills back when the KV cache is full: TTFT explodes, TPOT
    stays bounded (measured p90 TTFT 29 s, mean TPOT 114 ms)."""
    busy = replay_trace(GROUND_TRUTH / "vllm-400-4.csv")
    calm = replay_trace(GROUND_TRUTH / "vllm-300-3.csv")
    assert busy.simulated["TTFT p90"] > 10 * calm.simulated["TTFT p90"]
    assert busy.simulated["TTFT p90"] > 5_000
    assert busy.error_pct("TPOT mean") == pytest.approx(0, abs=15)
    steps = busy.output.result.steps
    assert steps.kv_blocks_used.max() > 0.95 * steps.kv_blocks_total.max()


def test_ground_truth_without_measured_columns_is_refused(tmp_path):
    bad = tmp_path / "trace.csv"
    bad.write_text("arrival_s,prompt_len,output_len\n0.0,10,5\n")
    with pytest.raises(InputError, match="missing column 'ttft_ms'"):
        measured_stats(bad)
