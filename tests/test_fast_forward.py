"""Fast-forward: pricing a run of identical decode steps as one event gives exactly the records
of stepping one event per step, on every policy, with speculation, pipeline parallelism,
disaggregation, several replicas and closed-loop clients; and the cost models' vectorised and
per-step prices agree to the bit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_properties import queue_inputs
from test_golden import CASES, ROOT

from simserve.catalog import load_catalog
from simserve.config import CostModelConfig, EngineConfig, load_scenario
from simserve.costmodel import BatchShape, ConstantCostModel
from simserve.costmodel.base import decode_run_fn, decode_run_s, decode_step_fn
from simserve.costmodel.calibrated import CalibratedCostModel, load_profile
from simserve.costmodel.roofline import RooflineCostModel
from simserve.costmodel.select import PROFILES_DIR, build_cost_model
from simserve.costmodel.serving import ServingOverheadCostModel
from simserve.engine import POLICIES, QUEUES, EngineLimits, EngineSetup, simulate
from simserve.engine.records import SimulationResult
from simserve.experiments.run import run_scenario
from simserve.workload import Workload

CATALOG = load_catalog()


def _records(result: SimulationResult) -> dict[str, object]:
    """Every array a run produced (token times expanded), for exact comparison."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if f.name == "tokens":
            out["token_offsets"] = result.token_offsets
            out["token_times_s"] = result.token_times_s
        elif f.name == "steps":
            out.update({f"steps.{g.name}": getattr(value, g.name)
                        for g in dataclasses.fields(value)})
        elif f.name != "num_step_events":
            out[f.name] = value
    return out


def _assert_identical(a: SimulationResult, b: SimulationResult) -> None:
    ra, rb = _records(a), _records(b)
    assert ra.keys() == rb.keys()
    for key in ra:
        x, y = ra[key], rb[key]
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, key
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), key
            if x.dtype.kind == "f":  # bit for bit, -0.0 and NaN payloads included
                assert x.tobytes() == y.tobytes(), key
        else:
            assert x == y, key


@pytest.mark.parametrize(("case", "scenario", "overrides"), CASES, ids=[c[0] for c in CASES])
def test_fast_forward_gives_the_records_of_stepping(case, scenario, overrides):
    sc = load_scenario(ROOT / scenario, overrides)
    fast, slow = run_scenario(sc), run_scenario(sc, fast_forward=False)
    _assert_identical(fast.result, slow.result)
    assert fast.summary == slow.summary
    # Each step was its own event when stepping.
    assert slow.result.num_step_events == len(slow.result.steps)


def test_fast_forward_collapses_light_load_decode_steps():
    sc = load_scenario(ROOT / "scenarios/bench.yaml",
                       ["workload.num_requests=300", "workload.arrival.rate=4"])
    result = run_scenario(sc).result
    # NOTE: at light load most steps are plain decodes between an arrival and a finish; the
    # shipped bench at rate 4 runs ~10 steps per event (measured 290,297 steps, 29,242 events).
    assert len(result.steps) > 5 * result.num_step_events


@st.composite
def _runs(draw):
    n = draw(st.integers(1, 14))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.01, 0.02, 0.035, 0.3]), min_size=n,
                         max_size=n))
    arrived = np.cumsum([0.0, *gaps[1:]])
    workload = Workload(
        arrived_at=arrived,
        prompt_len=np.array(draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))),
        output_len=np.array(draw(st.lists(st.integers(1, 60), min_size=n, max_size=n))),
        **draw(queue_inputs(n)),
    )
    limits = EngineLimits(
        num_blocks=draw(st.integers(4, 60)),
        block_size=draw(st.sampled_from([1, 4, 16])),
        max_num_seqs=draw(st.integers(1, 8)),
        max_num_batched_tokens=draw(st.integers(16, 64)),
        max_model_len=200,
    )
    return (workload, limits, draw(st.sampled_from(sorted(POLICIES))), draw(st.integers(1, 3)),
            draw(st.sampled_from(["round_robin", "least_outstanding", "least_kv"])),
            draw(st.integers(1, 2)), draw(st.sampled_from(["constant", "growing", "host"])),
            draw(st.sampled_from(sorted(QUEUES))))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_runs())
