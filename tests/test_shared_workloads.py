"""Workloads with shared content: prefix groups (statistics of the group draws at fixed seeds),
multi-turn sessions (turn order, after/think arrays, each turn's prompt = previous prompt +
previous output + new message, stream ids, sessions cut by max_model_len), the KV blocks that
`SharedContent.segments` says are shared on hand-made and built requests, config errors,
determinism, and runs whose prefix cache finds what the workload shares."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.config import (
    ArrivalConfig,
    LengthsConfig,
    PrefixConfig,
    RequestClass,
    SessionsConfig,
    WorkloadConfig,
    load_scenario,
    scenario_from_mapping,
)
from simserve.errors import InputError
from simserve.experiments.run import STREAMS, run_scenario, seed_streams
from simserve.workload import Workload, build_workload
from simserve.workload.content import GROUP, HASH, STREAM, SharedContent
from simserve.workload.lengths import sample_lengths
from simserve.workload.prefixes import draw_groups
from simserve.workload.sessions import draw_think_s, draw_turns, plan_sessions

ROOT = Path(__file__).resolve().parents[1]
ROOT_SCENARIO = ROOT / "scenarios" / "default.yaml"
TRACES = ROOT / "calibration" / "data" / "traces"
ARXIV = TRACES / "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
CONV = TRACES / "splitwise_conv.csv"


def streams(seed: int = 0) -> dict[str, np.random.Generator]:
    return seed_streams(seed)


def build(config: WorkloadConfig, seed: int = 0, **kwargs: object) -> Workload:
    """build_workload with every stream of a scenario seed, as a run draws them."""
    rngs = streams(seed)
    return build_workload(config, rngs["arrivals"], rngs["lengths"], rngs["classes"],
                          prefix_rng=rngs["prefix"], session_rng=rngs["sessions"],
                          **kwargs)  # type: ignore[arg-type]


POISSON = ArrivalConfig(process="poisson", rate=2.0)
LOGNORMAL = LengthsConfig(dist="lognormal", prompt_len=300, output_len=100)


def blocks(content: SharedContent, request_id: int, block_size: int, num_tokens: int,
           prompt_len: int) -> list[tuple[int, int]]:
    """Every full block of a request's first `num_tokens` tokens as (space, index), in order."""
    out = []
    for space, first, count in content.segments(request_id, block_size, num_tokens, prompt_len):
        out += [(space, first + k) for k in range(count)]
    return out


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("workload", "field"),
    [
        ({"prefix": {"shared_len": 0}}, "workload.prefix.shared_len"),
        ({"prefix": {"num_groups": 4}}, "workload.prefix.shared_len"),
        ({"prefix": {"shared_len": 8, "num_groups": 0}}, "workload.prefix.num_groups"),
        ({"prefix": {"shared_len": 8, "popularity": "pareto"}}, "workload.prefix.popularity"),
        ({"prefix": {"shared_len": 8, "zipf_s": 0}}, "workload.prefix.zipf_s"),
        ({"sessions": {"turns": 0, "think_time_s": 1}}, "workload.sessions.turns"),
        ({"sessions": {"turns": 2}}, "workload.sessions.think_time_s"),
        ({"sessions": {"turns": 2, "think_time_s": -1}}, "workload.sessions.think_time_s"),
        ({"sessions": {"turns": 2, "think_time_s": 1, "turns_dist": "zipf"}},
         "workload.sessions.turns_dist"),
        ({"sessions": {"turns": 2, "think_time_s": 1},
          "arrival": {"process": "closed_loop", "concurrency": 4}}, "workload.sessions"),
    ],
)
def test_bad_prefix_and_session_fields_are_named(workload: dict, field: str) -> None:
    with pytest.raises(InputError) as info:
        scenario_from_mapping({"workload": workload})
    assert info.value.field == field


def test_a_prefix_that_fills_the_context_is_refused_against_the_model() -> None:
    with pytest.raises(InputError, match="does not fit llama-3-8b's context length 8192") as info:
        load_scenario(ROOT_SCENARIO, ["workload.prefix.shared_len=8191"])
    assert info.value.field == "workload.prefix.shared_len"


