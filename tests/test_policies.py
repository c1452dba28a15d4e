"""Batching policies x queue orders, driven directly (no SimPy), as vLLM's scheduler tests do:
build a replica state by hand, call `schedule()`, apply the plan and a fake step outcome, and
check who was admitted, who was preempted, and in which order."""

from __future__ import annotations

import numpy as np
import pytest

from simserve.costmodel.base import BatchShape
from simserve.engine.plan import StepPlan
from simserve.engine.policies import POLICIES
from simserve.engine.queues import QUEUES
from simserve.engine.state import PrefillEntry, ReplicaState, RequestTable

ORDERS = sorted(QUEUES)


def _state(queue: str, prompt, output, *, arrived=None, priority=None, deadline=None,
           num_blocks=100, block_size=4, max_num_seqs=8, budget=64,
           policy: str = "chunked_prefill") -> ReplicaState:
    n = len(prompt)
    table = RequestTable(np.asarray(prompt), np.asarray(output),
                         np.asarray(arrived if arrived is not None else np.arange(n) * 0.1),
                         priority=None if priority is None else np.asarray(priority),
                         ttft_budget_s=None if deadline is None else np.asarray(deadline))
    return ReplicaState(0, table, engine_id=0, num_blocks=num_blocks, block_size=block_size,
                        max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                        reserve_full=POLICIES[policy].reserves_full_kv, queue=QUEUES[queue])


def _decoding(state: ReplicaState, rid: int, computed: int) -> None:
    """Put a request into the decode set, holding the KV blocks of `computed` tokens."""
    state.requests.emitted[rid] = 1
    state.free_blocks -= state.blocks_for(computed)
    state.decodes.join(rid, computed, state.requests.output_len[rid] - 1)


# Waiting order per queue order for prompts [30, 10, 20, 40], outputs [5, 9, 1, 3], arrivals
# 0.0, 0.1, 0.2, 0.3, priorities [2, 0, 1, 0] and TTFT budgets [1.0, 0.05, 0.5, 0.1] s.
EXPECTED_ORDER = {
    "fcfs": [0, 1, 2, 3],
    "priority": [1, 3, 2, 0],
    "shortest_prompt": [1, 2, 0, 3],
    "shortest_remaining": [2, 3, 0, 1],
    "deadline": [1, 3, 2, 0],  # deadlines 1.0, 0.15, 0.7, 0.4 s
}


def _four(queue: str, **kw) -> ReplicaState:
    state = _state(queue, [30, 10, 20, 40], [5, 9, 1, 3], priority=[2, 0, 1, 0],
                   deadline=[1.0, 0.05, 0.5, 0.1], **kw)
    for rid in range(4):
        state.waiting.push(rid)
    return state


def test_every_order_is_registered_and_sorts_as_documented():
    assert set(EXPECTED_ORDER) == set(QUEUES)
    for order, expected in EXPECTED_ORDER.items():
        assert list(_four(order).waiting) == expected, order


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_admission_follows_the_queue_order(policy, order):
    # Room for everything but the token budget (64) and KV: admitted in queue order until
    # the first that does not fit, never skipping ahead.
    state = _four(order, policy=policy, budget=64)
    plan = POLICIES[policy]().schedule(state, 0.0)
    expected = EXPECTED_ORDER[order]
    assert list(plan.admit) == expected[: len(plan.admit)]
    assert plan.admit, "something is admitted"
    if policy == "chunked_prefill":
        # Chunks fill the budget exactly, the last one cut to fit.
        assert sum(plan.chunks) == 64
    elif policy in ("prefill_first", "mixed"):
        prompts = [30, 10, 20, 40]
        assert sum(plan.chunks) <= 64
        assert list(plan.chunks) == [prompts[r] for r in plan.admit]
    state.begin(plan, 0.0)
    assert list(state.waiting) == expected[len(plan.admit):]


def _full_kv_state(order: str, policy: str) -> ReplicaState:
    """Four decoding requests that fill their blocks exactly (8 tokens, block size 4) in 8
    blocks: the next token of each needs a new block, and none is free."""
    state = _state(order, [7, 7, 7, 7], [9, 9, 9, 9], priority=[1, 0, 3, 2],
                   deadline=[0.9, 0.1, 0.2, 0.05], num_blocks=8, policy=policy)
    for rid in (0, 1, 2, 3):  # joined the decode set in this order (running order)
        _decoding(state, rid, 8)
    assert state.free_blocks == 0
    return state


