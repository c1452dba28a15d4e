"""Co-located replica groups on unlike GPUs (`cluster.groups`): each group's KV capacity, cost
model and step times from its own GPU; one router over every replica of every group (each
router by hand); per-group rejection; per-group summaries and costs summed by hand; bad input;
invariants (hypothesis) and fast-forward against stepping."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fast_forward import _assert_identical
from test_mixed_gpus import _cli_error, _line_of, _write

from simserve.catalog import load_catalog
from simserve.config import load_scenario, scenario_from_mapping
from simserve.costmodel import ConstantCostModel
from simserve.costmodel.base import BatchShape
from simserve.costmodel.roofline import RooflineCostModel
from simserve.engine import POLICIES, EngineLimits, EngineSetup, PoolSetup, simulate
from simserve.engine.records import SimulationResult
from simserve.errors import InputError
from simserve.experiments.run import run_scenario
from simserve.metrics.energy import JOULES_PER_KWH, steps_dynamic_j
from simserve.pricing import gpu_rates
from simserve.resolve import resolve
from simserve.workload import Workload
from simserve.workload.content import SharedContent

GIB = 2**30
STEP_S = 0.010
CATALOG = load_catalog()


# --------------------------------------------------------------------------- engine level


def _group(instances: int = 1, step_s: float = STEP_S, router: str = "round_robin",
           policy: str = "chunked_prefill", caching: bool = False, **limits) -> PoolSetup:
    params = dict(num_blocks=1000, block_size=16, max_num_seqs=8, max_num_batched_tokens=2048,
                  max_model_len=100_000)
    params.update(limits)
    return PoolSetup(instances, EngineLimits(**params), ConstantCostModel(step_s),
                     POLICIES[policy], router=router, prefix_caching=caching)


def _workload(arrived_at, prompt_len, output_len, **extra) -> Workload:
    return Workload(arrived_at=np.asarray(arrived_at, dtype=float),
                    prompt_len=np.asarray(prompt_len), output_len=np.asarray(output_len),
                    **extra)


def _run(groups: list[PoolSetup], workload: Workload, **kw) -> SimulationResult:
    return simulate(workload, EngineSetup(tuple(groups)), **kw)


# A group of one replica whose KV cache holds 10 blocks of 16 tokens, and a group of two
# replicas with room for anything: SMALL requests fit both, BIG ones only the second group.
SMALL, BIG = (50, 10), (300, 10)


def _small_and_big(router: str) -> list[PoolSetup]:
    return [_group(1, router=router, num_blocks=10), _group(2, router=router)]


def _sizes(kinds: list[tuple[int, int]]) -> dict[str, list[int]]:
    return {"prompt_len": [p for p, _ in kinds], "output_len": [o for _, o in kinds]}


ORDER = [SMALL, BIG, SMALL, BIG, SMALL, SMALL]


def test_round_robin_skips_replicas_a_request_does_not_fit_and_goes_on_after_its_choice():
    # Replicas: 0 (small group), 1 and 2 (large group). After each choice the cycle goes on at
    # the next replica; a BIG request skips replica 0.
    w = _workload(np.arange(6) * 0.001, **_sizes(ORDER))
    r = _run(_small_and_big("round_robin"), w)
    assert r.replica.tolist() == [0, 1, 2, 1, 2, 0]
    assert r.rejected.tolist() == [0] * 6


def test_round_robin_over_unlike_groups_ignores_their_speed():
    # A three times slower group still gets every other request.
    w = _workload(np.arange(8) * 0.001, [20] * 8, [5] * 8)
    r = _run([_group(1), _group(1, step_s=3 * STEP_S)], w)
    assert r.replica.tolist() == [0, 1] * 4


def test_least_outstanding_counts_requests_among_the_replicas_that_fit():
    # All arrive at t=0, before any step: outstanding = requests routed there so far.
    # r0 [0,0,0] -> 0; r1 (BIG) {1,2} [0,0] -> 1; r2 [1,1,0] -> 2; r3 (BIG) [1,1] -> 1;
    # r4 [1,2,1] -> 0; r5 [2,2,1] -> 2.
    w = _workload(np.zeros(6), **_sizes(ORDER))
    r = _run(_small_and_big("least_outstanding"), w)
    assert r.replica.tolist() == [0, 1, 2, 1, 0, 2]


def test_least_kv_compares_free_fractions_of_unlike_caches():
    # Replica 0: 200 blocks; replica 1: 1000 blocks. r0 (960-token prompt: 60 blocks, at most
    # 67 with its 100 outputs) ties at 1.0 -> replica 0, which keeps >= 133/200 = 0.665 free.
    # r1..r3 (2048-token prompts, 128 blocks each, 20 ms apart: each is allocated by the next
    # arrival) go to replica 1 while its free share is above that: 1.0, >= 0.87, >= 0.738; at
    # r4's arrival it is <= 1 - 384/1000 = 0.616, so r4 goes to replica 0, although replica 1
    # has over 600 free blocks to replica 0's 140 at most (the most free blocks would pick 1).
    w = _workload([0.0, 0.02, 0.04, 0.06, 0.08], [960, 2048, 2048, 2048, 100],
                  [100, 100, 100, 100, 10])
    r = _run([_group(1, router="least_kv", num_blocks=200),
              _group(1, router="least_kv", num_blocks=1000)], w)
    assert r.replica.tolist() == [0, 1, 1, 1, 0]


def test_least_kv_among_alike_replicas_is_the_most_free_blocks():
    # A fraction of equal totals orders replicas as their free blocks do: the same choices as
    # one pool of two replicas.
    w = _workload([0.0, 0.02, 0.04, 0.06], [960, 2048, 100, 100], [100, 100, 10, 10])
    grouped = _run([_group(1, router="least_kv"), _group(1, router="least_kv")], w)
    pooled = _run([_group(2, router="least_kv")], w)
    assert grouped.replica.tolist() == pooled.replica.tolist() == [0, 1, 0, 0]
    _assert_identical(grouped, pooled)


def test_prefix_aware_weighs_cache_and_load_among_the_replicas_that_fit():
    # Every prompt starts with the same 64-token prefix (4 blocks). Replica 0 (10 blocks) holds
    # 160 tokens, so r2 (150 + 30 tokens) fits replica 1 only.
    # r0: nothing cached, no load -> 0. r1: replica 0 caches 64/100 of its prompt -> 0.
    # r2 -> 1 (and caches the prefix there). r3 at t=3: both cache 0.64 of its prompt, no load
    # -> 0. r4 at the same instant: 0.64 - 0.5 * 1/2 on replica 0 (r3 waits there) against
    # 0.64 on replica 1 -> 1.
    groups = [_group(1, router="prefix_aware", caching=True, num_blocks=10),
              _group(1, router="prefix_aware", caching=True)]
    prompt = [100, 100, 150, 100, 100]
    w = _workload([0.0, 1.0, 2.0, 3.0, 3.0], prompt, [4, 4, 30, 4, 4],
                  content=SharedContent(group=[0] * 5, group_len=[64] * 5))
    r = _run(groups, w)
    assert r.replica.tolist() == [0, 0, 1, 0, 1]
    assert r.cached_tokens.tolist() == [0, 64, 0, 64, 64]


def test_a_request_no_group_fits_is_rejected_one_some_fit_goes_there():
    # Group 0: 10 blocks (160 tokens); group 1: 30 blocks (480 tokens). A 600-token request
    # fits neither; a 300-token one only group 1.
    w = _workload([0.0, 0.0, 0.0], [50, 300, 590], [10, 10, 10])
    r = _run([_group(1, num_blocks=10), _group(1, num_blocks=30)], w)
    assert r.rejected.tolist() == [0, 0, 2]  # exceeds_kv_capacity
    assert r.replica.tolist() == [0, 1, -1]


def test_rejection_reason_is_the_first_any_group_gives():
    # Group 0 takes whole prompts with a 64-token budget (a 100-token prompt: over budget);
    # group 1 has 5 blocks (80 tokens: too little KV). Context is checked first, then KV,
    # then the budget: the request is refused for its KV.
    w = _workload([0.0], [100], [10])
    groups = [_group(1, policy="prefill_first", max_num_batched_tokens=64),
              _group(1, num_blocks=5)]
    assert _run(groups, w).rejected.tolist() == [2]
    # With room on group 1 it is served there.
    groups[1] = _group(1)
    r = _run(groups, w)
    assert (r.rejected.tolist(), r.replica.tolist()) == ([0], [1])


def test_one_group_is_the_pool_of_replicas():
    w = _workload(np.arange(12) * 0.003, [30, 80, 20] * 4, [20, 5, 40] * 4)
    for router in ("round_robin", "least_outstanding", "least_kv"):
        grouped = _run([_group(2, router=router), _group(1, router=router)], w)
        pooled = _run([_group(3, router=router)], w)
        _assert_identical(grouped, pooled)


# --------------------------------------------------------------------------- invariants


@st.composite
def _grouped_runs(draw):
    n = draw(st.integers(1, 14))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.004, 0.01, 0.03]), min_size=n, max_size=n))
    workload = _workload(np.cumsum([0.0, *gaps[1:]]),
                         draw(st.lists(st.integers(1, 60), min_size=n, max_size=n)),
                         draw(st.lists(st.integers(1, 40), min_size=n, max_size=n)))
    router = draw(st.sampled_from(["round_robin", "least_outstanding", "least_kv"]))
    groups = [
        _group(draw(st.integers(1, 2)), step_s=draw(st.sampled_from([0.01, 0.025])),
               router=router, policy=draw(st.sampled_from(sorted(POLICIES))),
               num_blocks=draw(st.integers(2, 12)), block_size=4,
               max_num_seqs=draw(st.integers(1, 4)),
               max_num_batched_tokens=draw(st.sampled_from([16, 48])), max_model_len=90)
        for _ in range(draw(st.integers(1, 3)))
    ]
    return workload, groups


def _fits(group: PoolSetup, prompt: int, output: int) -> bool:
    """Whether one of the group's engines can ever serve the request (by hand)."""
    limits = group.limits
    blocks = -(-(prompt + output - 1) // limits.block_size)
    over_budget = group.policy.whole_prompts and prompt > limits.max_num_batched_tokens
    return (prompt + output <= limits.max_model_len and blocks <= limits.num_blocks
            and not over_budget)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_grouped_runs())
