"""Exact timelines with the constant cost model: who runs in which step, when tokens land."""

from __future__ import annotations

import numpy as np
import pytest

from simserve.costmodel import ConstantCostModel
from simserve.engine import POLICIES, QUEUES, EngineLimits, EngineSetup, simulate
from simserve.workload import Workload

STEP_S = 0.01


def _run(policy, arrived_at, prompt_len, output_len, **limits):
    params = dict(
        num_blocks=100,
        block_size=4,
        max_num_seqs=8,
        max_num_batched_tokens=32,
        max_model_len=10_000,
    )
    params.update(limits)
    workload = Workload(
        arrived_at=np.asarray(arrived_at, dtype=float),
        prompt_len=np.asarray(prompt_len),
        output_len=np.asarray(output_len),
    )
    setup = EngineSetup.colocated(POLICIES[policy], ConstantCostModel(STEP_S),
                                  EngineLimits(**params))
    return simulate(workload, setup)


def _chunked_setup(**kw) -> EngineSetup:
    return EngineSetup.colocated(POLICIES["chunked_prefill"], ConstantCostModel(STEP_S),
                                 EngineLimits(100, 4, 8, 32, 10_000), **kw)


def _times(result, rid):
    return np.round(result.tokens_of(rid) / STEP_S).astype(int).tolist()  # in steps


# r0: short prompt, 6 output tokens, decoding when r1's 32-token prompt arrives mid-step.
STALL = dict(arrived_at=[0.0, 0.015], prompt_len=[4, 32], output_len=[6, 2])


def test_prefill_first_stalls_running_decodes():
    r = _run("prefill_first", **STALL)
    # step 2 is r1's prefill-only step: r0 gets no token at t=3 (the stall).
    assert _times(r, 0) == [1, 2, 4, 5, 6, 7]
    assert _times(r, 1) == [3, 4]
    assert r.steps.num_prefill_tokens.tolist() == [4, 0, 32, 0, 0, 0, 0]
    assert r.steps.num_decode_tokens.tolist() == [0, 1, 0, 2, 1, 1, 1]
    assert r.first_scheduled_at[1] == pytest.approx(0.02)


def test_chunked_prefill_does_not_stall():
    r = _run("chunked_prefill", **STALL)
    # r1 is chunked 31 + 1 around r0's decodes; r0 gets a token every step.
    assert _times(r, 0) == [1, 2, 3, 4, 5, 6]
    assert _times(r, 1) == [4, 5]
    assert r.steps.num_prefill_tokens.tolist() == [4, 0, 31, 1, 0, 0]
    assert r.steps.num_decode_tokens.tolist() == [0, 1, 1, 1, 2, 1]


def test_mixed_runs_whole_prompt_alongside_decodes():
    r = _run("mixed", arrived_at=[0.0, 0.015], prompt_len=[4, 24], output_len=[6, 2])
    assert _times(r, 0) == [1, 2, 3, 4, 5, 6]
    assert _times(r, 1) == [3, 4]
    assert r.steps.num_prefill_tokens.tolist() == [4, 0, 24, 0, 0, 0]
    assert r.steps.num_decode_tokens.tolist() == [0, 1, 1, 2, 1, 1]


def test_mixed_waits_when_prompt_and_decodes_exceed_budget():
    # 32-token prompt + 1 decode > budget 32: r1 waits for r0 to finish (no chunking).
    r = _run("mixed", **STALL)
    assert _times(r, 0) == [1, 2, 3, 4, 5, 6]
    assert _times(r, 1) == [7, 8]


def test_static_batches_whole_requests_and_admits_nobody_meanwhile():
    r = _run("static", arrived_at=[0.0, 0.0, 0.005], prompt_len=[4, 8, 4], output_len=[3, 1, 2])
    assert _times(r, 0) == [1, 2, 3]
    assert _times(r, 1) == [1]  # finished slot stays idle
    assert _times(r, 2) == [4, 5]  # arrived at 0.5 steps, waits for the whole batch
    assert r.steps.num_seqs.tolist() == [2, 1, 1, 1, 1]