# Who is preempted first when the decodes outgrow the KV cache: FCFS the most recently
# admitted; keyed orders the largest key (lowest priority, latest deadline, ...).
EXPECTED_VICTIMS = {
    "fcfs": [3, 2],
    "priority": [2, 3],
    "shortest_prompt": [3, 2],  # equal prompts: latest arrival last in the queue
    "shortest_remaining": [3, 2],  # equal remaining output: latest arrival
    "deadline": [0, 2],  # deadlines 0.9, 0.2, 0.4, 0.35 s
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("policy", ["chunked_prefill", "prefill_first", "mixed"])
def test_preemption_follows_the_queue_order(policy, order):
    state = _full_kv_state(order, policy)
    plan = POLICIES[policy]().schedule(state, 0.0)
    # Each victim frees 2 blocks; each decode left needs 1: two victims leave 2 decodes.
    assert list(plan.preempt) == EXPECTED_VICTIMS[order]
    assert plan.num_decodes == 2 and plan.decode_blocks == 2
    shape = state.begin(plan, 0.0)
    assert isinstance(shape, BatchShape) and shape.num_decode_seqs == 2
    survivors = [r for r in (0, 1, 2, 3) if r not in plan.preempt]
    assert [rid for rid, _c, _r in state.decodes.members()] == survivors
    # The victims wait again: FCFS at the front (the last preempted first), keyed by key.
    waiting = list(state.waiting)
    assert sorted(waiting) == sorted(plan.preempt)
    if order == "fcfs":
        assert waiting == list(reversed(plan.preempt))
    assert state.num_blocks - state.free_blocks == 2 * 2 + 2
    assert [state.requests.num_preemptions[r] for r in range(4)] == [
        int(r in plan.preempt) for r in range(4)]


@pytest.mark.parametrize("order", ORDERS)
def test_static_batching_never_preempts_and_takes_whole_sequences(order):
    state = _four(order, policy="static", num_blocks=30)
    plan = POLICIES["static"]().schedule(state, 0.0)
    # Full reservation: prompt + output - 1 tokens per request, 4-token blocks, 30 blocks.
    need = {0: 9, 1: 5, 2: 5, 3: 11}
    taken, free = [], 30
    for rid in EXPECTED_ORDER[order]:
        if need[rid] > free:
            break
        taken.append(rid)
        free -= need[rid]
    assert list(plan.admit) == taken and not plan.preempt


def test_a_partial_prefill_that_cannot_grow_preempts_in_queue_order():
    # Chunked prefill, priority order: two partial prefills; the first needs a block, none
    # is free: the lowest-priority running request (the second partial) goes first.
    state = _state("priority", [16, 16], [4, 4], priority=[0, 5], num_blocks=4)
    state.prefilling = [PrefillEntry(0, 8, 16, 2), PrefillEntry(1, 8, 16, 2)]
    state.free_blocks = 0
    plan = POLICIES["chunked_prefill"]().schedule(state, 0.0)
    assert plan.preempt == (1,) and plan.chunks == (8,)
    # FCFS would preempt the most recently admitted, the same entry here; with priorities
    # reversed, priority preempts the first entry, the one that could not grow itself, and
    # schedules no partial prefill this step (vLLM v1: a request that preempts itself stops
    # the running loop).
    state = _state("priority", [16, 16], [4, 4], priority=[5, 0], num_blocks=4)
    state.prefilling = [PrefillEntry(0, 8, 16, 2), PrefillEntry(1, 8, 16, 2)]
    state.free_blocks = 0
    plan = POLICIES["chunked_prefill"]().schedule(state, 0.0)
    assert plan.preempt == (0,) and plan.chunks == (0,)  # the other entry waits a step
    shape = state.begin(plan, 0.0)
    assert shape.num_prefill_tokens == 0 and [e.request_id for e in state.prefilling] == [1]
    assert list(state.waiting) == [0] and state.free_blocks == 2


def test_a_plan_is_a_plain_value():
    plan = StepPlan(preempt=(3,), num_decodes=2, chunks=(5,), admit=(7,), decode_blocks=1)
    assert plan.num_admitted == 1 and not plan.is_empty
    assert StepPlan().is_empty and not StepPlan(preempt=(1,)).is_empty
