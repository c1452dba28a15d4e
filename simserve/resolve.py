"""Checks and derived values that need the catalog: KV capacity, context limits, cost model.

`config.py` validates a scenario on its own; this module validates it against the hardware and
model it names and derives the engine's limits (DESIGN §3: KV capacity from GPU memory,
weights and TP).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from simserve.catalog import Catalog, GpuSpec, ModelSpec, load_catalog
from simserve.config import Scenario, SpeculativeConfig
from simserve.costmodel import CostModel, build_cost_model
from simserve.costmodel.speculative import SpeculativeCostModel
from simserve.engine.simulation import EngineLimits
from simserve.errors import InputError

__all__ = ["ResolvedScenario", "kv_cache_blocks", "resolve"]

GIB = 2**30


@dataclass(frozen=True)
class ResolvedScenario:
    """A scenario with its catalog entries, engine limits and cost model."""

    scenario: Scenario
    gpu: GpuSpec
    model: ModelSpec
    limits: EngineLimits
    cost_model: CostModel
    draft_model: ModelSpec | None = None


def kv_cache_blocks(
    scenario: Scenario,
    gpu: GpuSpec,
    model: ModelSpec,
    *,
    draft_weight_bytes: float = 0.0,
    draft_kv_bytes_per_token: float = 0.0,
) -> int:
    """Paged KV blocks one replica can hold.

    (GPU memory x utilisation - weights/tp - activation reserve) per GPU, times tp GPUs, over
    the KV bytes of one block (all layers, all KV heads, K and V), as vLLM's profiler does. A
    speculative draft's weights and KV (one slot per target slot) share the same memory.
    """
    engine = scenario.engine
    if engine.num_gpu_blocks_override is not None:
        return engine.num_gpu_blocks_override
    tp = scenario.tp
    per_gpu_free = (
        gpu.memory_gib * GIB * engine.gpu_memory_utilization
        - (model.weight_bytes + draft_weight_bytes) / tp
        - engine.activation_reserve_gib * GIB
    )
    block_bytes = (model.kv_bytes_per_token + draft_kv_bytes_per_token) * engine.block_size
    return int(per_gpu_free * tp // block_bytes) if per_gpu_free > 0 else 0


def _check_tp(scenario: Scenario, model: ModelSpec) -> None:
    # NOTE: vLLM shards attention heads over TP and replicates KV heads when tp exceeds them.
    tp = scenario.tp
    kv_ok = model.num_kv_heads % tp == 0 or tp % model.num_kv_heads == 0
    if model.num_heads % tp or not kv_ok:
        raise InputError(
            f"tp={tp} does not divide {model.name}'s {model.num_heads} attention heads / "
            f"{model.num_kv_heads} KV heads",
            field="tp",
        )


def _check_lengths(scenario: Scenario, model: ModelSpec, max_model_len: int) -> None:
    lengths = scenario.workload.lengths
    if lengths.dist in ("fixed", "uniform"):
        longest_prompt = int(lengths.prompt_len * (1 + lengths.range_ratio))
        if longest_prompt >= max_model_len:
            raise InputError(
                f"prompt length {longest_prompt} does not fit {model.name}'s context length "
                f"{max_model_len}",
                field="workload.lengths.prompt_len",
            )


def resolve(scenario: Scenario, catalog: Catalog | None = None) -> ResolvedScenario:
    """Validate a scenario against the catalog and derive what the engine needs."""
    catalog = catalog or load_catalog(scenario.catalog)
    gpu = catalog.gpu(scenario.hardware)
    model = catalog.model(scenario.model)
    _check_tp(scenario, model)
    engine = scenario.engine
    max_model_len = engine.max_model_len or model.max_model_len
    if max_model_len > model.max_model_len:
        raise InputError(
            f"{max_model_len} exceeds {model.name}'s context length {model.max_model_len}",
            field="engine.max_model_len",
        )
    _check_lengths(scenario, model, max_model_len)
    spec = engine.speculative
    draft = _draft_model(spec, catalog, model) if spec is not None else None
    draft_weights, draft_kv = _draft_memory(spec, model, draft)
    num_blocks = kv_cache_blocks(
        scenario, gpu, model, draft_weight_bytes=draft_weights, draft_kv_bytes_per_token=draft_kv
    )
    if num_blocks < 1:
        raise InputError(
            f"{model.name} weights ({model.weight_bytes / GIB:.1f} GiB over tp={scenario.tp}) "
            f"leave no KV-cache memory on {gpu.name} at gpu_memory_utilization="
            f"{engine.gpu_memory_utilization}",
            field="engine.gpu_memory_utilization",
        )
    limits = EngineLimits(
        num_blocks=num_blocks,
        block_size=engine.block_size,
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        max_model_len=max_model_len,
    )
    cost_model = build_cost_model(scenario.cost_model, gpu, model, scenario.tp)
    if spec is not None:
        draft_cost = None
        if draft is not None:
            # NOTE: a calibrated profile describes the target only; the draft is priced by the
            # roofline with the same efficiency factors (vLLM runs it at the target's TP). Each
            # of the k proposals is a separate draft forward pass with its own fixed cost
            # (kernel launches, sampling), by default the target's per-step overhead.
            overhead_ms = spec.draft_step_overhead_ms
            if overhead_ms is None:
                overhead_ms = scenario.cost_model.step_overhead_ms
            draft_config = dataclasses.replace(
                scenario.cost_model, kind="roofline", profile=None, step_overhead_ms=overhead_ms
            )
            draft_cost = build_cost_model(draft_config, gpu, draft, scenario.tp)
        cost_model = SpeculativeCostModel(cost_model, draft_cost, spec.draft_cost_fraction)
    return ResolvedScenario(scenario, gpu, model, limits, cost_model, draft)


def _draft_model(spec: SpeculativeConfig, catalog: Catalog, target: ModelSpec) -> ModelSpec | None:
    if spec.method != "draft" or spec.draft_model is None:
        return None
    try:
        draft = catalog.model(spec.draft_model)
    except InputError as exc:
        raise InputError(exc.message, field="engine.speculative.draft_model") from None
    if draft.vocab_size != target.vocab_size:
        raise InputError(
            f"draft {draft.name} has vocabulary {draft.vocab_size}, target {target.name} has "
            f"{target.vocab_size}: a draft must share the target's tokenizer",
            field="engine.speculative.draft_model",
        )
    return draft


def _draft_memory(
    spec: SpeculativeConfig | None, target: ModelSpec, draft: ModelSpec | None
) -> tuple[float, float]:
    """Weight bytes and KV bytes per token the drafter adds to the replica."""
    if spec is None:
        return 0.0, 0.0
    if draft is not None:
        return float(draft.weight_bytes), float(draft.kv_bytes_per_token)
    # NOTE: an EAGLE head / MTP module is about one decoder layer of the target (Li et al.
    # 2024; DeepSeek-V3): one layer's weights and one layer's KV per token.
    return target.weight_bytes / target.num_layers, target.kv_bytes_per_token / target.num_layers
