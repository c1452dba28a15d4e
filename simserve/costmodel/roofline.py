"""Analytical step time from GPU and model specs: each term is compute- or memory-bound.

DESIGN §4: time = linear layers (f(N)) + attention (prefill ~ sum q(c + q/2) pairs, decode ~
KV bytes read) + LM head + tensor-parallel all-reduce + a fixed per-step overhead. Each term
is max(FLOPs / (peak x mfu), bytes / (bandwidth x mbu)), the roofline of Williams et al. (2009)
applied per operator as in LLM-Viewer and Vidur's analytical fallbacks. Used when nothing was
measured for a (GPU, model); the run metadata says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simserve.catalog import GpuSpec, ModelSpec
from simserve.config import CostModelConfig
from simserve.costmodel.base import BatchShape
from simserve.costmodel.pipeline import StepParts, split_linear

__all__ = ["RooflineCostModel"]


@dataclass(frozen=True)
class RooflineCostModel:
    """Per-step roofline for one replica of `tp` GPUs; all per-GPU quantities divide by tp."""

    gpu: GpuSpec
    model: ModelSpec
    tp: int
    config: CostModelConfig
    # Why the default (`kind: auto`) fell back to the roofline: the measured kernels could not
    # price this scenario. None when the scenario asked for the roofline.
    fallback: str | None = None

    def __post_init__(self) -> None:
        # Precompute per-unit costs once so step_time is a handful of float operations.
        g, m, c, tp = self.gpu, self.model, self.config, self.tp
        flops_per_s = g.bf16_tflops * 1e12 * c.mfu
        bytes_per_s = g.mem_bandwidth_gbps * 1e9 * c.mbu
        set_ = object.__setattr__
        set_(self, "_linear_s_per_token", m.linear_flops_per_token / tp / flops_per_s)
        # NOTE: a mixture of experts reads only the experts its tokens are routed to: with N
        # tokens of top-k routing over E experts (uniform, independent), E (1 - (1 - k/E)^N)
        # distinct experts per layer (the weight read is `_weights_s` at N = 0 plus that many).
        expert_bytes = m.num_layers * m.num_experts * m.expert_params * m.dtype_bytes
        set_(self, "_weights_s", (m.weight_bytes - expert_bytes) / tp / bytes_per_s)
        set_(self, "_experts_s", expert_bytes / tp / bytes_per_s)
        set_(self, "_expert_miss", 1.0 - m.num_experts_per_tok / m.num_experts
             if m.is_moe else 1.0)
        set_(self, "_lm_head_s_per_token", m.lm_head_flops_per_token / tp / flops_per_s)
        # The read of one vocab x hidden matrix (the LM head; the embedding too when untied).
        set_(self, "_vocab_matrix_s", m.embedding_params * m.dtype_bytes / tp / bytes_per_s)
        # QK^T and PV: 2 matmuls x 2 FLOPs per multiply-add, per head dim, per head, per layer.
        attn_flops_per_pair = 4.0 * m.num_layers * m.num_heads * m.head_dim
        set_(self, "_attn_s_per_pair", attn_flops_per_pair / tp / flops_per_s)
        set_(self, "_kv_s_per_token", m.kv_bytes_per_token_at(tp) / tp / bytes_per_s)
        # NOTE: Megatron-style TP does two all-reduces per layer (after attention and MLP) of
        # N x hidden activations; a ring all-reduce moves 2 (tp-1)/tp of the message per GPU.
        if tp > 1:
            link_bytes_per_s = g.interconnect_gbps * 1e9 * c.allreduce_efficiency
            per_token = 2 * m.num_layers * m.hidden_size * m.dtype_bytes * 2 * (tp - 1) / tp
            set_(self, "_ar_s_per_token", per_token / link_bytes_per_s)
            set_(self, "_ar_fixed_s", 2 * m.num_layers * c.allreduce_latency_us * 1e-6)
        else:
            set_(self, "_ar_s_per_token", 0.0)
            set_(self, "_ar_fixed_s", 0.0)
        set_(self, "_overhead_s", c.step_overhead_ms * 1e-3)

    def step_time(self, shape: BatchShape) -> float:
        n = shape.num_prefill_tokens + shape.num_decode_tokens
        if n == 0:
            return self._overhead_s
        weights = self._weights_s
        if self._experts_s:
            weights += self._experts_s * (1.0 - self._expert_miss**n)
        linear = max(n * self._linear_s_per_token, weights)
        # Logits only for the positions that sample: the last token of each prefill chunk and
        # every decode/verify position.
        lm_head = (shape.num_prefill_seqs + shape.num_decode_tokens) * self._lm_head_s_per_token
        prefill_attn = max(
            shape.prefill_attn_pairs * self._attn_s_per_pair,
            shape.prefill_kv_tokens * self._kv_s_per_token,
        )
        # Decode attention is memory-bound: read the context's KV once per sequence; a verify
        # pass of width w does w query rows over the same KV.
        decode_pairs = shape.decode_kv_tokens * (
            shape.num_decode_tokens / shape.num_decode_seqs if shape.num_decode_seqs else 0.0
        )
        decode_attn = max(
            decode_pairs * self._attn_s_per_pair,
            shape.decode_kv_tokens * self._kv_s_per_token,
        )
        allreduce = n * self._ar_s_per_token + self._ar_fixed_s
        return linear + lm_head + prefill_attn + decode_attn + allreduce + self._overhead_s

    def step_parts(self, shape: BatchShape) -> StepParts:
        """`step_time` by pipeline part: the fixed overhead is every stage's, the LM head (and
        its weight read) the last stage's, the rest (layers, attention, all-reduces) is split."""
        n = shape.num_prefill_tokens + shape.num_decode_tokens
        if n == 0:
            return StepParts(per_stage_s=self._overhead_s)
        weights = self._weights_s
        if self._experts_s:
            weights += self._experts_s * (1.0 - self._expert_miss**n)
        compute = n * self._linear_s_per_token
        share = self._vocab_matrix_s / weights
        first, _, last = split_linear(max(compute, weights), weights >= compute,
                                      (0.0 if self.model.tied_embeddings else share, share))
        lm_head = (shape.num_prefill_seqs + shape.num_decode_tokens) * self._lm_head_s_per_token
        return StepParts.around_layers(self.step_time(shape), self._overhead_s, lm_head, first,
                                       last)

    def decode_step_fn(self, num_seqs: int) -> Callable[[int], float]:
        """`step_time` of a plain decode step of `num_seqs` sequences as a function of its
        decode KV tokens (the same float operations in the same order)."""
        n = num_seqs
        if n == 0:
            return lambda kv: self._overhead_s
        head = max(n * self._linear_s_per_token, self._weights_s) + (
            (0 + n) * self._lm_head_s_per_token
        ) + max(0.0 * self._attn_s_per_pair, 0 * self._kv_s_per_token)
        ratio = n / n
        pair_s, kv_s = self._attn_s_per_pair, self._kv_s_per_token
        allreduce = n * self._ar_s_per_token + self._ar_fixed_s
        overhead = self._overhead_s
        return lambda kv: head + max(kv * ratio * pair_s, kv * kv_s) + allreduce + overhead

    def decode_run_s(self, num_seqs: int, decode_kv_tokens: np.ndarray) -> np.ndarray:
        """`step_time` of plain decode steps of `num_seqs` sequences, vectorised over their
        decode KV tokens (the same float operations in the same order)."""
        n = num_seqs
        if n == 0:
            return np.full(decode_kv_tokens.size, self._overhead_s)
        linear = max(n * self._linear_s_per_token, self._weights_s)
        lm_head = (0 + n) * self._lm_head_s_per_token
        prefill_attn = max(0.0 * self._attn_s_per_pair, 0 * self._kv_s_per_token)
        kv = decode_kv_tokens.astype(np.float64)
        decode_attn = np.maximum((kv * (n / n)) * self._attn_s_per_pair, kv * self._kv_s_per_token)
        allreduce = n * self._ar_s_per_token + self._ar_fixed_s
        out = (linear + lm_head + prefill_attn) + decode_attn
        out += allreduce
        out += self._overhead_s
        return out

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "kind": "roofline",
            "gpu": self.gpu.name,
            "model": self.model.name,
            "tp": self.tp,
            "mfu": self.config.mfu,
            "mbu": self.config.mbu,
            "step_overhead_ms": self.config.step_overhead_ms,
            "note": "analytical roofline from catalog specs; not calibrated to measurements",
        }
        if self.fallback is not None:
            out["selected_by"] = "auto: no measured kernels for this scenario"
            out["fallback_reason"] = self.fallback
        return out

    def envelope_warnings(self, steps: object) -> list[str]:
        """The one-line warning of a default that fell back to the roofline."""
        if self.fallback is None:
            return []
        return [f"cost model: roofline (uncalibrated catalog peaks): {self.fallback}"]
