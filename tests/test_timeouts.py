"""Client timeouts: a request whose client gave up is cancelled at the engine's next step,
wherever it is (waiting, prefilling, decoding); its KV is freed, its tokens so far stay
counted, and the summary reports it apart from completed requests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simserve.config import scenario_from_mapping
from simserve.costmodel import ConstantCostModel
from simserve.engine import POLICIES, QUEUES, EngineLimits, EngineSetup, simulate
from simserve.errors import InputError
from simserve.experiments.run import run_scenario
from simserve.workload import Workload

STEP_S = 0.01


def _run(arrived_at, prompt_len, output_len, timeout_s, *, fast_forward=True, **kw):
    limits = EngineLimits(num_blocks=kw.pop("num_blocks", 100), block_size=4,
                          max_num_seqs=kw.pop("max_num_seqs", 8), max_num_batched_tokens=32,
                          max_model_len=10_000)
    workload = Workload(arrived_at=np.asarray(arrived_at, dtype=float),
                        prompt_len=np.asarray(prompt_len), output_len=np.asarray(output_len),
                        client_timeout_s=timeout_s, **kw)
    setup = EngineSetup.colocated(POLICIES["chunked_prefill"], ConstantCostModel(STEP_S), limits)
    return simulate(workload, setup, fast_forward=fast_forward)


def test_a_decoding_request_is_cancelled_at_the_first_step_after_its_deadline():
    # 100 tokens asked, the client leaves after 0.255 s: steps end at 0.01, 0.02, ...; the
    # engine cancels at the step boundary 0.26, after 26 tokens.
    r = _run([0.0], [4], [100], 0.255)
    assert r.timed_out.tolist() == [True]
    assert np.diff(r.token_offsets).tolist() == [26]
    assert np.isnan(r.finished_at[0])
    # Stepping one event per step gives the same records.
    again = _run([0.0], [4], [100], 0.255, fast_forward=False)
    assert np.array_equal(r.token_times_s, again.token_times_s)


def test_a_waiting_request_is_dropped_with_no_token():
    # One sequence at a time, every client leaves after 0.25 s: request 0 finishes at 0.20;
    # request 1 runs from 0.20 and is cancelled at the boundary 0.25 after 5 tokens; request
    # 2 is still waiting then and leaves with none.
    r = _run([0.0, 0.0, 0.0], [4, 4, 4], [20, 10, 3], 0.25, max_num_seqs=1)
    assert r.timed_out.tolist() == [False, True, True]
    assert np.diff(r.token_offsets).tolist() == [20, 5, 0]
    r = _run([0.0, 0.0, 0.0], [4, 4, 4], [20, 10, 3], 1.0, max_num_seqs=1)
    assert r.timed_out.tolist() == [False, False, False]


def test_a_session_continues_after_a_timed_out_turn():
    r = _run([0.0, np.nan], [4, 4], [100, 2], 0.105, after=np.array([-1, 0]),
             think_s=np.array([0.0, 0.02]))
    assert r.timed_out.tolist() == [True, False]
    # Turn 0 is cancelled at the step boundary 0.11; turn 1 is sent 0.02 later.
    assert r.arrived_at[1] == pytest.approx(0.13)


def test_summary_counts_timed_out_requests_apart_and_as_slo_failures():
    scenario = scenario_from_mapping({
        "name": "timeouts", "cost_model": {"kind": "roofline"},
        "workload": {"num_requests": 300, "arrival": {"rate": 40}, "client_timeout_s": 5,
                     "lengths": {"prompt_len": 1000, "output_len": 300}},
        "metrics": {"slo": {"ttft_ms": 4000}},
    })
    output = run_scenario(scenario)
    s, table = output.summary, output.requests
    assert s["num_timed_out"] == int(table["timed_out"].sum()) > 0
    assert s["num_requests"] == (s["completed"] + s["num_rejected"] + s["num_unfinished"]
                                 + s["num_excluded_warmup"] + s["num_excluded_cooldown"]
                                 + s["num_timed_out"])
    assert not np.any(table["measured"] & table["timed_out"])
    good = int((table["good"] & table["measured"]).sum())
    assert s["slo_attainment"] == pytest.approx(good / (s["completed"] + s["num_timed_out"]))
    assert s["timed_out_output_tokens"] == int(table["num_output_tokens"][table["timed_out"]]
                                               .sum())


def test_timeouts_are_refused_on_disaggregated_clusters():
    with pytest.raises(InputError, match="co-located clusters only") as info:
        scenario_from_mapping({"cluster": {"mode": "disaggregated"},
                               "workload": {"client_timeout_s": 10}})
    assert info.value.field == "workload.client_timeout_s"


@st.composite
def timed_runs(draw):
    n = draw(st.integers(1, 12))
    gaps = draw(st.lists(st.floats(0, 0.05), min_size=n, max_size=n))
    workload = Workload(
        arrived_at=np.cumsum([0.0, *gaps[1:]]),
        prompt_len=np.array(draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))),
        output_len=np.array(draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))),
        client_timeout_s=draw(st.floats(0.005, 0.4)),
    )
    limits = EngineLimits(num_blocks=draw(st.integers(4, 40)), block_size=4,
                          max_num_seqs=draw(st.integers(1, 6)),
                          max_num_batched_tokens=draw(st.integers(16, 64)), max_model_len=200)
    setup = EngineSetup.colocated(
        POLICIES[draw(st.sampled_from(["chunked_prefill", "prefill_first", "mixed"]))],
        ConstantCostModel(0.01), limits, queue=QUEUES[draw(st.sampled_from(sorted(QUEUES)))],
        replicas=draw(st.integers(1, 2)), pp=draw(st.integers(1, 2)),
        prefix_caching=draw(st.booleans()))
    return workload, setup


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timed_runs())
def test_timeout_invariants(run):
    workload, setup = run
    r = simulate(workload, setup)
    counts = np.diff(r.token_offsets)
    done = np.isfinite(r.finished_at)
    # A request finishes, is rejected, or times out; never two of these.
    assert np.all(done.astype(int) + (r.rejected != 0) + r.timed_out == 1)
    assert np.array_equal(counts[done], r.output_len[done])
    assert np.all(counts[r.timed_out] < r.output_len[r.timed_out])
    # No token after the step that follows the client's deadline.
    deadline = r.arrived_at + workload.client_timeout_s
    times = r.tokens
    for rid in np.flatnonzero(r.timed_out):
        t = times.chunk(rid, rid + 1)
        assert t.size == 0 or t.max() <= deadline[rid] + 0.01 * setup.pools[0].pp + 1e-9
    # The engine drained every KV block (it checks itself), and stepping agrees.
    again = simulate(workload, setup, fast_forward=False)
    assert np.array_equal(r.token_times_s, again.token_times_s)
    assert np.array_equal(r.timed_out, again.timed_out)
