"""Automatic prefix caching: the cache's block accounting on hand-made requests (hits, partial
hits, shared blocks freed with their last holder, eviction order), exact engine timelines with
the constant cost model, and invariants over random workloads (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simserve.costmodel import ConstantCostModel
from simserve.engine import POLICIES, QUEUES, EngineLimits, EngineSetup, simulate
from simserve.engine.prefix_cache import PrefixCache
from simserve.engine.state import ReplicaState
from simserve.workload import Workload
from simserve.workload.content import SharedContent

BS = 4
STEP_S = 0.01


def _cache(prompt_len, output_len=None, **content) -> PrefixCache:
    output_len = output_len or [8] * len(prompt_len)
    return PrefixCache(SharedContent(**content), BS, list(prompt_len), list(output_len))


# --------------------------------------------------------------------------- the cache alone


def test_a_group_prefix_is_found_once_computed_and_the_last_token_is_always_computed():
    # Two requests share a 12-token system prompt (3 blocks); prompts of 14 and 12 tokens.
    cache = _cache([14, 12], group=[0, 0], group_len=[12, 12])
    assert cache.lookup(0, 14) == (0, 0)
    cache.acquire(0, 14, 0)
    cache.register(0, 14)  # prefill done: blocks 0-2 of the group are cached (block 3 partial)
    # Request 1's prompt is the prefix itself: at most 11 tokens (2 blocks) can be skipped.
    assert cache.lookup(1, 12) == (2, 0)  # held by request 0: nothing taken from free
    assert cache.acquire(1, 12, 2) == 0
    cache.check()
    # Request 0 leaves holding 4 blocks (3 shared with the group): 1 own block is free, the
    # third group block (held by request 0 only) becomes evictable, blocks 0-1 stay in use.
    assert cache.release(0, 4) == 2
    assert cache.evictable == 1
    assert cache.release(1, 3) == 3  # 1 own block + 2 group blocks now evictable
    assert cache.evictable == 3
    cache.check()


def test_partial_hit_stops_at_the_first_missing_block():
    # Request 0 caches its 3 prompt blocks of stream 7; request 1 continues the conversation.
    cache = _cache([12, 20], stream=[7, 7])
    cache.acquire(0, 12, 0)
    cache.register(0, 12)
    cache.release(0, 3)
    # Request 1 (20 tokens) finds blocks 0-2 (evictable: taken from the free pool), block 3
    # was never computed.
    assert cache.lookup(1, 20) == (3, 3)
    cache.check()


def test_output_blocks_are_cached_when_the_request_leaves():
    # A turn of 8 prompt tokens and 9 output tokens computed 8 + 8 tokens: 4 full blocks.
    cache = _cache([8, 25], [9, 4], stream=[3, 3])
    cache.acquire(0, 8, 0)
    cache.register(0, 8)
    cache.register(0, 16)  # at its end: the prompt's 2 blocks and 2 of output
    assert cache.release(0, 4) == 4
    # The next turn's prompt is the 17-token history plus 8 new tokens.
    assert cache.lookup(1, 25) == (4, 4)


def test_eviction_takes_the_least_recently_released_space_from_its_end():
    cache = _cache([8, 8, 8], stream=[0, 1, 2])
    for rid in range(3):
        cache.acquire(rid, 8, 0)
        cache.register(rid, 8)
    for rid in (1, 0, 2):  # released in this order: stream 1 is least recently used
        cache.release(rid, 2)
    assert cache.evictable == 6
    cache.evict(free_blocks=3)  # allocations left 3 free blocks: 3 cached ones must go
    assert cache.evictable == 3
    # Stream 1 lost both blocks, stream 0 its last one: request 0 still finds its first.
    assert cache.lookup(1, 8) == (0, 0)
    assert cache.lookup(0, 8) == (1, 1)
    assert cache.lookup(2, 8) == (1, 1)  # at most 7 tokens: one block of two
    cache.check()


def test_preempting_a_holder_of_shared_blocks_frees_only_its_own():
    cache = _cache([12, 12], group=[0, 0], group_len=[8, 8])
    cache.acquire(0, 12, 0)
    cache.register(0, 12)  # group blocks 0-1, stream block 2
    assert cache.acquire(1, 12, cache.lookup(1, 12)[0]) == 0  # holds group blocks 0-1
    assert cache.would_free(0, 3) == 1  # its stream block; the group is still held
    assert cache.would_free(1, 3) == 1
    assert cache.release(1, 3) == 1
    assert cache.would_free(0, 3) == 3
    cache.check()


def test_hash_ids_name_prompt_blocks_and_output_blocks_are_the_requests_own():
    # Mooncake style: ids per 8-token block (2 KV blocks of 4); request 1 shares id 5 only.
    content = dict(hash_offsets=[0, 2, 4], hash_ids=[5, 6, 5, 9], hash_block_tokens=8)
    cache = _cache([14, 16], [6, 4], **content)
    segments = cache.content.segments(0, BS, 20, 14)
    assert segments == [(2 + 3 * 5, 0, 2), (2 + 3 * 6, 0, 1), (1 + 3 * 0, 3, 2)]
    cache.acquire(0, 14, 0)
    cache.register(0, 14)
    assert cache.lookup(1, 16) == (2, 0)


# --------------------------------------------------------------------------- engine timelines


def _run(arrived_at, prompt_len, output_len, content, **kw):
    limits = EngineLimits(num_blocks=kw.pop("num_blocks", 100), block_size=BS,
                          max_num_seqs=8, max_num_batched_tokens=kw.pop("budget", 8),
                          max_model_len=10_000)
    workload = Workload(arrived_at=np.asarray(arrived_at, dtype=float),
                        prompt_len=np.asarray(prompt_len), output_len=np.asarray(output_len),
                        content=content)
    setup = EngineSetup.colocated(POLICIES[kw.pop("policy", "chunked_prefill")],
                                  ConstantCostModel(STEP_S), limits,
                                  prefix_caching=kw.pop("prefix_caching", True))
    return simulate(workload, setup, **kw)


def _steps(times) -> list[int]:
    return np.round(np.asarray(times) / STEP_S).astype(int).tolist()


def test_a_shared_prefix_shortens_the_second_prefill():
    # 24-token prompts sharing 16 tokens; an 8-token budget: the first prompt takes 3 steps.
    content = SharedContent(group=[0, 0], group_len=[16, 16])
    r = _run([0.0, 0.035], [24, 24], [2, 2], content)
    assert _steps(r.tokens_of(0)) == [3, 4]
    # Request 1 arrives after request 0's prefill: it skips the 4 cached blocks and computes
    # its last 8 tokens in one step (step 4, with request 0's decode... which finished at 4).
    assert _steps(r.tokens_of(1)) == [5, 6]
    assert r.cached_tokens.tolist() == [0, 16]
    assert r.prefix_cache_queried_tokens == 48 and r.prefix_cache_hit_tokens == 16
    uncached = _run([0.0, 0.035], [24, 24], [2, 2], content, prefix_caching=False)
    assert _steps(uncached.tokens_of(1)) == [7, 8]


def test_a_recomputed_request_finds_its_own_blocks():
    # Two long requests on 10 blocks of 4 tokens: the newer one is preempted and comes back.
    content = SharedContent()
    cached = _run([0.0, 0.0], [16, 16], [14, 6], content, num_blocks=10, budget=32)
    plain = _run([0.0, 0.0], [16, 16], [14, 6], content, num_blocks=10, budget=32,
                 prefix_caching=False)
    assert cached.num_preemptions.tolist() == plain.num_preemptions.tolist() == [0, 1]
    # Recomputing request 1's prompt + output: cached, it recomputes only the uncached tail.
    assert cached.finished_at[1] <= plain.finished_at[1]
    assert cached.prefix_cache_hit_tokens > 0


# --------------------------------------------------------------------------- invariants


@st.composite
def cached_runs(draw):
    n = draw(st.integers(1, 12))
    gaps = draw(st.lists(st.floats(0, 0.05), min_size=n, max_size=n))
    arrived = np.cumsum([0.0, *gaps[1:]])
    prompt = np.array(draw(st.lists(st.integers(1, 40), min_size=n, max_size=n)))
    output = np.array(draw(st.lists(st.integers(1, 20), min_size=n, max_size=n)))
    kind = draw(st.sampled_from(["none", "group", "stream", "session"]))
    after = think = None
    if kind == "session":
        # Each request after the first may be the next turn of an earlier one.
        after = np.array([-1] + [draw(st.integers(-1, i - 1)) for i in range(1, n)])
        think = np.array(draw(st.lists(st.floats(0, 0.03), min_size=n, max_size=n)))
        think[after < 0] = 0.0
        own = after < 0
        arrived = np.where(own, 0.0, np.nan)
        arrived[own] = np.cumsum([0.0, *gaps[1:int(own.sum())]])
        stream = np.arange(n)
        for i in range(n):  # a turn continues its predecessor's conversation
            if after[i] >= 0:
                stream[i] = stream[after[i]]
        content = SharedContent(stream=stream)
    elif kind == "group":
        groups = draw(st.lists(st.integers(-1, 2), min_size=n, max_size=n))
        content = SharedContent(group=groups, group_len=np.minimum(prompt, 16))
    elif kind == "stream":
        content = SharedContent(stream=draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    else:
        content = SharedContent()
    limits = EngineLimits(
        num_blocks=draw(st.integers(4, 40)), block_size=draw(st.sampled_from([1, 4, 16])),
        max_num_seqs=draw(st.integers(1, 6)), max_num_batched_tokens=draw(st.integers(16, 64)),
        max_model_len=200,
    )
    policy = draw(st.sampled_from(["chunked_prefill", "prefill_first", "mixed"]))
    queue = draw(st.sampled_from(sorted(QUEUES)))
    replicas = draw(st.integers(1, 2))
    pp = draw(st.integers(1, 2))
    workload = Workload(arrived_at=arrived, prompt_len=prompt, output_len=output,
                        content=content, after=after, think_s=think)
    setup = EngineSetup.colocated(POLICIES[policy], ConstantCostModel(0.01), limits,
                                  queue=QUEUES[queue], replicas=replicas, pp=pp,
                                  router=draw(st.sampled_from(
                                      ["round_robin", "least_kv", "prefix_aware"])),
                                  prefix_caching=True)
    return workload, setup, limits


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cached_runs())
def test_prefix_cache_invariants(run):
    workload, setup, _limits = run
    finish = ReplicaState.finish

    def checked(self, *args, **kwargs):
        out = finish(self, *args, **kwargs)
        cache = self.prefix_cache
        # Cached blocks nobody holds are part of the free pool; the books balance every step.
        assert 0 <= cache.evictable <= self.free_blocks <= self.num_blocks
        cache.check()
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ReplicaState, "finish", checked)
        r = simulate(workload, setup, fast_forward=False)
    counts = np.diff(r.token_offsets)
    served = r.rejected == 0
    # Every request completes or is rejected with a reason; tokens out = tokens asked. The
    # engine itself checks that no engine over-allocates KV and that every block is free
    # (cached or empty) and nobody holds a cached block when the run ends.
    assert np.array_equal(counts[served], r.output_len[served])
    assert np.all(counts[~served] == 0)
    assert np.all(r.steps.kv_blocks_used <= r.steps.kv_blocks_total)
    assert np.all((r.cached_tokens >= 0) & (r.cached_tokens < np.maximum(r.prompt_len, 1)))
    if workload.after is not None:
        # A next turn arrives after its predecessor ended (finished or refused).
        follows = workload.after >= 0
        before = workload.after[follows]
        ended = np.where(np.isnan(r.finished_at[before]), r.arrived_at[before],
                         r.finished_at[before])
        assert np.all(r.arrived_at[follows] >= ended - 1e-12)
    # Fast-forwarding decode runs gives the same records with prefix caching too.
    again = simulate(workload, setup, fast_forward=True)
    assert np.array_equal(r.token_times_s, again.token_times_s)
    assert np.array_equal(r.cached_tokens, again.cached_tokens)


def test_a_sessions_next_turn_follows_the_answer_and_finds_the_history():
    # Turn 0: 8-token prompt, 5 tokens out. Turn 1 follows 5 ms after turn 0's last token;
    # its prompt is turn 0's 13 tokens of history plus 4 new ones.
    content = SharedContent(stream=[0, 0])
    limits = EngineLimits(num_blocks=100, block_size=BS, max_num_seqs=8,
                          max_num_batched_tokens=8, max_model_len=10_000)
    workload = Workload(arrived_at=np.array([0.0, np.nan]), prompt_len=np.array([8, 17]),
                        output_len=np.array([5, 2]), content=content,
                        after=np.array([-1, 0]), think_s=np.array([0.0, 0.005]))
    setup = EngineSetup.colocated(POLICIES["chunked_prefill"], ConstantCostModel(STEP_S),
                                  limits, prefix_caching=True)
    r = simulate(workload, setup)
    assert _steps(r.tokens_of(0)) == [1, 2, 3, 4, 5]
    assert r.arrived_at[1] == pytest.approx(0.055)
    # Turn 0 computed 12 tokens (its last token is never fed back): 3 full blocks cached.
    # Turn 1 skips them and computes 5 tokens in one step from 0.055.
    assert r.cached_tokens.tolist() == [0, 12]
    assert r.tokens_of(1).tolist() == pytest.approx([0.065, 0.075])


@pytest.mark.parametrize(("router", "replicas", "hits"), [
    ("prefix_aware", [0, 1, 1, 0], [0, 0, 16, 16]),
    ("round_robin", [0, 1, 0, 1], [0, 0, 0, 0]),
])
def test_prefix_aware_routing_sends_a_prompt_where_its_prefix_is_cached(router, replicas, hits):
    # Groups 0, 1, 1, 0 of 16-token system prompts; the last two arrive after the first two
    # are done, so loads are equal and only the caches differ.
    content = SharedContent(group=[0, 1, 1, 0], group_len=[16] * 4)
    limits = EngineLimits(num_blocks=100, block_size=BS, max_num_seqs=8,
                          max_num_batched_tokens=64, max_model_len=10_000)
    workload = Workload(arrived_at=np.array([0.0, 0.0, 0.2, 0.2]), prompt_len=np.full(4, 24),
                        output_len=np.full(4, 2), content=content)
    setup = EngineSetup.colocated(POLICIES["chunked_prefill"], ConstantCostModel(STEP_S),
                                  limits, replicas=2, router=router, prefix_caching=True)
    r = simulate(workload, setup)
    assert r.replica.tolist() == replicas
    assert r.cached_tokens.tolist() == hits


def test_the_kv_figure_shows_prefix_cache_hits_over_time():
    from simserve.plots.kv import kv_occupancy

    content = SharedContent(group=[0] * 6, group_len=[16] * 6)
    limits = EngineLimits(num_blocks=100, block_size=BS, max_num_seqs=8,
                          max_num_batched_tokens=64, max_model_len=10_000)
    workload = Workload(arrived_at=np.arange(6) * 0.1, prompt_len=np.full(6, 24),
                        output_len=np.full(6, 2), content=content)
    setup = EngineSetup.colocated(POLICIES["chunked_prefill"], ConstantCostModel(STEP_S),
                                  limits, prefix_caching=True)
    fig = kv_occupancy(simulate(workload, setup))
    hits = fig.axes[2]
    assert hits.get_ylabel().startswith("prefix-cache")
    # Five of six prompts find 16 of 24 tokens: 80/144 of the prompt tokens over the run.
    assert any(f"{100 * 80 / 144:.0f}%" in t.get_text() for t in hits.get_legend().get_texts())