def test_static_respects_max_num_seqs():
    r = _run(
        "static", arrived_at=[0, 0, 0], prompt_len=[4, 4, 4], output_len=[2, 2, 2], max_num_seqs=2
    )
    assert [_times(r, i) for i in range(3)] == [[1, 2], [1, 2], [3, 4]]


def test_chunked_budget_limits_admission_and_chunks_last_prompt():
    r = _run("chunked_prefill", arrived_at=[0, 0, 0], prompt_len=[20, 20, 20], output_len=[1, 1, 1])
    assert r.steps.num_prefill_tokens.tolist() == [32, 28]
    assert [_times(r, i) for i in range(3)] == [[1], [2], [2]]


def test_preemption_recompute_frees_newest_and_all_tokens_still_emitted():
    # 6 blocks of 4 tokens: two requests of 8-token prompts grow until they cannot both fit.
    r = _run(
        "chunked_prefill", arrived_at=[0, 0], prompt_len=[8, 8], output_len=[10, 10], num_blocks=6
    )
    assert r.num_preemptions.tolist() == [0, 1]  # the most recently admitted is preempted
    counts = np.diff(r.token_offsets)
    assert counts.tolist() == [10, 10]
    assert np.all(r.steps.kv_blocks_used <= 6)
    # r0 never waits once running; r1 resumes only after r0 finishes and frees its blocks.
    assert np.all(np.diff(r.tokens_of(0)) == pytest.approx(STEP_S))
    assert r.tokens_of(1)[-1] > r.tokens_of(0)[-1]


def test_prefill_first_preempts_on_decode_when_kv_runs_out():
    r = _run(
        "prefill_first", arrived_at=[0, 0], prompt_len=[8, 8], output_len=[10, 10], num_blocks=6
    )
    assert r.num_preemptions.tolist() == [0, 1]
    assert np.diff(r.token_offsets).tolist() == [10, 10]


def test_requests_that_can_never_fit_are_rejected_with_a_reason():
    r = _run(
        "prefill_first",
        arrived_at=[0, 0, 0, 0],
        prompt_len=[4, 40, 4, 200],
        output_len=[2, 2, 500, 2],
        num_blocks=50,
        max_model_len=300,
    )
    # 40 > budget 32 (whole-prompt policy); 4+500 > max_model_len; 200+2 blocks > 50*4.
    assert r.rejected.tolist() == [0, 3, 1, 2]
    assert np.diff(r.token_offsets).tolist() == [2, 0, 0, 0]


def test_closed_loop_issues_next_request_on_completion():
    workload = Workload(
        arrived_at=np.full(4, np.nan),
        prompt_len=np.array([4, 4, 4, 4]),
        output_len=np.array([1, 2, 1, 1]),
        concurrency=2,
    )
    r = simulate(workload, _chunked_setup())
    assert np.round(r.arrived_at / STEP_S).astype(int).tolist() == [0, 0, 1, 2]


def test_round_robin_spreads_requests_over_replicas():
    workload = Workload(arrived_at=np.zeros(4), prompt_len=np.full(4, 4), output_len=np.full(4, 3))
    r = simulate(workload, _chunked_setup(replicas=2))
    assert r.replica.tolist() == [0, 1, 0, 1]
    # Two replicas run in parallel: everybody done after 3 steps.
    assert np.nanmax(r.finished_at) == pytest.approx(3 * STEP_S)


def test_least_outstanding_router_balances_load():
    workload = Workload(
        arrived_at=np.array([0.0, 0.0, 0.0]),
        prompt_len=np.full(3, 4),
        output_len=np.array([50, 1, 1]),
    )
    r = simulate(workload, _chunked_setup(replicas=2, router="least_outstanding"))
    assert r.replica.tolist() == [0, 1, 0]


@pytest.mark.parametrize("policy", ["chunked_prefill", "prefill_first", "mixed"])
def test_a_request_arriving_as_a_step_ends_is_in_the_next_step(policy):
    """The rule for simultaneous events: an arrival at the instant a step ends is seen by the
    plan made at that instant (step ends come last among the events of an instant), whatever
    order the events were created in. Steps end at 0.01 and 0.02 here."""
    r = _run(policy, [0.0, 0.005, 0.01], [4, 4, 4], [3, 3, 3], max_num_batched_tokens=64)
    # r1 arrived during the first step: it starts at its end, with r2, which arrives then.
    assert r.first_scheduled_at.tolist() == pytest.approx([0.0, 0.01, 0.01])