def test_streams_are_only_appended() -> None:
    # Older runs reproduce only if the first five streams keep their places.
    assert STREAMS[:5] == ("arrivals", "lengths", "acceptance", "routing", "classes")
    assert STREAMS[5:] == ("prefix", "sessions")


# --------------------------------------------------------------------------- prefix groups


def test_uniform_groups_have_equal_shares() -> None:
    n, groups = 40_000, 8
    drawn = draw_groups(PrefixConfig(shared_len=64, num_groups=groups), n,
                        np.random.default_rng(3))
    share = np.bincount(drawn, minlength=groups) / n
    # Binomial shares: 5 standard errors (sqrt(1/8 * 7/8 / n) = 0.0017).
    assert np.all(np.abs(share - 1 / groups) < 5 * math.sqrt(1 / groups * (1 - 1 / groups) / n))
    assert drawn.min() == 0 and drawn.max() == groups - 1


@pytest.mark.parametrize("zipf_s", [0.8, 1.2, 2.0])
def test_zipf_groups_follow_the_power_law_of_their_rank(zipf_s: float) -> None:
    n, groups = 40_000, 10
    drawn = draw_groups(PrefixConfig(shared_len=64, num_groups=groups, popularity="zipf",
                                     zipf_s=zipf_s), n, np.random.default_rng(4))
    weights = np.arange(1, groups + 1, dtype=float) ** -zipf_s
    expected = weights / weights.sum()
    share = np.bincount(drawn, minlength=groups) / n
    # Every rank within 5 binomial standard errors of k**-s / sum.
    assert np.all(np.abs(share - expected) < 5 * np.sqrt(expected * (1 - expected) / n))


def test_prefix_groups_lengthen_short_prompts_and_leave_arrivals_and_outputs_alone() -> None:
    config = WorkloadConfig(num_requests=5_000, arrival=POISSON, lengths=LOGNORMAL)
    shared = dataclasses.replace(config, prefix=PrefixConfig(shared_len=256, num_groups=3))
    plain, grouped = build(config), build(shared)
    assert plain.content is None
    np.testing.assert_array_equal(plain.arrived_at, grouped.arrived_at)
    np.testing.assert_array_equal(plain.output_len, grouped.output_len)
    # The prefix counts inside the prompt: a drawn prompt shorter than 257 becomes 257.
    np.testing.assert_array_equal(grouped.prompt_len, np.maximum(plain.prompt_len, 257))
    assert np.any(plain.prompt_len < 257) and np.any(plain.prompt_len > 257)
    content = grouped.content
    assert content is not None and content.stream is None and content.hash_ids is None
    assert set(content.group.tolist()) == {0, 1, 2}
    assert np.all(content.group_len == 256)


def test_requests_of_one_group_share_its_whole_blocks_and_nothing_else() -> None:
    workload = build(WorkloadConfig(num_requests=200, arrival=POISSON, lengths=LOGNORMAL,
                                    prefix=PrefixConfig(shared_len=100, num_groups=4)))
    content = workload.content
    assert content is not None
    sets = [set(blocks(content, i, 16, int(workload.prompt_len[i]), int(workload.prompt_len[i])))
            for i in range(len(workload))]
    for i in range(20):
        for j in range(i + 1, 20):
            shared = sets[i] & sets[j]
            if content.group[i] == content.group[j]:
                # 100 tokens: blocks 0-5 whole; block 6 straddles the prefix's end.
                assert shared == {(GROUP + 3 * int(content.group[i]), k) for k in range(6)}
            else:
                assert shared == set()


# --------------------------------------------------------------------------- sessions


SESSIONS = SessionsConfig(turns=3, think_time_s=4.0)


