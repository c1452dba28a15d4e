"""Energy, GPU-hours and rental cost of a run, from its engine steps and a utilisation-scaled
power model (docs/costs.md states the model and its limits).

Power model. Every GPU of the cluster draws its idle power for the whole run (a serving engine
keeps its GPUs on and its CUDA context loaded between steps). During a step, each of the
instance's G = tp x pp GPUs draws

    P = idle + (TDP - idle) x u,   u = min(1, max(FLOPs / (t G F), bytes / (t G B)))

where t is the time the step keeps each GPU (its duration; a pipeline stage's share of it
with pp stages), F and B one GPU's peak FLOP/s and memory bandwidth, and FLOPs and bytes the
step's work from the model's shape: the roofline terms (linear layers, LM head, attention
pairs, weights and KV read) of `costmodel.roofline`, at peak rather than derated. NOTE: power
linear in utilisation between idle and peak is the server power model of Fan, Weber and
Barroso ("Power provisioning for a warehouse-sized computer", ISCA 2007); taking the larger of
compute and memory-bandwidth utilisation is the roofline's bound resource (Williams et al.
2009). The energy above idle of a step is then (TDP - idle) x G x min(t, ideal), `ideal` the
step's time at peak on its binding resource: the step's duration matters only when a cost
model prices it faster than peak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simserve.catalog import GpuSpec, ModelSpec
from simserve.engine.records import StepRecords
from simserve.pricing import GpuRates

__all__ = ["COST_KEYS", "PoolUse", "cost_summary", "step_work", "steps_dynamic_j"]

JOULES_PER_KWH = 3.6e6
#: The scalar summary keys `cost_summary` adds (a scenario with a `cost:` section).
COST_KEYS: tuple[str, ...] = ("gpu_hours", "cost_usd", "energy_kwh", "mean_power_w",
                              "num_output_tokens_generated", "tokens_per_joule",
                              "cost_per_mtok_usd")


def step_work(steps: StepRecords, model: ModelSpec, tp: int) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and memory bytes of each step over all of an instance's GPUs.

    A step's records give its prompt and decode tokens, KV tokens and sequences, not each
    prefill chunk: a step's prefill is taken as one chunk (exact under vLLM's default of one
    partial prefill per step; an upper bound on prefill attention otherwise), and the decode
    sequences as the step's other sequences.
    """
    q = steps.num_prefill_tokens.astype(np.float64)
    k = steps.prefill_kv_tokens.astype(np.float64)
    d = steps.num_decode_tokens.astype(np.float64)
    n = q + d
    chunks = (q > 0).astype(np.float64)
    decode_seqs = np.maximum(steps.num_seqs.astype(np.float64) - chunks, 0.0)
    width = np.divide(d, decode_seqs, out=np.zeros_like(d), where=decode_seqs > 0)
    # Causal pairs of a chunk of q new tokens after c cached ones: q (c + q/2) = q (k - q/2).
    pairs = q * (k - q / 2.0) + steps.decode_kv_tokens.astype(np.float64) * width
    flops = (n * model.linear_flops_per_token + (chunks + d) * model.lm_head_flops_per_token
             + pairs * 4.0 * model.num_layers * model.num_heads * model.head_dim)
    # NOTE: a mixture of experts reads the experts its tokens are routed to, as the roofline
    # counts them (E (1 - (1 - k/E)^N) distinct experts of E).
    expert_bytes = model.num_layers * model.num_experts * model.expert_params * model.dtype_bytes
    weights = (model.weight_bytes - expert_bytes) + (
        expert_bytes * (1.0 - (1.0 - model.num_experts_per_tok / model.num_experts) ** n)
        if model.is_moe else 0.0)
    kv = (k + steps.decode_kv_tokens.astype(np.float64)) * model.kv_bytes_per_token_at(tp)
    return flops, weights + kv


def steps_dynamic_j(steps: StepRecords, model: ModelSpec, gpu: GpuSpec, rates: GpuRates,
                    tp: int, pp: int) -> np.ndarray:
    """Energy above idle (J) of each step over its instance's tp x pp GPUs."""
    assert rates.idle_w is not None and rates.tdp_w is not None
    gpus = tp * pp
    flops, num_bytes = step_work(steps, model, tp)
    peak_flops = (gpu.fp8_tflops if model.dtype_bytes == 1 else gpu.bf16_tflops) * 1e12
    ideal_s = np.maximum(flops / (gpus * peak_flops),
                         num_bytes / (gpus * gpu.mem_bandwidth_gbps * 1e9))
    held_s = steps.duration_s / pp
    return (rates.tdp_w - rates.idle_w) * gpus * np.minimum(held_s, ideal_s)


@dataclass(frozen=True)
class PoolUse:
    """One pool as cost and energy accounting sees it: its role, GPU, GPU count, parallelism,
    the price and power figures that apply, and its steps."""

    role: str
    gpu: GpuSpec
    num_gpus: int
    tp: int
    pp: int
    rates: GpuRates
    steps: StepRecords


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def cost_summary(pools: Sequence[PoolUse], model: ModelSpec,
                 num_output_tokens: int) -> dict[str, object]:
    """The summary's cost and energy keys for a run whose pools rent their GPUs from time 0
    to the end of the last step, and which generated `num_output_tokens` output tokens."""
    ends = [float(np.max(p.steps.started_at + p.steps.duration_s)) for p in pools
            if len(p.steps)]
    span_s = max(ends, default=0.0)
    per_pool: dict[str, dict[str, object]] = {}
    total_j = total_usd = gpu_s = 0.0
    for pool in pools:
        rates = pool.rates
        assert rates.usd_per_hour is not None and rates.idle_w is not None
        dynamic_j = float(np.sum(steps_dynamic_j(pool.steps, model, pool.gpu, rates, pool.tp,
                                                 pool.pp)))
        energy_j = rates.idle_w * pool.num_gpus * span_s + dynamic_j
        usd = rates.usd_per_hour * pool.num_gpus * span_s / 3600.0
        per_pool[pool.role] = {
            "hardware": pool.gpu.name,
            "num_gpus": pool.num_gpus,
            **rates.describe(),
            "energy_kwh": energy_j / JOULES_PER_KWH,
            "cost_usd": usd,
        }
        total_j += energy_j
        total_usd += usd
        gpu_s += pool.num_gpus * span_s
    return {
        "gpu_hours": gpu_s / 3600.0,
        "cost_usd": total_usd,
        "energy_kwh": total_j / JOULES_PER_KWH,
        "mean_power_w": _ratio(total_j, span_s),
        "num_output_tokens_generated": num_output_tokens,
        "tokens_per_joule": _ratio(num_output_tokens, total_j),
        "cost_per_mtok_usd": _ratio(total_usd * 1e6, num_output_tokens),
        "cost_pools": per_pool,
    }