def test_every_request_is_served_by_exactly_one_replica_of_a_group_it_fits(run):
    workload, groups = run
    r = _run(groups, workload)
    first = np.cumsum([0, *(g.instances for g in groups)])
    group_of = np.searchsorted(first, r.replica, side="right") - 1
    served = r.rejected == 0
    for rid in range(len(workload)):
        p, o = int(workload.prompt_len[rid]), int(workload.output_len[rid])
        fitting = [g for g in groups if _fits(g, p, o)]
        assert served[rid] == bool(fitting)
        if not served[rid]:
            assert r.replica[rid] == -1 and r.tokens_of(rid).size == 0
            continue
        assert _fits(groups[group_of[rid]], p, o)
        # Every token came from a step of that one replica.
        pieces = slice(r.tokens.piece_offsets[rid], r.tokens.piece_offsets[rid + 1])
        steps = np.concatenate([
            r.tokens.source[s:s + n] for s, n in
            zip(r.tokens.piece_start[pieces], r.tokens.piece_len[pieces], strict=True)])
        assert steps.size == o
        assert set(r.steps.replica[steps].tolist()) == {r.replica[rid]}
    per_group = np.bincount(group_of[served], minlength=len(groups))
    assert per_group.sum() == served.sum()
    # Fast-forwarding gives the records of stepping one step at a time.
    _assert_identical(r, _run(groups, workload, fast_forward=False))