def test_sessions_are_consecutive_turns_after_one_another() -> None:
    config = WorkloadConfig(num_requests=10, arrival=POISSON, lengths=LOGNORMAL,
                            sessions=SESSIONS)
    workload = build(config)
    # 3 turns a session: 4 sessions, the last one cut to the 10th request.
    assert workload.after.tolist() == [-1, 0, 1, -1, 3, 4, -1, 6, 7, -1]
    assert workload.think_s.tolist() == [0, 4, 4, 0, 4, 4, 0, 4, 4, 0]
    first = np.array([0, 3, 6, 9])
    assert np.all(np.isnan(np.delete(workload.arrived_at, first)))
    # Session starts are the arrival process's first four times (common random numbers).
    expected = build(dataclasses.replace(config, sessions=None, num_requests=4)).arrived_at
    np.testing.assert_array_equal(workload.arrived_at[first], expected)
    assert workload.content is not None
    assert workload.content.stream.tolist() == [0, 0, 0, 3, 3, 3, 6, 6, 6, 9]
    assert workload.content.group is None


def test_each_turn_carries_the_history_and_a_new_message() -> None:
    config = WorkloadConfig(num_requests=2_000, arrival=POISSON, lengths=LOGNORMAL,
                            sessions=dataclasses.replace(SESSIONS, turns=5,
                                                         turns_dist="geometric"))
    workload = build(config)
    # The lengths stream draws each request's new message and output, as without sessions.
    message, output = sample_lengths(LOGNORMAL, 2_000, streams()["lengths"])
    np.testing.assert_array_equal(workload.output_len, output)
    after = workload.after
    first = after < 0
    np.testing.assert_array_equal(workload.prompt_len[first], message[first])
    turn = np.flatnonzero(~first)
    assert np.all(after[turn] == turn - 1)
    np.testing.assert_array_equal(
        workload.prompt_len[turn],
        workload.prompt_len[turn - 1] + workload.output_len[turn - 1] + message[turn])


def test_a_turn_holds_the_previous_turns_blocks_then_its_own() -> None:
    workload = build(WorkloadConfig(
        num_requests=60, arrival=POISSON, lengths=LOGNORMAL,
        sessions=SessionsConfig(turns=4, think_time_s=1.0),
        prefix=PrefixConfig(shared_len=70, num_groups=2)))
    content, p, o = workload.content, workload.prompt_len, workload.output_len
    assert content is not None
    for i in np.flatnonzero(workload.after >= 0).tolist():
        j = i - 1
        previous = blocks(content, j, 16, int(p[j] + o[j]), int(p[j]))  # cached after turn j
        this = blocks(content, i, 16, int(p[i]), int(p[i]))
        assert this[: len(previous)] == previous
        assert content.group[i] == content.group[j] and content.stream[i] == content.stream[j]
    # Different sessions share only their group's prefix blocks (70 tokens: 4 whole blocks).
    a, b = (int(s) for s in np.flatnonzero(workload.after < 0)[:2])
    shared = set(blocks(content, a, 16, int(p[a]), int(p[a]))) & set(
        blocks(content, b, 16, int(p[b]), int(p[b])))
    expected = set() if content.group[a] != content.group[b] else {
        (GROUP + 3 * int(content.group[a]), k) for k in range(4)}
    assert shared == expected


def test_sessions_with_a_prefix_keep_one_group_and_class_per_session() -> None:
    workload = build(WorkloadConfig(
        num_requests=3_000, arrival=POISSON, lengths=LengthsConfig(prompt_len=50),
        sessions=SessionsConfig(turns=3, think_time_s=0.5, turns_dist="uniform"),
        prefix=PrefixConfig(shared_len=200, num_groups=5, popularity="zipf"),
        classes=(RequestClass("a", share=1.0), RequestClass("b", share=1.0, priority=1))))
    content = workload.content
    assert content is not None
    for values in (content.group, workload.class_id, workload.priority):
        for stream in np.unique(content.stream):
            assert np.unique(values[content.stream == stream]).size == 1
    first = workload.after < 0
    # Fixed 50-token messages: a first prompt is lengthened to the prefix and one token.
    assert np.all(workload.prompt_len[first] == 201)
    assert np.all(content.group_len == 200)