def test_progress_reports_requests_sent_up_to_all_of_them():
    workload = Workload(arrived_at=np.arange(250) * 0.001, prompt_len=np.full(250, 4),
                        output_len=np.full(250, 2))
    seen: list[int] = []
    simulate(workload, _chunked_setup(), progress=seen.append)
    # About every 1% of the requests (every 2 of 250), ending with all of them.
    assert seen == sorted(seen) and seen[-1] == 250 and len(seen) == 125


def _priority_run(queue: str):
    """r0 (priority 1) decodes alone; r1 (priority 0) arrives mid-step 2 and is admitted at
    step 3; at step 4 r1's next token needs a KV block and none is free. 5 blocks of 4 tokens:
    each request alone fits (8 + 10 - 1 tokens), not both."""
    workload = Workload(arrived_at=np.array([0.0, 0.015]), prompt_len=np.array([8, 8]),
                        output_len=np.array([10, 10]), priority=np.array([1, 0]))
    setup = EngineSetup.colocated(POLICIES["chunked_prefill"], ConstantCostModel(STEP_S),
                                  EngineLimits(5, 4, 8, 32, 10_000), queue=QUEUES[queue])
    return simulate(workload, setup)


def test_priority_preempts_the_low_priority_request_which_recomputes_later():
    r = _priority_run("priority")
    # r0: prefill (token 1 at step 1), decodes at steps 2-3 (3 blocks for 10 tokens).
    # r1: prefilled in step 3 (2 blocks, none left). Step 4: r1's 9th token needs a block:
    # the lowest-priority running request, r0, is preempted (its 3 blocks freed).
    # r1 decodes to its end at step 12 (5 blocks); r0 waits, as recomputing its 8 + 3 tokens
    # needs 3 blocks, and comes back at step 13: prompt and 3 tokens recomputed, token 4.
    assert _times(r, 1) == list(range(3, 13))
    assert _times(r, 0) == [1, 2, 3, *range(13, 20)]
    assert r.num_preemptions.tolist() == [1, 0]
    assert r.steps.num_preempted.tolist()[3] == 1
    assert r.steps.num_prefill_tokens.tolist() == [8, 0, 8, *[0] * 9, 11, *[0] * 6]
    assert r.first_scheduled_at.tolist() == pytest.approx([0.0, 0.02])


def test_fcfs_preempts_the_newest_request_instead():
    r = _priority_run("fcfs")
    # Same KV squeeze at step 4, but FCFS preempts the most recently admitted, r1, which
    # comes back (prompt + its first token recomputed) once r0 has finished at step 10.
    assert _times(r, 0) == list(range(1, 11))
    assert _times(r, 1) == [3, *range(11, 20)]
    assert r.num_preemptions.tolist() == [0, 1]
    assert r.steps.num_prefill_tokens.tolist() == [8, 0, 8, *[0] * 7, 9, *[0] * 8]


@pytest.mark.parametrize("fast_forward", [True, False])
@pytest.mark.parametrize("policy", ["chunked_prefill", "prefill_first", "mixed"])
def test_an_arrival_at_a_step_end_is_planned_then_in_a_run_of_decode_steps(policy,
                                                                            fast_forward):
    """The same rule when the arrival's event was created first (the arrival process waits
    from t=0) and when r0's decode steps are priced as one fast-forwarded run, which must end
    at the arrival: r1 arrives as step 5 ends and starts in step 6."""
    workload = Workload(arrived_at=np.array([0.0, 0.05]), prompt_len=np.array([4, 4]),
                        output_len=np.array([20, 3]))
    setup = EngineSetup.colocated(POLICIES[policy], ConstantCostModel(STEP_S),
                                  EngineLimits(100, 4, 8, 32, 10_000))
    r = simulate(workload, setup, fast_forward=fast_forward)
    assert r.first_scheduled_at.tolist() == pytest.approx([0.0, 0.05])
    assert _times(r, 1) == [6, 7, 8]
    if fast_forward:
        assert r.num_step_events < len(r.steps)