# --------------------------------------------------------------------------- scenarios

PROMPT, OUTPUT = 200, 5


def _scenario(groups: list[dict], **extra) -> dict:
    """Llama-3-8B on H100 by default, co-located `groups`, two requests sent at once."""
    data = {
        "model": "llama-3-8b",
        "hardware": "h100-80gb-sxm",
        "cost_model": {"kind": "constant", "step_time_ms": 10},
        "cluster": {"mode": "colocated", "groups": groups},
        "workload": {"num_requests": 2, "arrival": {"process": "offline"},
                     "lengths": {"dist": "fixed", "prompt_len": PROMPT, "output_len": OUTPUT}},
        "metrics": {"warmup_s": 0, "cooldown_s": 0},
    }
    data.update(extra)
    return data


def _expected_blocks(gpu_name: str) -> int:
    """KV blocks of one TP1 Llama-3-8B replica by hand: (memory x 0.9 - weights - 1 GiB) over
    a 16-token block (32 layers x 8 KV heads x 128 x 2 (K, V) x 2 B per token)."""
    memory = CATALOG.gpu(gpu_name).memory_gib * GIB
    weights = CATALOG.model("llama-3-8b").weight_bytes
    return int((memory * 0.9 - weights - GIB) // (32 * 8 * 128 * 2 * 2 * 16))


def test_each_group_sizes_its_kv_cache_and_cost_model_from_its_own_gpu():
    data = _scenario([{"hardware": "h100-80gb-sxm", "replicas": 2},
                      {"hardware": "l40s", "replicas": 3, "engine": {"max_num_seqs": 64}}],
                     cost_model={"kind": "roofline"})
    resolved = resolve(scenario_from_mapping(data))
    h100, l40s = resolved.pools
    assert (h100.name, l40s.name) == ("group0", "group1")
    assert (h100.setup.instances, l40s.setup.instances) == (2, 3)
    assert h100.setup.limits.num_blocks == _expected_blocks("h100-80gb-sxm")
    assert l40s.setup.limits.num_blocks == _expected_blocks("l40s")
    assert (h100.setup.limits.max_num_seqs, l40s.setup.limits.max_num_seqs) == (256, 64)
    assert l40s.setup.cost_model.describe()["gpu"] == "l40s"
    assert resolved.num_gpus == 5
    assert resolved.engine_setup.disaggregated is False


def test_a_slower_groups_steps_take_its_own_constant_step_time():
    # Scenario: 10 ms steps; the A100 group's own cost model: 25 ms. Round robin sends r0 to
    # the H100 replica, r1 to the A100 one; each runs a prefill step and 4 decode steps.
    data = _scenario([{"name": "h100", "replicas": 1},
                      {"name": "a100", "hardware": "a100-80gb-sxm",
                       "cost_model": {"step_time_ms": 25}}])
    out = run_scenario(scenario_from_mapping(data))
    r = out.result
    assert r.replica.tolist() == [0, 1]
    on_a100 = r.steps.replica == 1
    assert r.steps.duration_s[on_a100].tolist() == [25 * 1e-3] * OUTPUT
    assert r.steps.duration_s[~on_a100].tolist() == [10 * 1e-3] * OUTPUT
    assert r.tokens_of(1).tolist() == pytest.approx([0.025 * (i + 1) for i in range(OUTPUT)],
                                                    rel=1e-12)
    groups = out.summary["groups"]
    assert groups["h100"]["mean_tpot_ms"] == pytest.approx(10.0, rel=1e-9)
    assert groups["a100"]["mean_tpot_ms"] == pytest.approx(25.0, rel=1e-9)
    assert groups["a100"]["mean_ttft_ms"] == pytest.approx(25.0, rel=1e-9)
    assert groups["a100"]["cost_model"] == {"kind": "constant", "step_time_ms": 25.0}
    assert "cost_model" not in out.summary and "num_gpu_blocks" not in out.summary


@pytest.mark.parametrize("gpu", ["a100-80gb-sxm", "l40s"])
def test_a_groups_steps_are_priced_by_its_gpus_roofline_exactly(gpu):
    data = _scenario([{"replicas": 1}, {"hardware": gpu}], cost_model={"kind": "roofline"})
    scenario = scenario_from_mapping(data)
    r = run_scenario(scenario).result
    cost = RooflineCostModel(CATALOG.gpu(gpu), CATALOG.model("llama-3-8b"), 1,
                             scenario.cost_model)
    # r1 alone on the group's replica: its prompt, then one sequence whose context grows.
    expected = [cost.step_time(BatchShape(PROMPT, 1, PROMPT * PROMPT / 2, PROMPT, 0, 0, 0))]
    expected += [cost.step_time(BatchShape(0, 0, 0.0, 0, 1, 1, PROMPT + i))
                 for i in range(1, OUTPUT)]
    assert r.steps.duration_s[r.steps.replica == 1].tolist() == pytest.approx(expected,
                                                                              rel=1e-12)


def test_summary_counts_each_groups_requests_and_tokens():
    data = _scenario([{"name": "fast", "replicas": 2},
                      {"name": "slow", "hardware": "a100-80gb-sxm", "replicas": 1}])
    data["workload"]["num_requests"] = 7
    summary = run_scenario(scenario_from_mapping(data)).summary
    fast, slow = summary["groups"]["fast"], summary["groups"]["slow"]
    # Round robin over replicas 0, 1 (fast) and 2 (slow): 5 and 2 of the 7 requests.
    assert (fast["num_routed"], slow["num_routed"]) == (5, 2)
    assert (fast["completed"], slow["completed"]) == (5, 2)
    assert (fast["num_output_tokens"], slow["num_output_tokens"]) == (5 * OUTPUT, 2 * OUTPUT)
    assert (fast["hardware"], fast["replicas"], fast["num_gpus"]) == ("h100-80gb-sxm", 2, 2)
    assert (slow["hardware"], slow["replicas"], slow["num_gpus"]) == ("a100-80gb-sxm", 1, 1)
    assert (summary["replicas"], summary["num_gpus"]) == (3, 3)


def test_costs_sum_over_groups_at_each_groups_price_and_power():
    data = _scenario([{"name": "h100", "replicas": 1},
                      {"name": "a100", "hardware": "a100-80gb-sxm", "replicas": 2, "tp": 2}],
                     cost={"gpu_hour_usd": {"h100-80gb-sxm": 4.0, "a100-80gb-sxm": 1.5}})
    data["workload"]["num_requests"] = 3
    out = run_scenario(scenario_from_mapping(data))
    s, steps = out.summary, out.result.steps
    span_s = float(np.max(steps.started_at + steps.duration_s))
    # 1 H100 + 2 replicas x 2 A100s, rented from 0 to the end of the last step.
    assert s["gpu_hours"] == pytest.approx(5 * span_s / 3600, rel=1e-12)
    assert s["cost_pools"]["h100"]["cost_usd"] == pytest.approx(4.0 * span_s / 3600, rel=1e-12)
    assert s["cost_pools"]["a100"]["cost_usd"] == pytest.approx(4 * 1.5 * span_s / 3600,
                                                                rel=1e-12)
    assert s["cost_usd"] == pytest.approx((4.0 + 6.0) * span_s / 3600, rel=1e-12)
    model = CATALOG.model("llama-3-8b")
    energy_j = 0.0
    for name, gpu, first, last, tp, gpus in (("h100", "h100-80gb-sxm", 0, 1, 1, 1),
                                             ("a100", "a100-80gb-sxm", 1, 3, 2, 4)):
        spec = CATALOG.gpu(gpu)
        rates = gpu_rates(spec, None)
        mine = (steps.replica >= first) & (steps.replica < last)
        subset = dataclasses.replace(steps, **{f.name: getattr(steps, f.name)[mine]
                                               for f in dataclasses.fields(steps)})
        group_j = rates.idle_w * gpus * span_s + float(
            np.sum(steps_dynamic_j(subset, model, spec, rates, tp, 1)))
        assert s["cost_pools"][name]["energy_kwh"] == pytest.approx(group_j / JOULES_PER_KWH,
                                                                   rel=1e-12)
        assert s["cost_pools"][name]["num_gpus"] == gpus
        energy_j += group_j
    assert s["energy_kwh"] == pytest.approx(energy_j / JOULES_PER_KWH, rel=1e-12)
    assert s["cost_per_mtok_usd"] == pytest.approx(s["cost_usd"] * 1e6 / (3 * OUTPUT),
                                                   rel=1e-12)


def test_grouped_runs_are_deterministic_and_one_group_matches_replicas():
    data = _scenario([{"replicas": 1}, {"hardware": "a100-80gb-sxm", "replicas": 2}])
    data["workload"] = {"num_requests": 40, "arrival": {"rate": 30},
                        "lengths": {"dist": "uniform", "prompt_len": 300, "output_len": 40,
                                    "range_ratio": 0.5}}
    first, second = (run_scenario(scenario_from_mapping(data)) for _ in range(2))
    assert json.dumps(first.summary) == json.dumps(second.summary)
    single = dict(data, cluster={"groups": [{"replicas": 3}]})
    plain = dict(data, cluster={"replicas": 3})
    _assert_identical(run_scenario(scenario_from_mapping(single)).result,
                      run_scenario(scenario_from_mapping(plain)).result)


# --------------------------------------------------------------------------- bad input


BAD = [
    ("unknown GPU", [{"replicas": 1}, {"hardware": "tpu-v5"}], {}, "hardware: tpu-v5",
     "cluster.groups[1].hardware: unknown GPU 'tpu-v5'"),
    ("replicas < 1", [{"replicas": 1}, {"replicas": 0}], {}, "replicas: 0",
     "cluster.groups[1].replicas: must be in [1, 4,096], got 0"),
    ("too many in all", [{"replicas": 4000}, {"replicas": 100}], {}, "groups:",
     "cluster.groups: 4,100 replicas in all; at most 4,096"),
    ("empty", [], {}, "groups: []", "cluster.groups: must list at least one group"),
    ("with replicas", [{"replicas": 1}], {"replicas": 2}, "replicas: 2",
     "cluster.replicas: not with cluster.groups"),
    ("disaggregated", [{"replicas": 1}], {"mode": "disaggregated"}, "groups:",
     "cluster.groups: replica groups make a co-located cluster"),
    ("cluster-wide key", [{"engine": {"block_size": 32}}], {}, "block_size: 32",
     "cluster.groups[0].engine.block_size: is the cluster's"),
    ("group engine value", [{"replicas": 1}, {"engine": {"max_num_seqs": 0}}], {},
     "max_num_seqs: 0", "cluster.groups[1].engine.max_num_seqs: must be >= 1"),
]


@pytest.mark.parametrize(("case", "groups", "cluster", "line_text", "expected"), BAD,
                         ids=[b[0] for b in BAD])
def test_bad_groups_are_one_line_errors_naming_field_file_and_line(
        tmp_path, capsys, case, groups, cluster, line_text, expected):
    data = _scenario(groups)
    data["cluster"].update(cluster)
    path = _write(tmp_path, data)
    err = _cli_error(tmp_path, capsys, path)
    assert f"{path}:{_line_of(path, line_text)}: {expected}" in err


def _calibrated(groups: list[dict]) -> dict:
    return _scenario(groups, model="opt-13b", hardware="a100-80gb-sxm",
                     cost_model={"kind": "calibrated",
                                 "profile": "a100-80gb-sxm_opt-13b_tp1_distserve"})


def test_the_scenarios_profile_on_a_group_of_another_gpu_names_the_groups_hardware(
        tmp_path, capsys):
    path = _write(tmp_path, _calibrated([{"replicas": 1}, {"hardware": "h100-80gb-sxm"}]))
    err = _cli_error(tmp_path, capsys, path)
    assert f"{path}:{_line_of(path, 'hardware: h100-80gb-sxm')}: cluster.groups[1].hardware: " \
           "profile " in err
    assert "set cluster.groups[1].cost_model.profile to a profile fitted on h100-80gb-sxm" in err


def test_a_groups_profile_for_another_gpu_names_the_groups_profile(tmp_path, capsys):
    path = _write(tmp_path, _calibrated(
        [{"replicas": 1}, {"hardware": "h100-80gb-sxm",
                           "cost_model": {"profile": "a100-80gb-sxm_opt-13b_tp1_vllm"}}]))
    err = _cli_error(tmp_path, capsys, path)
    line = _line_of(path, "profile: a100-80gb-sxm_opt-13b_tp1_vllm")
    assert f"{path}:{line}: cluster.groups[1].cost_model.profile: profile " in err


def test_a_group_gpu_too_small_for_the_weights_names_the_groups_hardware(tmp_path, capsys):
    data = _scenario([{"tp": 4}, {"hardware": "l40s", "tp": 1}], model="llama-3-70b")
    path = _write(tmp_path, data)
    err = _cli_error(tmp_path, capsys, path)
    assert f"{path}:{_line_of(path, 'hardware: l40s')}: cluster.groups[1].hardware: " in err
    assert "leave no KV-cache memory on l40s" in err


def test_a_missing_group_item_in_set_is_an_error(tmp_path, capsys):
    path = _write(tmp_path, _scenario([{"replicas": 1}]))
    err = _cli_error(tmp_path, capsys, path, "--set", "cluster.groups[3].replicas=2")
    assert "--set: cluster.groups[3].replicas: cluster.groups has 1 items: there is no item 3" \
        in err


# --------------------------------------------------------------------------- commands


def test_set_and_sweep_axes_address_a_group_by_index(tmp_path):
    from simserve.experiments.sweep import load_sweep_spec, plan_sweep

    base = _write(tmp_path, _scenario([{"replicas": 1}, {"hardware": "a100-80gb-sxm"}]))
    scenario = load_scenario(base, ["cluster.groups[1].replicas=3",
                                    "cluster.groups[0].engine.max_num_seqs=32"])
    assert [g.replicas for g in scenario.cluster.groups] == [1, 3]
    assert resolve(scenario).pools[0].setup.limits.max_num_seqs == 32
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: g\nbase: {base}\ngrid:\n  cluster.groups[1].replicas: [1, 2]\n"
                    "  engine.max_num_seqs: [16, 64]\n")
    plan = plan_sweep(load_sweep_spec(spec))
    seen = [(resolve(run.scenario).num_gpus,
             [p.setup.limits.max_num_seqs for p in resolve(run.scenario).pools])
            for run in plan.runs]
    # An unset group key follows the scenario's, swept or not.
    assert seen == [(2, [16, 16]), (2, [64, 64]), (3, [16, 16]), (3, [64, 64])]


