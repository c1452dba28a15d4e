"""How one engine step divides over the stages of a pipeline-parallel instance.

A step's time from any cost model is the sum of parts that behave differently once the model's
layers are split over `pp` GPUs (DESIGN §4; calibration/REPORT.md, "Pipeline parallelism"):

- `layers_s`: the transformer layers (their GEMMs, attention, all-reduces), split evenly,
  since every stage holds `num_layers / pp` whole layers;
- `per_stage_s`: what every stage's worker pays once per forward pass whatever its share of the
  layers: the fixed launch and input-preparation cost of a step (a profile's step overhead and
  its per-sequence input preparation). NOTE: DistServe's decode engine and vLLM v0 send each
  micro-batch to every stage's worker, which builds its own inputs and block tables and runs
  its own forward pass (DistServe `ParaWorker.step`, vLLM v0 `Worker.execute_model`);
- `first_s` / `last_s`: stage 0 alone embeds the tokens; the last stage alone runs the final
  norm, LM head and sampling;
- `host_s`: the engine's CPU work around the step (scheduling, the call to the workers,
  output processing and detokenising), once per micro-batch on the engine process, not on any
  GPU and not divided by pp. NOTE: vLLM v0 runs one `engine_step(virtual_engine)` task per
  stage in ONE asyncio loop (`AsyncLLMEngine.run_engine_loop`) and DistServe's decode engine
  steps its pp batches from one loop (`DecodingStageLLMEngine._step`), so the host work of all
  micro-batches of an instance shares one CPU thread.

With pp = 1 the parts add up to the cost model's `step_time`. A cost model that cannot tell
its parts apart (the constant model) is all `layers_s`: split evenly, as before.
"""

from __future__ import annotations

from typing import NamedTuple

from simserve.costmodel.base import BatchShape, CostModel

__all__ = ["PipelineStep", "StepParts", "pipeline_step", "step_parts"]


class StepParts(NamedTuple):
    """One step's time (s) by how it divides over pipeline stages (see the module doc)."""

    layers_s: float = 0.0
    per_stage_s: float = 0.0
    first_s: float = 0.0
    last_s: float = 0.0
    host_s: float = 0.0

    @property
    def total_s(self) -> float:
        """The step's time on one GPU (pp = 1)."""
        return self.layers_s + self.per_stage_s + self.first_s + self.last_s + self.host_s

    def with_host(self, host_s: float) -> StepParts:
        """These parts plus `host_s` more engine CPU time."""
        return self._replace(host_s=self.host_s + host_s)


class PipelineStep(NamedTuple):
    """A micro-batch through `len(stage_s)` stages: its engine CPU time, then each stage's GPU
    time in order."""

    host_s: float
    stage_s: tuple[float, ...]


def step_parts(cost_model: CostModel, shape: BatchShape) -> StepParts:
    """The parts of one step. Cost models may implement `step_parts(shape)`; the others are
    priced as layers alone (split evenly over stages)."""
    split = getattr(cost_model, "step_parts", None)
    if split is not None:
        return split(shape)
    return StepParts(layers_s=cost_model.step_time(shape))


def pipeline_step(cost_model: CostModel, shape: BatchShape, pp: int) -> PipelineStep:
    """The engine CPU time and the GPU time on each of `pp` stages of one micro-batch."""
    parts = step_parts(cost_model, shape)
    share = parts.layers_s / pp + parts.per_stage_s
    stages = [share] * pp
    stages[0] += parts.first_s
    stages[-1] += parts.last_s
    return PipelineStep(parts.host_s, tuple(stages))
