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
  norm, LM head and sampling, and reads the LM head's vocab x hidden weights (a decode step's
  weight read, which the analytical models price for the whole model at once, is apportioned
  by parameter count);
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

from simserve.catalog import ModelSpec
from simserve.costmodel.base import BatchShape, CostModel

__all__ = [
    "PipelineStep",
    "StepParts",
    "embedding_shares",
    "pipeline_step",
    "split_linear",
    "step_parts",
]


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

    @classmethod
    def around_layers(cls, step_s: float, per_stage_s: float, lm_head_s: float,
                      first_s: float, last_s: float) -> StepParts:
        """A step of `step_s` whose named parts are known: the layers are the rest, and the
        LM head runs on the last stage."""
        layers_s = step_s - per_stage_s - lm_head_s - first_s - last_s
        return cls(layers_s=layers_s, per_stage_s=per_stage_s, first_s=first_s,
                   last_s=lm_head_s + last_s)

    def with_host(self, host_s: float) -> StepParts:
        """These parts plus `host_s` more engine CPU time."""
        return self._replace(host_s=self.host_s + host_s)


class PipelineStep(NamedTuple):
    """A micro-batch through `len(stage_s)` stages: its engine CPU time, then each stage's GPU
    time in order."""

    host_s: float
    stage_s: tuple[float, ...]


def embedding_shares(model: ModelSpec) -> tuple[float, float]:
    """The shares of a step's weight read that stage 0 (the token embedding, when the LM head
    is a separate matrix) and the last stage (the LM head: it holds the vocab x hidden matrix
    even when tied to the embedding) read, for a memory-bound linear term that reads every
    weight once; the rest is the layers'."""
    share = model.embedding_params / model.num_params
    return (0.0 if model.tied_embeddings else share), share


def split_linear(linear_s: float, memory_bound: bool,
                 shares: tuple[float, float]) -> tuple[float, float, float]:
    """A linear term as (stage 0's, the layers', the last stage's) by `embedding_shares`:
    when compute-bound the embedding and LM head matrices are no part of it (the LM head's
    FLOPs are priced apart)."""
    if not memory_bound:
        return 0.0, linear_s, 0.0
    first, last = linear_s * shares[0], linear_s * shares[1]
    return first, linear_s - first - last, last


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
    if pp == 1:
        return PipelineStep(parts.host_s, (share + parts.first_s + parts.last_s,))
    middle = (share,) * (pp - 2)
    return PipelineStep(parts.host_s, (share + parts.first_s, *middle, share + parts.last_s))
