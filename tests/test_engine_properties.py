"""Engine invariants (hypothesis, over every policy and queue order) and a queueing-theory
check (M/D/1)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simserve.costmodel import ConstantCostModel
from simserve.engine import POLICIES, QUEUES, EngineLimits, EngineSetup, simulate
from simserve.workload import Workload


@st.composite
def small_runs(draw):
    n = draw(st.integers(1, 12))
    gaps = draw(st.lists(st.floats(0, 0.05), min_size=n, max_size=n))
    arrived = np.cumsum([0.0, *gaps[1:]])
    prompt = draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))
    output = draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))
    limits = EngineLimits(
        num_blocks=draw(st.integers(2, 40)),
        block_size=draw(st.sampled_from([1, 4, 16])),
        max_num_seqs=draw(st.integers(1, 6)),
        max_num_batched_tokens=draw(st.integers(16, 64)),
        max_model_len=draw(st.integers(20, 200)),
    )
    policy = draw(st.sampled_from(sorted(POLICIES)))
    replicas = draw(st.integers(1, 2))
    router = draw(st.sampled_from(["round_robin", "least_outstanding", "least_kv"]))
    pp = draw(st.integers(1, 3))
    queue = draw(st.sampled_from(sorted(QUEUES)))
    workload = Workload(
        arrived_at=arrived, prompt_len=np.array(prompt), output_len=np.array(output),
        **draw(queue_inputs(n)),
    )
    return workload, limits, policy, replicas, router, pp, queue


def queue_inputs(n: int) -> st.SearchStrategy[dict]:
    """Per-request priorities and TTFT budgets (the queue orders' keys), each maybe unset."""
    return st.fixed_dictionaries({}, optional={
        "priority": st.lists(st.integers(-2, 3), min_size=n, max_size=n),
        "ttft_budget_s": st.lists(st.sampled_from([0.005, 0.02, 0.1, 1.0]), min_size=n,
                                  max_size=n),
    })


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_runs())
def test_engine_invariants(run):
    workload, limits, policy, replicas, router, pp, queue = run
    setup = EngineSetup.colocated(
        POLICIES[policy], ConstantCostModel(0.01), limits, replicas=replicas, router=router,
        pp=pp, stage_send_s=lambda num_tokens: 1e-4 * num_tokens, queue=QUEUES[queue])
    r = simulate(workload, setup)
    counts = np.diff(r.token_offsets)
    served = r.rejected == 0
    # Every request completes or is rejected with a reason; tokens out = tokens asked.
    assert np.array_equal(counts[served], r.output_len[served])
    assert np.all(counts[~served] == 0)
    assert np.all(np.isfinite(r.finished_at[served]))
    # KV blocks never above capacity.
    assert np.all(r.steps.kv_blocks_used <= limits.num_blocks // pp)
    assert np.all(r.steps.kv_blocks_used >= 0)
    # ttft <= e2el, scheduled after arrival, token times non-decreasing within each request.
    first = r.token_times_s[r.token_offsets[:-1][served]]
    assert np.all(first <= r.finished_at[served] + 1e-12)
    assert np.all(r.first_scheduled_at[served] >= r.arrived_at[served] - 1e-12)
    assert np.all(first > r.arrived_at[served])
    for i in np.flatnonzero(served):
        assert np.all(np.diff(r.tokens_of(i)) >= 0)
    # No step exceeds the batch caps (static ignores the token budget by design).
    assert np.all(r.steps.num_seqs <= limits.max_num_seqs)
    # Each preemption is logged once, with the step that made it.
    assert int(r.steps.num_preempted.sum()) == int(r.num_preemptions.sum())
    # Requests are rejected only for the documented reasons, and always when they apply.
    p, o = r.prompt_len, r.output_len
    too_long = p + o > limits.max_model_len
    # With pp stages each virtual engine holds num_blocks // pp blocks (vLLM v0).
    kv_never = -(-(p + o - 1) // limits.block_size) > limits.num_blocks // pp
    over_budget = (p > limits.max_num_batched_tokens) & POLICIES[policy].whole_prompts
    assert np.array_equal(r.rejected == 1, too_long)
    assert np.array_equal(r.rejected == 2, kv_never & ~too_long)
    assert np.array_equal(r.rejected == 3, over_budget & ~kv_never & ~too_long)


def test_md1_mean_wait_matches_pollaczek_khinchine():
    """Batch size 1, one-token requests, constant step D, Poisson(lam): an M/D/1 queue.

    Pollaczek-Khinchine: Wq = lam D^2 / (2 (1 - rho)). We compare the mean scheduling delay
    over 30 seeded replications of 4,000 requests (first 500 dropped as warm-up) with the
    formula, within 3 standard errors of the replication means.
    """
    step_s, lam = 0.01, 60.0  # rho = 0.6
    rho = lam * step_s
    expected_wait_s = lam * step_s**2 / (2 * (1 - rho))
    limits = EngineLimits(
        num_blocks=1000,
        block_size=16,
        max_num_seqs=1,
        max_num_batched_tokens=2048,
        max_model_len=10_000,
    )
    means = []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        arrived = np.concatenate([[0.0], np.cumsum(rng.exponential(1 / lam, 3999))])
        workload = Workload(
            arrived_at=arrived, prompt_len=np.full(4000, 16), output_len=np.ones(4000, dtype=int)
        )
        r = simulate(workload, EngineSetup.colocated(
            POLICIES["prefill_first"], ConstantCostModel(step_s), limits))
        wait = (r.first_scheduled_at - r.arrived_at)[500:]
        means.append(wait.mean())
    means = np.asarray(means)
    se = means.std(ddof=1) / np.sqrt(means.size)
    assert abs(means.mean() - expected_wait_s) < 3 * se, (means.mean(), expected_wait_s, se)
    # And service is exactly one step: sojourn = wait + D for every request.