def test_capacity_search_runs_on_groups(tmp_path):
    from simserve.experiments.capacity import CapacitySettings, parse_slo_rule, search_capacity

    data = _scenario([{"replicas": 1}, {"hardware": "a100-80gb-sxm",
                                        "cost_model": {"step_time_ms": 20}}],
                     cost={})
    data["workload"] = {"num_requests": 60, "arrival": {"rate": 10},
                        "lengths": {"dist": "fixed", "prompt_len": 100, "output_len": 20}}
    data["metrics"]["slo"] = {"tpot_ms": 15}
    settings = CapacitySettings(rule=parse_slo_rule("attainment:0.5"), seeds=(0,),
                                tolerance=0.2)
    result = search_capacity(scenario_from_mapping(data), settings)
    # 1 H100 at $3.99/h and 1 A100 at $1.79/h (the catalog's).
    assert result.num_gpus == 2
    assert result.usd_per_hour == pytest.approx(3.99 + 1.79)
    assert result.capacity_rps is not None and result.capacity_rps > 0


def test_sweep_figures_label_replica_groups_by_their_gpus():
    from simserve.plots_sweep import _compact, _value_text

    cell = json.dumps([{"hardware": "h100-80gb-sxm", "replicas": 2},
                       {"hardware": "l40s", "tp": 2}])
    assert _value_text(cell) == "2 x h100-80gb-sxm + 1 x l40s (tp 2)"
    assert _compact("groups", cell) == ["2 x h100-80gb-sxm", "1 x l40s (tp 2)"]
    assert _compact("decode", json.dumps({"instances": 2})) == ["instances=2"]


@pytest.mark.parametrize("overrides", [["cluster.replicas=100000000"],
                                       ["cluster.mode=disaggregated",
                                        "cluster.decode.instances=5000"]])
def test_clusters_too_large_to_simulate_are_refused_not_left_hanging(overrides):
    with pytest.raises(InputError, match=r"must be in \[1, 4,096\]"):
        load_scenario("scenarios/default.yaml", overrides)