def test_sessions_end_early_when_the_next_turn_would_not_fit() -> None:
    limit = 2_000
    workload = build(WorkloadConfig(num_requests=3_000, arrival=POISSON, lengths=LOGNORMAL,
                                    sessions=SessionsConfig(turns=50, think_time_s=1.0)),
                     max_model_len=limit)
    after, p, o = workload.after, workload.prompt_len, workload.output_len
    follow = np.flatnonzero(after >= 0)
    assert np.all(p[follow] + o[follow] <= limit)
    first = np.flatnonzero(after < 0)
    lengths = np.diff(np.append(first, len(workload)))
    assert lengths.max() < 50  # every session outgrew the context before its 50 turns
    # A session ends only when its next turn would not fit: history + that request's length.
    message, _ = sample_lengths(LOGNORMAL, 3_000, streams()["lengths"])
    for start in first[1:].tolist():
        end = start - 1
        assert p[end] + o[end] + message[start] + o[start] > limit
    unlimited = build(WorkloadConfig(num_requests=3_000, arrival=POISSON, lengths=LOGNORMAL,
                                     sessions=SessionsConfig(turns=50, think_time_s=1.0)))
    assert np.count_nonzero(unlimited.after < 0) < first.size
    assert len(workload) == len(unlimited) == 3_000  # num_requests counts turns


def test_turn_and_think_time_distributions_have_their_means() -> None:
    n = 40_000
    rng = np.random.default_rng(5)
    geometric = draw_turns(SessionsConfig(turns=4, think_time_s=0, turns_dist="geometric"), n,
                           rng)
    # Geometric with p = 1/4: mean 4, sd sqrt(1-p)/p = 3.46; 5 standard errors.
    assert abs(geometric.mean() - 4) < 5 * 3.46 / math.sqrt(n) and geometric.min() >= 1
    uniform = draw_turns(SessionsConfig(turns=4, think_time_s=0, turns_dist="uniform"), n, rng)
    assert set(uniform.tolist()) == set(range(1, 8))
    assert abs(uniform.mean() - 4) < 5 * 2.0 / math.sqrt(n)  # sd of 1..7 is 2
    think = draw_think_s(SessionsConfig(turns=2, think_time_s=3.0, think_dist="exponential"), n,
                         rng)
    assert abs(think.mean() - 3.0) < 5 * 3.0 / math.sqrt(n) and think.min() >= 0
    fixed = draw_turns(SessionsConfig(turns=3, think_time_s=0), 10, rng)
    assert fixed.tolist() == [3] * 10


