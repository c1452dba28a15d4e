"""KV memory tiers: swap preemption (vLLM v0) timelines and bytes by hand, its conservation
invariants (hypothesis), the host link and swap space from the catalog, and bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simserve.cli import main
from simserve.config import load_scenario
from simserve.costmodel import ConstantCostModel
from simserve.engine import POLICIES, QUEUES, EngineLimits, EngineSetup, simulate
from simserve.engine.state import ReplicaState
from simserve.resolve import resolve
from simserve.workload import Workload
from simserve.workload.content import SharedContent

STEP_S = 0.01
COPY_S_PER_BLOCK = 0.001
BLOCK_BYTES = 1000.0


def _swap_setup(policy: str = "chunked_prefill", swap_blocks: int = 100,
                num_blocks: int = 6) -> EngineSetup:
    setup = EngineSetup.colocated(
        POLICIES[policy], ConstantCostModel(STEP_S), EngineLimits(num_blocks, 4, 8, 32, 10_000),
        swap_blocks=swap_blocks, host_copy_s=lambda n: COPY_S_PER_BLOCK * n)
    pool = dataclasses.replace(setup.pools[0], kv_block_bytes=BLOCK_BYTES)
    return dataclasses.replace(setup, pools=(pool,))


# Two 8-token prompts, 10 output tokens each, in 6 blocks of 4 tokens: at step 6 both need a
# fourth block (for their 13th token) and none is free, so the newest, r1, is preempted.
SQUEEZE = Workload(arrived_at=np.zeros(2), prompt_len=np.array([8, 8]),
                   output_len=np.array([10, 10]))


@pytest.mark.parametrize("fast_forward", [True, False])
def test_swap_round_trip_by_hand(fast_forward):
    r = simulate(SQUEEZE, _swap_setup(), fast_forward=fast_forward)
    # Steps 1-5: prefill both (blocks 2+2), then decode to 12 tokens each (3+3 blocks).
    # Step 6 (planned at 0.05): r1 is swapped out, its 12 tokens = 3 blocks copied to the
    # host (3 ms, added to the step); r0 takes its 4th block and goes on alone.
    copy = 3 * COPY_S_PER_BLOCK
    r0 = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06 + copy, 0.07 + copy, 0.08 + copy, 0.09 + copy,
          0.10 + copy]
    assert r.tokens_of(0) == pytest.approx(r0, abs=1e-12)
    # r1 waits at the head of the queue: admitting it takes ceil(13/4) = 4 blocks, but r0 holds
    # 4 of the 6 (and grows to 5) until it finishes at 0.103. Step 11 swaps its 3 blocks back
    # in (3 ms), computes its 13th token (1 token, not 13: nothing is recomputed) and emits
    # its 6th output token; then it decodes alone.
    back = 0.10 + copy + STEP_S + copy
    r1 = [0.01, 0.02, 0.03, 0.04, 0.05, back, back + 0.01, back + 0.02, back + 0.03,
          back + 0.04]
    assert r.tokens_of(1) == pytest.approx(r1, abs=1e-12)
    assert r.num_preemptions.tolist() == [0, 1]
    # The step that swapped r1 in computed one token, not 13.
    swap_in_step = int(np.flatnonzero(np.isclose(r.steps.started_at, 0.10 + copy))[0])
    assert int(r.steps.num_prefill_tokens[swap_in_step]) == 1
    assert r.steps.duration_s[swap_in_step] == pytest.approx(STEP_S + copy)
    tiers = r.kv_tiers
    assert tiers is not None
    assert tiers["num_swap_outs"] == 1 and tiers["num_swap_ins"] == 1
    assert tiers["swap_out_bytes"] == tiers["swap_in_bytes"] == 3 * BLOCK_BYTES
    assert tiers["swap_copy_s"] == pytest.approx(2 * copy)
    # In host memory from the plan at 0.05 to the plan at 0.103.
    assert tiers["swapped_request_s"] == pytest.approx(0.10 + copy - 0.05)
    assert tiers["swapped_gib_s"] == pytest.approx(
        3 * BLOCK_BYTES * (0.10 + copy - 0.05) / 2**30)


def test_recompute_instead_when_the_swap_space_is_full():
    # 2 CPU blocks cannot hold r1's 3: it is recomputed (vLLM v0 would abort), so its 6th
    # token comes one plain step after r0's last and it prefills 13 tokens then.
    r = simulate(SQUEEZE, _swap_setup(swap_blocks=2))
    assert r.kv_tiers is not None and r.kv_tiers["num_swap_outs"] == 0
    assert r.num_preemptions.tolist() == [0, 1]
    assert r.tokens_of(1)[5] == pytest.approx(0.11)
    assert int(r.steps.num_prefill_tokens.max()) == 16  # the first step's two prompts
    assert 13 in r.steps.num_prefill_tokens.tolist()


def test_swap_off_gives_the_records_of_recompute():
    plain = EngineSetup.colocated(POLICIES["chunked_prefill"], ConstantCostModel(STEP_S),
                                  EngineLimits(6, 4, 8, 32, 10_000))
    a, b = simulate(SQUEEZE, plain), simulate(SQUEEZE, _swap_setup(swap_blocks=2))
    assert a.kv_tiers is None
    assert np.array_equal(a.token_times_s, b.token_times_s)


@pytest.mark.parametrize("policy", ["prefill_first", "mixed"])
def test_every_preempting_policy_swaps_and_resumes(policy):
    r = simulate(SQUEEZE, _swap_setup(policy))
    assert np.diff(r.token_offsets).tolist() == [10, 10]
    assert r.kv_tiers is not None and r.kv_tiers["num_swap_outs"] == 1
    assert r.kv_tiers["num_swap_ins"] == 1
    # Nothing is recomputed: the prompts' 16 tokens and one token at resumption.
    assert int(r.steps.num_prefill_tokens.sum()) == 16 + 1


# --------------------------------------------------------------------------- CPU offload


@dataclasses.dataclass(frozen=True)
class PerTokenCost:
    """5 ms a step plus 1 ms a token: recomputing a prefix costs what its tokens cost."""

    def step_time(self, shape) -> float:
        return 0.005 + 0.001 * shape.num_tokens

    def decode_step_fn(self, num_seqs: int):
        return lambda kv: 0.005 + 0.001 * num_seqs

    def decode_run_s(self, num_seqs: int, decode_kv_tokens: np.ndarray) -> np.ndarray:
        return np.full(decode_kv_tokens.size, 0.005 + 0.001 * num_seqs)


# r0 and r2 open with the same 16-token system prompt (4 blocks of 4 tokens), r1 shares
# nothing; one output token each, so each request is one prefill step.
SHARED = Workload(
    arrived_at=np.array([0.0, 0.03, 0.06]), prompt_len=np.array([17, 20, 17]),
    output_len=np.array([1, 1, 1]),
    content=SharedContent(group=np.array([0, -1, 0]), group_len=np.array([16, 0, 16])),
)


def _offload_setup(offload_blocks: int) -> EngineSetup:
    setup = EngineSetup.colocated(
        POLICIES["chunked_prefill"], PerTokenCost(), EngineLimits(6, 4, 8, 32, 10_000),
        prefix_caching=True, offload_blocks=offload_blocks,
        host_copy_s=lambda n: COPY_S_PER_BLOCK * n)
    pool = dataclasses.replace(setup.pools[0], kv_block_bytes=BLOCK_BYTES)
    return dataclasses.replace(setup, pools=(pool,))


@pytest.mark.parametrize("fast_forward", [True, False])
def test_an_evicted_prefix_is_loaded_from_the_cpu_tier_not_recomputed(fast_forward):
    # r0 (0 -> 0.022, 17 tokens) leaves its 4 prompt blocks cached. r1's 20 tokens take 5 of
    # the 6 blocks at 0.03, evicting 3 of them (blocks 1-3 of the prompt) to the CPU tier.
    # r2 at 0.06 finds block 0 on the GPU and blocks 1-3 in the CPU tier: it loads them
    # (3 ms over the link) while holding its blocks, then computes its last token alone:
    # 0.063 + 5 ms + 1 ms.
    r = simulate(SHARED, _offload_setup(100), fast_forward=fast_forward)
    assert r.tokens_of(0).tolist() == pytest.approx([0.022])
    assert r.tokens_of(1).tolist() == pytest.approx([0.055])
    assert r.tokens_of(2).tolist() == pytest.approx([0.06 + 0.003 + 0.006])
    assert r.cached_tokens is not None and r.cached_tokens.tolist() == [0, 0, 16]
    tiers = r.kv_tiers
    assert tiers is not None
    assert tiers["num_offload_loads"] == 1 and tiers["offload_hit_tokens"] == 12
    assert tiers["offload_loaded_bytes"] == 3 * BLOCK_BYTES
    assert tiers["offload_load_s"] == pytest.approx(0.003)
    # Stored: r0's 3 prompt blocks, then 3 of r1's 5 when r2 took their memory for its
    # loaded blocks, and a 4th when its last token needed a 5th block.
    assert tiers["offload_stored_bytes"] == 7 * BLOCK_BYTES
    # The step that finished r2 computed 1 token; the load took no step of its own.
    assert r.steps.num_prefill_tokens.tolist() == [17, 20, 1]


def test_without_offload_the_evicted_prefix_is_recomputed():
    # The same run without a CPU tier: r2 finds only block 0 and computes 13 tokens.
    r = simulate(SHARED, EngineSetup.colocated(
        POLICIES["chunked_prefill"], PerTokenCost(), EngineLimits(6, 4, 8, 32, 10_000),
        prefix_caching=True))
    assert r.tokens_of(2).tolist() == pytest.approx([0.06 + 0.005 + 0.013])
    assert r.steps.num_prefill_tokens.tolist() == [17, 20, 13]
    assert r.kv_tiers is None


def test_a_full_cpu_tier_keeps_the_most_recently_evicted_blocks():
    # 2 CPU blocks: of r0's evicted blocks 1-3 only 1-2 stay (dropped from the end), so r2
    # loads 2 blocks and computes its last 5 tokens (block 3 and token 16).
    r = simulate(SHARED, _offload_setup(2))
    tiers = r.kv_tiers
    assert tiers is not None and tiers["offload_hit_tokens"] == 8
    assert r.steps.num_prefill_tokens.tolist() == [17, 20, 5]
    assert r.tokens_of(2).tolist() == pytest.approx([0.06 + 0.002 + 0.005 + 0.005])


# --------------------------------------------------------------------------- invariants


@st.composite
def squeezed_runs(draw):
    n = draw(st.integers(2, 10))
    gaps = draw(st.lists(st.floats(0, 0.03), min_size=n, max_size=n))
    workload = Workload(
        arrived_at=np.cumsum([0.0, *gaps[1:]]),
        prompt_len=np.array(draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))),
        output_len=np.array(draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))),
        # Clients that give up cancel requests wherever they are, swapped out included.
        client_timeout_s=draw(st.one_of(st.none(), st.floats(0.02, 0.3))),
        # Shared system prompts, for the prefix cache and its CPU tier to find.
        content=SharedContent(
            group=np.array(draw(st.lists(st.integers(-1, 1), min_size=n, max_size=n))),
            group_len=np.array(draw(st.lists(st.integers(1, 24), min_size=n, max_size=n)))),
    )
    policy = draw(st.sampled_from(["chunked_prefill", "prefill_first", "mixed"]))
    queue = draw(st.sampled_from(sorted(QUEUES)))
    limits = EngineLimits(num_blocks=draw(st.integers(4, 24)),
                          block_size=draw(st.sampled_from([1, 4, 8])),
                          max_num_seqs=draw(st.integers(1, 6)), max_num_batched_tokens=32,
                          max_model_len=200)
    return (workload, policy, queue, limits, draw(st.integers(1, 12)), draw(st.integers(1, 2)),
            draw(st.booleans()), draw(st.integers(0, 10)))


# A client that gives up while its request is swapped out drops the request's CPU blocks
# without copying them back (found by hypothesis; the tier check once counted only copies).
_CANCELLED_WHILE_SWAPPED = (
    Workload(arrived_at=np.array([0.0, *[0.015625] * 6]),
             prompt_len=np.array([8, 1, 2, 1, 1, 1, 1]),
             output_len=np.array([10, 1, 15, 1, 9, 1, 1]),
             content=SharedContent(group=np.zeros(7, int), group_len=np.ones(7, int)),
             client_timeout_s=0.25),
    "chunked_prefill", "shortest_prompt", EngineLimits(6, 8, 2, 32, 200), 4, 2, False, 0)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(squeezed_runs())
@example(_CANCELLED_WHILE_SWAPPED)
def test_blocks_are_conserved_across_gpu_and_cpu_tiers(run):
    workload, policy, queue, limits, swap_blocks, pp, caching, offload_blocks = run
    caching = caching and policy == "chunked_prefill"
    # With prefix caching, a CPU offload tier too (its loads overlap the steps).
    setup = EngineSetup.colocated(
        POLICIES[policy], ConstantCostModel(STEP_S), limits, queue=QUEUES[queue], pp=pp,
        swap_blocks=swap_blocks, host_copy_s=lambda n: 1e-4 * n, prefix_caching=caching,
        offload_blocks=offload_blocks if caching else 0)
    # After every step `begin` plans, on every engine: see `_tiers_consistent`.
    checks: list[bool] = []
    original = ReplicaState.begin

    def begin(self, plan, now):
        shape = original(self, plan, now)
        checks.append(_tiers_consistent(self))
        return shape

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ReplicaState, "begin", begin)
        r = simulate(workload, setup)
    served = r.rejected == 0
    if r.timed_out is not None:
        served &= ~r.timed_out
    assert np.array_equal(np.diff(r.token_offsets)[served], r.output_len[served])
    tiers = r.kv_tiers
    assert tiers is not None
    # Every block swapped out came back unless its client gave up meanwhile, and the engine
    # drained both tiers (`simulate` checks that no GPU block and no swapped request is left).
    assert tiers["num_swap_ins"] <= tiers["num_swap_outs"] <= int(r.num_preemptions.sum())
    if workload.client_timeout_s is None:
        assert tiers["num_swap_outs"] == tiers["num_swap_ins"]
        assert tiers["swap_out_bytes"] == tiers["swap_in_bytes"]
    assert all(checks)
    # Fast-forwarded decode runs give the records of stepping one by one, tiers included.
    stepped = simulate(workload, setup, fast_forward=False)
    assert np.array_equal(stepped.token_times_s, r.token_times_s)
    assert np.array_equal(stepped.steps.started_at, r.steps.started_at)
    assert stepped.kv_tiers == tiers


def _tiers_consistent(state: ReplicaState) -> bool:
    swap = state.swap
    assert swap is not None
    swap.check()
    if state.prefix_cache is not None:
        state.prefix_cache.check()  # the CPU tier's blocks too
    running = {e.request_id for e in state.prefilling} | {
        rid for rid, _c, _r in state.decodes.members()} | {
        e.request_id for _at, e in state.loading}
    waiting = set(state.waiting)
    in_cpu = {rid for rid in waiting if rid in swap}
    # A swapped-out request waits (it holds CPU blocks only); nobody running is swapped.
    ok = not (running & in_cpu) and len(in_cpu) == len(swap)
    gpu_held = sum(e.num_blocks for e in state.prefilling) + sum(
        e.num_blocks for _at, e in state.loading) + sum(
        -(-c // state.block_size) for _rid, c, _r in state.decodes.members())
    if state.prefix_cache is None:
        # Decode blocks for this step are taken already; their tokens come at its end.
        ok = ok and gpu_held + state.free_blocks <= state.num_blocks
    return ok and 0 <= state.free_blocks <= state.num_blocks


# --------------------------------------------------------------------------- from a scenario

SCENARIO = """\
name: swap
model: llama-3-8b
hardware: h100-80gb-sxm
cost_model:
  kind: constant
