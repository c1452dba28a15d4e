"""Pipeline parallelism as engines run it: exact timelines of 1, 2 and 3 runnable requests on
2 stages with engine CPU time per micro-batch (the bubble, micro-batch formation and the shared
engine CPU visible), how cost models divide a step over stages, and the pipeline's reservation
invariants (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.catalog import load_catalog
from simserve.config import CostModelConfig, EngineConfig
from simserve.costmodel import BatchShape, ConstantCostModel
from simserve.costmodel.calibrated import CalibratedCostModel, load_profile
from simserve.costmodel.pipeline import PipelineStep, StepParts, pipeline_step, step_parts
from simserve.costmodel.roofline import RooflineCostModel
from simserve.costmodel.select import PROFILES_DIR, build_cost_model
from simserve.costmodel.serving import ServingOverheadCostModel
from simserve.engine import POLICIES, EngineLimits, EngineSetup, simulate
from simserve.engine.simulation import _Pipeline
from simserve.workload import Workload

CATALOG = load_catalog()
GPU_S = 0.010  # forward pass of the whole model: 5 ms per stage with pp = 2
HOST_STEP_S = 0.002  # engine CPU per micro-batch
HOST_SEQ_S = 0.001  # engine CPU per sequence of a micro-batch
SEND_S = 0.0005  # activations from stage 0 to stage 1


def _run(num_requests: int, *, cost=None, pp: int = 2, output_len: int = 3,
         num_blocks: int = 400):
    workload = Workload(arrived_at=np.zeros(num_requests),
                        prompt_len=np.full(num_requests, 16),
                        output_len=np.full(num_requests, output_len))
    cost = cost or ServingOverheadCostModel(ConstantCostModel(GPU_S), HOST_STEP_S, HOST_SEQ_S)
    limits = EngineLimits(num_blocks=num_blocks, block_size=16, max_num_seqs=8,
                          max_num_batched_tokens=256, max_model_len=10_000)
    return simulate(workload, EngineSetup.colocated(
        POLICIES["chunked_prefill"], cost, limits, pp=pp, stage_send_s=lambda n: SEND_S))


def _ms(result, rid):
    return [round(t * 1e3, 9) for t in result.tokens_of(rid).tolist()]


# ---------------------------------------------------------------- exact timelines (ms)


def test_one_micro_batch_leaves_each_stage_idle_most_of_the_step():
    # Host 2 + 1 x 1 seq = 3, stage 0 [3, 8], send 0.5, stage 1 [8.5, 13.5]: a token every
    # 13.5 ms, during which each stage works 5 ms (the bubble: no second micro-batch).
    r = _run(1)
    assert _ms(r, 0) == [13.5, 27.0, 40.5]
    assert r.steps.duration_s.tolist() == pytest.approx([0.0135] * 3)


def test_two_micro_batches_overlap_and_share_the_engine_cpu():
    # r0 on virtual engine 0, r1 on engine 1. Engine 1's CPU work waits for engine 0's
    # ([0, 3] then [3, 6]); its stage 0 waits for engine 0's micro-batch to leave it (8).
    #   engine 0: host [0, 3]  s0 [3, 8]   s1 [8.5, 13.5]  | host [13.5, 16.5] s0 [16.5, 21.5]
    #             s1 [22, 27] | ... 40.5
    #   engine 1: host [3, 6]  s0 [8, 13]  s1 [13.5, 18.5] | host [18.5, 21.5] s0 [21.5, 26.5]
    #             s1 [27, 32] | ... 45.5
    r = _run(2)
    assert _ms(r, 0) == [13.5, 27.0, 40.5]
    assert _ms(r, 1) == [18.5, 32.0, 45.5]


def test_three_requests_form_two_unequal_micro_batches():
    # pp = 2 virtual engines: r0 and r2 share engine 0 (fewest unfinished when r2 arrives, tie
    # to the first), r1 is alone on engine 1. Engine 0's micro-batch has 2 sequences (host
    # 4 ms), engine 1's has 1 (host 3 ms):
    #   engine 0: host [0, 4]  s0 [4, 9]   s1 [9.5, 14.5] | host [14.5, 18.5] s0 [18.5, 23.5]
    #             s1 [24, 29] | ... 43.5
    #   engine 1: host [4, 7]  s0 [9, 14]  s1 [14.5, 19.5] | host [19.5, 22.5] s0 [23.5, 28.5]
    #             s1 [29, 34] | ... 48.5
    r = _run(3)
    assert _ms(r, 0) == _ms(r, 2) == [14.5, 29.0, 43.5]
    assert _ms(r, 1) == [19.5, 34.0, 48.5]
    assert r.steps.num_seqs.tolist() == [2, 1, 2, 1, 2, 1]  # by end time


def test_engine_cpu_caps_the_pipeline_speed_up():
    # GPU 4 ms per micro-batch (2 per stage), host 6 ms: one stage-free micro-batch takes 10,
    # but two engines' host work alone takes 12 ms per round, so pp=2 runs each engine's step
    # every 12 ms. 16 requests of 400 tokens: pp=1 runs them as 2 waves of 8 (800 steps of
    # 10 ms); pp=2 as 2 engines of 8 at once (400 rounds of 12 ms): speed-up 8/4.8, not 2.
    cost = ServingOverheadCostModel(ConstantCostModel(0.004), 0.006, 0.0)

    def makespan(pp):
        r = _run(16, cost=cost, pp=pp, output_len=400, num_blocks=4000)
        return float(np.nanmax(r.finished_at))

    assert makespan(1) == pytest.approx(800 * 0.010, rel=0.01)
    assert makespan(2) == pytest.approx(400 * 0.012, rel=0.01)


# ---------------------------------------------------------------- dividing a step


def _cost_models():
    a100, opt = CATALOG.gpu("a100-80gb-sxm"), CATALOG.model("opt-13b")
    h100, llama = CATALOG.gpu("h100-80gb-sxm"), CATALOG.model("llama-3-8b")
    calibrated = CalibratedCostModel(
        load_profile(PROFILES_DIR / "a100-80gb-sxm_opt-13b_tp1_distserve.yaml"), a100, opt, 1)
    return [
        ConstantCostModel(0.012),
        RooflineCostModel(h100, llama, 2, CostModelConfig()),
        calibrated,
        ServingOverheadCostModel(calibrated, 0.006, 0.0002),
        *[build_cost_model(CostModelConfig(kind="kernels"), h100, llama, 1,
                           EngineConfig(version=v, max_num_seqs=256)) for v in ("v0", "v1")],
    ]


SHAPES = [BatchShape(0, 0, 0.0, 0, 64, 64, 64 * 700),
          BatchShape(512, 2, 512 * 300.0, 600, 30, 30, 30 * 900),
          BatchShape(0, 0, 0.0, 0, 0, 0, 0)]


@pytest.mark.parametrize("shape", SHAPES)
def test_parts_add_up_to_the_step_time(shape):
    for cost in _cost_models():
        parts = step_parts(cost, shape)
        assert min(parts) >= 0.0, cost
        assert parts.total_s == pytest.approx(cost.step_time(shape), rel=1e-12, abs=1e-15), cost


def test_stages_split_layers_and_repeat_per_stage_work():
    a100, opt = CATALOG.gpu("a100-80gb-sxm"), CATALOG.model("opt-13b")
    calibrated = CalibratedCostModel(
        load_profile(PROFILES_DIR / "a100-80gb-sxm_opt-13b_tp1_distserve.yaml"), a100, opt, 1)
    cost = ServingOverheadCostModel(calibrated, 0.006, 0.0)
    shape = SHAPES[0]
    parts = step_parts(cost, shape)
    assert parts.host_s == pytest.approx(0.006)
    assert parts.per_stage_s > 0 and parts.last_s > 0 and parts.layers_s > 0
    # OPT ties its LM head to the embedding: stage 0 gathers rows, the last stage reads the
    # whole vocab x hidden matrix (about 2% of a memory-bound decode step's weight read).
    assert parts.first_s == 0.0
    assert parts.last_s > 0.01 * parts.layers_s
    step = pipeline_step(cost, shape, 4)
    assert step.host_s == parts.host_s
    inner = parts.layers_s / 4 + parts.per_stage_s
    assert step.stage_s[0] == pytest.approx(inner + parts.first_s)
    assert step.stage_s[1] == step.stage_s[2] == pytest.approx(inner)
    assert step.stage_s[3] == pytest.approx(inner + parts.last_s)
    # Every stage repeats the per-stage work: the pipeline's GPU time exceeds one GPU's.
    assert sum(step.stage_s) == pytest.approx(parts.total_s - parts.host_s
                                              + 3 * parts.per_stage_s)


def test_a_cost_model_without_parts_is_split_evenly():
    step = pipeline_step(ConstantCostModel(0.012), SHAPES[0], 3)
    assert step == PipelineStep(0.0, (0.004, 0.004, 0.004))
    assert StepParts(layers_s=1.0).with_host(0.5).total_s == 1.5


# ---------------------------------------------------------------- reservation invariants


@st.composite
def _micro_batches(draw):
    pp = draw(st.integers(2, 4))
    times = st.floats(0.0, 0.02, allow_nan=False)
    n = draw(st.integers(1, 12))
    gaps = draw(st.lists(times, min_size=n, max_size=n))
    steps = [PipelineStep(draw(times), tuple(draw(st.lists(times, min_size=pp, max_size=pp))))
             for _ in range(n)]
    return pp, np.cumsum(gaps).tolist(), steps, draw(times)


@settings(max_examples=200, deadline=None)
@given(_micro_batches())
def test_pipeline_reservations_never_overlap_and_keep_order(run):
    """Micro-batches started in order: the engine CPU and every stage serve one at a time in
    that order, a micro-batch visits the stages in order with a send between them, and one
    that finds the pipeline idle takes exactly its host, stage and send times."""
    pp, starts, steps, send_s = run
    pipe = _Pipeline(pp)
    prev_host, prev_stage = 0.0, [0.0] * pp
    for now, step in zip(starts, steps, strict=True):
        idle = pipe.host_free_at <= now and all(f <= now for f in pipe.stage_free_at)
        leave = pipe.through(now, step, send_s)
        host_end = pipe.host_free_at
        assert host_end - step.host_s >= max(now, prev_host) - 1e-12
        ready = host_end
        for i, stage_s in enumerate(step.stage_s):
            end = pipe.stage_free_at[i]
            start = end - stage_s
            assert start >= prev_stage[i] - 1e-12  # the stage is free, FIFO
            assert start >= ready + (send_s if i else 0.0) - 1e-12  # after the stage before
            ready = end
        assert leave == ready == pipe.stage_free_at[-1]
        if idle:
            alone = now + step.host_s + sum(step.stage_s) + (pp - 1) * send_s
            assert leave == pytest.approx(alone, abs=1e-12)
        prev_host, prev_stage = host_end, list(pipe.stage_free_at)


# ---------------------------------------------------------------- REPORT.md §8


def test_pipeline_report_on_the_lightest_distserve_run():
    from simserve.calibration.disaggregated import disaggregated_traces
    from simserve.calibration.pipeline_report import pipeline_markdown, run_pipeline_validation

    rep = run_pipeline_validation(disaggregated_traces()[:1])
    for _b, host, per_stage, layers, last, total, alone in rep.parts_ms:
        assert total == pytest.approx(host + per_stage + layers + last)
        # Alone through 2 stages: everything once, the per-stage work twice.
        assert alone == pytest.approx(total + per_stage)
    (rate,) = {k[0] for k in rep.tpot_ms}
    one, two, even = (rep.tpot_ms[(rate, 1, "model")], rep.tpot_ms[(rate, 2, "model")],
                      rep.tpot_ms[(rate, 2, "even")])
    # At 3 req/s the decode batch is small: an even split made pp=2 faster than pp=1 per
    # token; repeated per-stage work and an undivided engine CPU make it slower.
    assert even[0] < one[0] < two[0]
    text = "\n".join(pipeline_markdown(rep))
    assert text.startswith("## 8. Pipeline parallelism") and f"| {rate:g} |" in text