@settings(max_examples=60, deadline=None)
@given(
    message=st.lists(st.integers(1, 400), min_size=1, max_size=60),
    turns=st.integers(1, 6),
    turns_dist=st.sampled_from(["fixed", "geometric", "uniform"]),
    limit=st.one_of(st.none(), st.integers(2, 3_000)),
    min_first=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_session_plan_is_a_valid_workload(message, turns, turns_dist, limit, min_first,
                                              seed) -> None:
    rng = np.random.default_rng(seed)
    message_len = np.array(message)
    output_len = rng.integers(1, 200, size=message_len.size)
    config = SessionsConfig(turns=turns, think_time_s=2.0, turns_dist=turns_dist,
                            think_dist="exponential")
    plan = plan_sessions(config, message_len, output_len, rng, min_first_prompt=min_first,
                         max_model_len=limit)
    n = message_len.size
    arrived_at = np.full(n, np.nan)
    arrived_at[plan.first] = np.arange(plan.num_sessions, dtype=float)
    # The Workload checks the arrays (after[i] < i, NaN arrivals exactly for follow-ups).
    Workload(arrived_at, plan.prompt_len, output_len, after=plan.after, think_s=plan.think_s,
             content=SharedContent(stream=plan.stream))
    turn = np.flatnonzero(plan.after >= 0)
    np.testing.assert_array_equal(
        plan.prompt_len[turn], plan.prompt_len[turn - 1] + output_len[turn - 1] + message_len[turn])
    if limit is not None:
        assert np.all(plan.prompt_len[turn] + output_len[turn] <= limit)
    first = plan.after < 0
    np.testing.assert_array_equal(plan.prompt_len[first],
                                  np.maximum(message_len[first], min_first))
    most = {"fixed": turns, "uniform": 2 * turns - 1, "geometric": n}[turns_dist]
    assert np.all(np.diff(np.append(plan.first, n)) <= most)


def test_the_same_seed_gives_the_same_sessions_and_groups() -> None:
    config = WorkloadConfig(num_requests=500, arrival=POISSON, lengths=LOGNORMAL,
                            sessions=SessionsConfig(turns=3, think_time_s=2.0,
                                                    turns_dist="geometric",
                                                    think_dist="exponential"),
                            prefix=PrefixConfig(shared_len=64, num_groups=7, popularity="zipf"))
    one, two, other = build(config, 11), build(config, 11), build(config, 12)
    for name in ("arrived_at", "prompt_len", "output_len", "after", "think_s"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
    for name in ("group", "group_len", "stream"):
        np.testing.assert_array_equal(getattr(one.content, name), getattr(two.content, name))
    assert not np.array_equal(one.after, other.after)
    # The prefix stream is its own: other groups leave the session layout alone.
    regrouped = build_workload(config, *(streams(11)[k] for k in ("arrivals", "lengths")),
                               prefix_rng=np.random.default_rng(0),
                               session_rng=streams(11)["sessions"])
    np.testing.assert_array_equal(regrouped.after, one.after)
    np.testing.assert_array_equal(regrouped.think_s, one.think_s)
    assert not np.array_equal(regrouped.content.group, one.content.group)


def test_sessions_and_prefixes_need_their_streams() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="prefix_rng"):
        build_workload(WorkloadConfig(prefix=PrefixConfig(shared_len=8)), rng, rng)
    with pytest.raises(ValueError, match="session_rng"):
        build_workload(WorkloadConfig(sessions=SESSIONS), rng, rng)


def test_sessions_start_at_a_replayed_traces_times() -> None:
    config = WorkloadConfig(num_requests=30, trace=str(CONV),
                            arrival=ArrivalConfig(process="trace"), sessions=SESSIONS)
    workload = build(config)
    first = np.flatnonzero(workload.after < 0)
    assert first.size == 10
    times = np.loadtxt(CONV, delimiter=",", skiprows=1, max_rows=10, usecols=0)
    np.testing.assert_allclose(workload.arrived_at[first], times - times[0])


def test_sessions_draw_trace_rows_for_their_turns() -> None:
    config = WorkloadConfig(num_requests=300, trace=str(ARXIV), arrival=POISSON,
                            lengths=LengthsConfig(dist="trace"), sessions=SESSIONS)
    workload = build(config)
    assert np.count_nonzero(workload.after < 0) == 100
    assert workload.content is not None and workload.content.hash_ids is None


# --------------------------------------------------------------------------- segments


def test_segments_of_a_group_prefix_and_the_block_that_straddles_its_end() -> None:
    content = SharedContent(group=np.array([2, -1]), group_len=np.array([40, 0]),
                            stream=np.array([5, 6]))
    # 40 shared tokens: blocks 0-1 are the group's; block 2 (tokens 32-47) mixes the prefix's
    # end with the request's own tokens, so it belongs to the request's stream.
    assert content.segments(0, 16, 100, 100) == [(GROUP + 6, 0, 2), (STREAM + 15, 2, 4)]
    assert content.segments(0, 16, 20, 100) == [(GROUP + 6, 0, 1)]
    assert content.segments(1, 16, 100, 100) == [(STREAM + 18, 0, 6)]
    assert content.segments(0, 16, 15, 100) == []


def test_segments_of_a_conversation_stream() -> None:
    # Turn 0: 50 prompt + 30 output tokens; turn 1 sends all 80 and 20 new ones.
    content = SharedContent(stream=np.array([0, 0]))
    turn0 = content.segments(0, 16, 80, 50)
    turn1 = content.segments(1, 16, 100, 100)
    assert turn0 == [(STREAM, 0, 5)] and turn1 == [(STREAM, 0, 6)]
    # Without streams a request is a stream of its own: nothing shared.
    alone = SharedContent()
    assert alone.segments(1, 16, 100, 100) == [(STREAM + 3, 0, 6)]


def test_segments_of_explicit_block_ids_and_outputs_of_their_own() -> None:
    # Two requests with 64-token hash blocks: ids [7, 9, 11] and [7, 9, 12].
    content = SharedContent(hash_offsets=np.array([0, 3, 6]),
                            hash_ids=np.array([7, 9, 11, 7, 9, 12]), hash_block_tokens=64)
    content.check(2, block_size=16)
    first = content.segments(0, 16, 150 + 40, 150)
    # 150 prompt tokens: 9 whole blocks, 4 per id and 1 of the third; the output's blocks
    # (9 and 10) are the request's own, never an id's.
    assert first == [(HASH + 21, 0, 4), (HASH + 27, 0, 4), (HASH + 33, 0, 1), (STREAM, 9, 2)]
    second = content.segments(1, 16, 190, 150)
    assert set(blocks(content, 0, 16, 190, 150)) & set(blocks(content, 1, 16, 190, 150)) == {
        (HASH + 21, k) for k in range(4)} | {(HASH + 27, k) for k in range(4)}
    assert second[-1] == (STREAM + 3, 9, 2)
    with pytest.raises(ValueError, match="not whole KV blocks"):
        content.check(2, block_size=24)


@settings(max_examples=80, deadline=None)
@given(
    prompt_len=st.integers(1, 3_000),
    output_len=st.integers(0, 800),
    block_size=st.sampled_from([1, 8, 16, 32]),
    kind=st.sampled_from(["group", "stream", "hash"]),
    group_len=st.integers(0, 3_000),
)
def test_segments_cover_every_whole_block_once_and_ids_never_name_output(
        prompt_len, output_len, block_size, kind, group_len) -> None:
    num_ids = -(-prompt_len // 64)
    content = {
        "group": SharedContent(group=np.array([3]), group_len=np.array([group_len])),
        "stream": SharedContent(stream=np.array([9])),
        "hash": SharedContent(hash_offsets=np.array([0, num_ids]),
                              hash_ids=np.arange(num_ids) + 100, hash_block_tokens=64),
    }[kind]
    num_tokens = prompt_len + output_len
    named = blocks(content, 0, block_size, num_tokens, prompt_len)
    assert len(named) == num_tokens // block_size
    kinds = [space % 3 for space, _index in named]
    # Shared blocks come first, then the request's own stream, indexed by position.
    own = next((k for k, space in enumerate(kinds) if space == STREAM), len(named))
    assert STREAM not in kinds[:own] and all(space == STREAM for space in kinds[own:])
    assert [index for _space, index in named[own:]] == list(range(own, len(named)))
    # Shared (group or id) blocks lie wholly inside the prompt, and a group's in its prefix.
    assert all((k + 1) * block_size <= prompt_len for k in range(own))
    if kind == "group":
        assert all((k + 1) * block_size <= group_len for k in range(own))


# --------------------------------------------------------------------------- runs


def test_runs_with_prefix_groups_and_sessions_hit_the_prefix_cache() -> None:
    small = ["workload.num_requests=60", "metrics.warmup_s=0", "metrics.cooldown_s=0"]
    grouped = run_scenario(load_scenario(ROOT_SCENARIO, [
        *small, "workload.prefix.shared_len=1024", "workload.prefix.num_groups=2"]))
    assert grouped.summary["completed"] == 60 and grouped.workload.content is not None
    cached = grouped.result.cached_tokens
    assert cached is not None and np.all(cached % 16 == 0) and np.all(cached <= 1024)
    assert grouped.summary["prefix_cache_hit_rate"] > 0.3
    sessions = run_scenario(load_scenario(ROOT_SCENARIO, [
        *small, "workload.sessions.turns=3", "workload.sessions.think_time_s=2"]))
    workload, result = sessions.workload, sessions.result
    assert sessions.summary["completed"] == 60
    # Each next turn is sent its think time after the previous turn finished, and finds the
    # previous turn's whole blocks cached: its prompt and its output but the last token (whose
    # KV is never computed), and never its own last prompt token (computed for its logits).
    turn = np.flatnonzero(workload.after >= 0)
    np.testing.assert_allclose(result.arrived_at[turn],
                               result.finished_at[turn - 1] + workload.think_s[turn])
    held = (workload.prompt_len[turn - 1] + workload.output_len[turn - 1] - 1) // 16 * 16
    assert result.cached_tokens is not None
    np.testing.assert_array_equal(
        result.cached_tokens[turn], np.minimum(held, (workload.prompt_len[turn] - 1) // 16 * 16))