engine:
  policy: chunked_prefill
  preemption: swap
  swap_space_gb: 4
"""


def test_swap_space_and_copy_time_follow_the_catalog(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    pool = resolve(load_scenario(path)).pools[0].setup
    # Llama-3-8B: 2 (K, V) x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB per token; a
    # 16-token block is 2 MiB, so 4 GiB holds 2048 blocks.
    block = 2 * 32 * 8 * 128 * 2 * 16
    assert pool.kv_block_bytes == block
    assert pool.swap_blocks == 4 * 2**30 // block == 2048
    # H100 host link: PCIe 5.0, 56 GB/s and 10 us (links catalog).
    assert pool.host_copy_s is not None
    assert pool.host_copy_s(3) == pytest.approx(10e-6 + 3 * block / 56e9)


def test_swap_off_by_default(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.replace("  preemption: swap\n", ""))
    assert resolve(load_scenario(path)).pools[0].setup.swap_blocks == 0


def _error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("simserve: error: ") and err.count("\n") == 1, err
    return err


def test_swap_space_larger_than_host_memory_is_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.replace("swap_space_gb: 4", "swap_space_gb: 300"))
    err = _error(["run", str(path), "--out", str(tmp_path / "run")], capsys)
    assert "engine.swap_space_gb" in err and f"{path}:9" in err and "256 GiB" in err
    assert not (tmp_path / "run").exists()


def test_an_offload_of_zero_is_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO + "  kv_offload:\n    cpu_gb: 0\n")
    err = _error(["run", str(path), "--out", str(tmp_path / "run")], capsys)
    assert "engine.kv_offload.cpu_gb" in err and f"{path}:11" in err and "> 0" in err


def test_swap_summary_keys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO + "  num_gpu_blocks_override: 300\n" + (
        "workload:\n  num_requests: 60\n  arrival: {rate: 50}\n"
        "  lengths: {prompt_len: 600, output_len: 300}\n"))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    summary = json.loads(Path(tmp_path / "run" / "summary.json").read_text())
    assert summary["num_swap_preemptions"] > 0
    assert summary["num_recompute_preemptions"] == 0
    assert summary["swap_in_gib"] == summary["swap_out_gib"] > 0
    assert summary["swap_copy_s"] > 0 and summary["mean_swapped_s"] > 0


def test_offload_tier_size_follows_the_catalog(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.replace("  preemption: swap\n", "")
                    + "  kv_offload:\n    cpu_gb: 64\n")
    pool = resolve(load_scenario(path)).pools[0].setup
    assert pool.swap_blocks == 0
    assert pool.offload_blocks == 64 * 2**30 // (2 * 32 * 8 * 128 * 2 * 16) == 32768


def test_offload_without_prefix_caching_is_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO + "  enable_prefix_caching: false\n  kv_offload:\n    cpu_gb: 8\n")
    err = _error(["run", str(path), "--out", str(tmp_path / "run")], capsys)
    assert "engine.kv_offload" in err and f"{path}:11" in err and "prefix caching" in err


def test_offload_larger_than_host_memory_is_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.replace("  preemption: swap\n", "")
                    + "  kv_offload:\n    cpu_gb: 300\n")
    err = _error(["run", str(path), "--out", str(tmp_path / "run")], capsys)
    assert "engine.kv_offload.cpu_gb" in err and f"{path}:10" in err and "256 GiB" in err


def test_a_disaggregated_decode_pool_swaps_and_resumes():
    # DistServe's decode instances swap: two 8-token prompts move to a decode engine of 6
    # blocks of 4 tokens, where they outgrow it; the newest is swapped out and back, and its
    # only computed token on the decode engine is the one it resumes with.
    prefill = EngineSetup.colocated(POLICIES["chunked_prefill"], ConstantCostModel(STEP_S),
                                    EngineLimits(100, 4, 8, 32, 10_000)).pools[0]
    decode = dataclasses.replace(_swap_setup().pools[0], limits=EngineLimits(6, 4, 8, 32, 10_000))
    r = simulate(SQUEEZE, EngineSetup((prefill, decode), kv_transfer_s=lambda n: 0.001))
    assert np.diff(r.token_offsets).tolist() == [10, 10]
    tiers = r.kv_tiers
    assert tiers is not None and tiers["num_swap_outs"] == tiers["num_swap_ins"] == 1
    assert r.num_preemptions.tolist() == [0, 1]
    on_decode = r.steps.replica == 1
    assert int(r.steps.num_prefill_tokens[on_decode].sum()) == 1


def test_preempting_a_partial_prefill_frees_only_its_own_blocks():
    # Six requests behind one 13-token system prompt, 18 blocks, a 3-block CPU tier: chunked
    # prefill preempts a partial prefill that shares cached blocks with others. The policy
    # once counted all of the victim's blocks as freed and over-allocated the KV cache
    # (AssertionError); blocks other requests hold stay in use.
    workload = Workload(
        arrived_at=np.array([0.0, 0.0179, 0.0326, 0.0332, 0.0461, 0.0474]),
        prompt_len=np.array([68, 43, 14, 24, 63, 49]),
        output_len=np.array([4, 7, 9, 6, 6, 10]),
        content=SharedContent(group=np.ones(6, dtype=int), group_len=np.full(6, 13)))
    setup = EngineSetup.colocated(
        POLICIES["chunked_prefill"], ConstantCostModel(STEP_S), EngineLimits(18, 4, 4, 32, 400),
        prefix_caching=True, offload_blocks=3, host_copy_s=lambda n: 0.003 * n)
    r = simulate(workload, setup)
    assert np.diff(r.token_offsets).tolist() == [4, 7, 9, 6, 6, 10]
    assert int(r.num_preemptions.sum()) > 0