def test_fast_forward_is_exact_on_random_small_runs(run):
    """Constant step times and arrivals on a grid make many exact ties between engines and
    arrivals: the tie rules must not depend on how steps are grouped into events."""
    workload, limits, policy, replicas, router, pp, kind, queue = run
    # "host": engine CPU time per micro-batch, which pipeline stages do not split.
    cost = {"constant": ConstantCostModel(0.01), "growing": _growing_cost(),
            "host": ServingOverheadCostModel(_growing_cost(), 0.003, 0.0004)}[kind]
    results = [
        simulate(workload, EngineSetup.colocated(
            POLICIES[policy], cost, limits, replicas=replicas, router=router, pp=pp,
            stage_send_s=lambda t: 1e-4 * t, queue=QUEUES[queue]), fast_forward=ff)
        for ff in (True, False)
    ]
    _assert_identical(*results)


def _growing_cost() -> RooflineCostModel:
    """A cost model whose decode steps grow with context (so run lengths matter)."""
    return RooflineCostModel(CATALOG.gpu("h100-80gb-sxm"), CATALOG.model("llama-3-8b"), 1,
                             CostModelConfig())


def _cost_models():
    gpu, spec = CATALOG.gpu("h100-80gb-sxm"), CATALOG.model("llama-3-8b")
    a100, opt = CATALOG.gpu("a100-80gb-sxm"), CATALOG.model("opt-13b")
    roofline = RooflineCostModel(gpu, spec, 1, CostModelConfig())
    tp2 = RooflineCostModel(gpu, spec, 2, CostModelConfig())
    calibrated = CalibratedCostModel(
        load_profile(PROFILES_DIR / "a100-80gb-sxm_opt-13b_tp1_vllm.yaml"), a100, opt, 1)
    kernels = [build_cost_model(CostModelConfig(kind="kernels"), gpu, spec, tp,
                                EngineConfig(version=version, max_num_seqs=512))
               for tp, version in ((1, "v1"), (2, "v0"))]
    return [roofline, tp2, calibrated, ConstantCostModel(0.012),
            ServingOverheadCostModel(calibrated, 0.003, 0.0004), *kernels]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 512), st.integers(0, 10**6), st.integers(1, 40))
def test_decode_prices_equal_step_time_to_the_bit(num_seqs, first_kv, k):
    kv = np.arange(first_kv, first_kv + num_seqs * k, num_seqs, dtype=np.int64)
    for cost in _cost_models():
        one_by_one = [cost.step_time(BatchShape(0, 0, 0.0, 0, num_seqs, num_seqs, int(x)))
                      for x in kv]
        assert decode_run_s(cost, num_seqs, kv).tolist() == one_by_one, cost
        step = decode_step_fn(cost, num_seqs)
        assert [step(int(x)) for x in kv] == one_by_one, cost


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 512), st.integers(0, 10**6), st.integers(1, 120), st.floats(0.0, 2.0),
       st.floats(0.0, 100.0))
def test_decode_runs_equal_stepping_to_the_bit(num_seqs, first_kv, k, horizon_s, now):
    """The fast-forward's run pricer (specialised or generic, stepwise or numpy): each step's
    duration is `step_time`'s float, starts are the running sum, and it stops at the first
    step after the first that would start at or past the horizon."""
    for cost in _cost_models():
        horizon = now + horizon_s if horizon_s < 2.0 else float("inf")
        starts, durations = decode_run_fn(cost, num_seqs)(now, first_kv, k, horizon)
        expected_starts, expected = [now], []
        t, kv = now, first_kv
        while len(expected) < k and (not expected or t < horizon):
            expected.append(cost.step_time(BatchShape(0, 0, 0.0, 0, num_seqs, num_seqs, kv)))
            t = t + expected[-1]
            expected_starts.append(t)
            kv += num_seqs
        assert durations == expected, cost
        assert starts == expected_starts, cost
