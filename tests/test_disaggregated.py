"""Disaggregated prefill/decode and pipeline parallelism in the engine: exact timelines with a
constant cost model and a fixed link, pipelining throughput, and invariants (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_properties import queue_inputs

from simserve.costmodel import ConstantCostModel
from simserve.engine import POLICIES, QUEUES, EngineLimits, EngineSetup, PoolSetup, simulate
from simserve.workload import Workload

STEP_S = 0.010
LINK_S = 0.005


def _limits(**kw) -> EngineLimits:
    params = dict(num_blocks=100, block_size=16, max_num_seqs=8,
                  max_num_batched_tokens=256, max_model_len=10_000)
    params.update(kw)
    return EngineLimits(**params)


def _pool(policy="prefill_first", **kw) -> PoolSetup:
    instances = kw.pop("instances", 1)
    pp = kw.pop("pp", 1)
    return PoolSetup(instances, _limits(**kw), ConstantCostModel(STEP_S), POLICIES[policy], pp=pp)


def simulate_disaggregated(workload, prefill, decode, kv_transfer_s):
    return simulate(workload, EngineSetup((prefill, decode), kv_transfer_s=kv_transfer_s))


def _colocated(workload, **kw):
    limits = _limits(**{k: kw.pop(k) for k in ("num_blocks", "max_num_seqs") if k in kw})
    return simulate(workload, EngineSetup.colocated(
        POLICIES["chunked_prefill"], ConstantCostModel(STEP_S), limits, **kw))


def _workload(arrived_at, prompt_len, output_len) -> Workload:
    return Workload(arrived_at=np.asarray(arrived_at, dtype=float),
                    prompt_len=np.asarray(prompt_len), output_len=np.asarray(output_len))


TWO = dict(arrived_at=[0.0, 0.001], prompt_len=[32, 32], output_len=[3, 2])


def test_two_requests_prefill_transfer_decode_add_up():
    r = simulate_disaggregated(_workload(**TWO), _pool(), _pool(), lambda n: LINK_S)
    # r0: prefill [0, 10 ms] -> first token; KV on the link [10, 15]; decode steps
    # [15, 25] and [25, 35]. r1 waits for the prefill engine: prefill [10, 20], link [20, 25];
    # it lands at 25 ms, the instant r0's first decode step ends, so the plan made then takes
    # it (events of one instant come before the step end): it decodes in [25, 35].
    assert r.tokens_of(0).tolist() == pytest.approx([0.010, 0.025, 0.035])
    assert r.tokens_of(1).tolist() == pytest.approx([0.020, 0.035])
    assert r.kv_transfer_s.tolist() == pytest.approx([LINK_S, LINK_S])
    assert r.kv_transfer_wait_s.tolist() == pytest.approx([0.0, 0.0])
    assert r.replica.tolist() == [0, 0] and r.decode_replica.tolist() == [1, 1]
    # Steps of the prefill instance (0) are prefill-only; of the decode instance, decode-only.
    on_prefill = r.steps.replica == 0
    assert np.all(r.steps.num_decode_tokens[on_prefill] == 0)
    assert np.all(r.steps.num_prefill_tokens[~on_prefill] == 0)


def test_request_waits_for_decode_kv_and_prefill_keeps_its_blocks_meanwhile():
    # A decode engine of 3 blocks x 16 tokens: r0 (32-token prompt) takes 2 blocks and a
    # third at its second token; r1's 2 blocks only free up when r0 finishes at 35 ms.
    r = simulate_disaggregated(
        _workload(**TWO), _pool(), _pool(num_blocks=3), lambda n: LINK_S
    )
    assert r.tokens_of(0).tolist() == pytest.approx([0.010, 0.025, 0.035])
    assert r.tokens_of(1).tolist() == pytest.approx([0.020, 0.050])
    assert r.kv_transfer_wait_s.tolist() == pytest.approx([0.0, 0.015])
    # The prefill instance still holds r1's 2 blocks after r1's prefill (step 2 of replica 0).
    prefill_steps = np.flatnonzero(r.steps.replica == 0)
    assert r.steps.kv_blocks_used[prefill_steps].tolist() == [2, 2]


def test_transfers_queue_on_the_prefill_instance_link():
    # Two prompts prefilled together finish at 10 ms; the link carries one KV at a time.
    wl = _workload([0.0, 0.0], [32, 32], [2, 2])
    r = simulate_disaggregated(wl, _pool(), _pool(), lambda n: LINK_S)
    assert r.kv_transfer_wait_s.tolist() == pytest.approx([0.0, LINK_S])
    # r0 lands at 15 ms and decodes [15, 25]; r1 lands at 20 ms and decodes [25, 35].
    assert r.tokens_of(0).tolist() == pytest.approx([0.010, 0.025])
    assert r.tokens_of(1).tolist() == pytest.approx([0.010, 0.035])


def test_transfer_time_is_priced_by_prompt_tokens():
    wl = _workload([0.0, 1.0], [16, 160], [2, 2])
    r = simulate_disaggregated(wl, _pool(), _pool(), lambda n: 1e-4 * n)
    assert r.kv_transfer_s.tolist() == pytest.approx([0.0016, 0.016])


def test_one_token_requests_finish_on_the_prefill_instance():
    wl = _workload([0.0, 0.0], [32, 32], [1, 2])
    r = simulate_disaggregated(wl, _pool(), _pool(), lambda n: LINK_S)
    assert r.tokens_of(0).tolist() == pytest.approx([0.010])
    assert np.isnan(r.kv_transfer_s[0]) and r.decode_replica[0] == -1
    assert r.finished_at[0] == pytest.approx(0.010)


def test_requests_too_large_for_a_decode_engine_are_rejected():
    # 3 blocks hold 48 tokens: prompt 40 + 10 outputs needs 49 - 1 = 49 -> 4 blocks.
    wl = _workload([0.0, 0.0], [40, 16], [10, 4])
    r = simulate_disaggregated(wl, _pool(), _pool(num_blocks=3), lambda n: LINK_S)
    assert r.rejected.tolist() == [2, 0]


@pytest.mark.parametrize("pp", [2, 4])
def test_pipeline_throughput_approaches_pp_times_one_stage(pp):
    # Offline, decode-heavy: every virtual engine always has a micro-batch ready, so stage 0
    # is never idle and steps complete pp times as often as with one micro-batch in flight.
    n, out = 8 * pp, 400
    wl = _workload([0.0] * n, [16] * n, [out] * n)

    def makespan(pipeline: int) -> float:
        r = _colocated(wl, num_blocks=4000, max_num_seqs=8, pp=pipeline)
        return float(np.nanmax(r.finished_at))

    # pp=1 runs the 8pp requests as pp waves of 8; pp stages run all waves at once, each
    # micro-batch taking pp stage times of STEP_S / pp.
    serial = makespan(1)
    assert serial == pytest.approx(pp * out * STEP_S, rel=0.01)
    speedup = serial / makespan(pp)
    assert speedup == pytest.approx(pp, rel=0.02)


def test_pipeline_latency_is_sum_of_stages_plus_sends():
    # One request alone: every step crosses pp stages (STEP_S / pp each) and pp - 1 sends.
    wl = _workload([0.0], [16], [3])
    send_s = 0.001
    r = _colocated(wl, pp=4, stage_send_s=lambda n: send_s)
    step = STEP_S + 3 * send_s
    assert r.tokens_of(0).tolist() == pytest.approx([step, 2 * step, 3 * step])


def test_pipeline_virtual_engines_split_kv_blocks():
    # 8 blocks over pp=2 -> 4 per virtual engine: a 5-block request is rejected.
    wl = _workload([0.0, 0.0], [70, 40], [8, 8])
    r = _colocated(wl, num_blocks=8, pp=2)
    assert r.rejected.tolist() == [2, 0]


@st.composite
def disaggregated_runs(draw):
    n = draw(st.integers(1, 12))
    gaps = draw(st.lists(st.floats(0, 0.05), min_size=n, max_size=n))
    arrived = np.cumsum([0.0, *gaps[1:]])
    prompt = draw(st.lists(st.integers(1, 60), min_size=n, max_size=n))
    output = draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))

    # Both pools page KV in blocks of the same size (the scenario's engine.block_size).
    block = draw(st.sampled_from([4, 16]))

    def pool():
        return PoolSetup(
            draw(st.integers(1, 2)),
            _limits(num_blocks=draw(st.integers(2, 30)), block_size=block,
                    max_num_seqs=draw(st.integers(1, 5)),
                    max_num_batched_tokens=draw(st.integers(16, 80)), max_model_len=200),
            ConstantCostModel(STEP_S),
            POLICIES[draw(st.sampled_from(["prefill_first", "chunked_prefill", "mixed"]))],
            QUEUES[draw(st.sampled_from(sorted(QUEUES)))],
            router=draw(st.sampled_from(["round_robin", "least_outstanding", "least_kv"])),
            pp=draw(st.integers(1, 2)),
        )

    prefill, decode = pool(), pool()
    link_s_per_token = draw(st.floats(0, 1e-3))
    workload = Workload(arrived_at=arrived, prompt_len=np.array(prompt),
                        output_len=np.array(output), **draw(queue_inputs(n)))
    return workload, prefill, decode, link_s_per_token


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(disaggregated_runs())
def test_disaggregated_invariants(run):
    workload, prefill, decode, link = run
    # The engine itself asserts that no engine over-allocates KV, that a transfer never
    # over-admits a decode engine, and that every block (prefill-side ones held for
    # transfers included) is free when the run ends.
    r = simulate_disaggregated(workload, prefill, decode, lambda n: 1e-3 + link * n)
    counts = np.diff(r.token_offsets)
    served = r.rejected == 0
    assert np.array_equal(counts[served], r.output_len[served])
    assert np.all(counts[~served] == 0)
    # KV never above capacity on either side (per instance; pp engines split the blocks).
    first_decode = prefill.instances
    on_prefill = r.steps.replica < first_decode
    assert np.all(r.steps.kv_blocks_used[on_prefill] <= prefill.blocks_per_engine)
    assert np.all(r.steps.kv_blocks_used[~on_prefill] <= decode.blocks_per_engine)
    # Requests with more than one token went through exactly one transfer, after the
    # first token and before the second.
    multi = served & (r.output_len > 1)
    assert np.all(np.isfinite(r.kv_transfer_s[multi]))
    assert np.all(np.isnan(r.kv_transfer_s[served & (r.output_len == 1)]))
    assert np.all(r.kv_transfer_wait_s[multi] >= -1e-12)
    for rid in np.flatnonzero(multi):
        t = r.tokens_of(rid)
        landed = t[0] + r.kv_transfer_wait_s[rid] + r.kv_transfer_s[rid]
        assert landed <= t[1] + 1e-9
        assert np.all(np.diff(t) >= 0)
    assert np.all(r.replica[served] < first_decode)
    assert np.all(r.decode_replica[multi] >= first_decode)
    # Each preemption is logged once, by the instance (prefill or decode) that made it.
    assert int(r.steps.num_preempted.sum()) == int(r.num_preemptions.sum())
