"""Step time priced op by op from measured GPU kernels (DESIGN §4, `cost_model: {kind: kernels}`).

One engine step of a model at tensor parallelism `tp` runs, per decoder layer, the QKV, O and
MLP GEMMs (or a fused MoE layer) at m = the step's tokens, one attention call over its prefill
chunks and decode sequences, two all-reduces of the step's activations (tp > 1) and a handful of
elementwise kernels (norms, rotary, KV-cache write, activation); then the LM head on the rows
that sample, and sampling. Every GEMM, attention call, all-reduce and MoE layer is priced from
the latencies aiconfigurator-core measured inside the serving engine on that GPU
(`simserve/costmodel/kernel_ops.py`). Elementwise kernels were not measured: they are priced as
their memory traffic at the package's empirical bandwidth (`mem_bw x
mem_bw_empirical_scaling_factor`) plus its constant per-kernel latency.

vLLM runs steps of up to `max_capture_size` tokens as CUDA graphs captured at fixed sizes: the
step is padded to the next captured size and its all-reduces use the graph-mode kernel (V1:
every such step; V0: decode-only steps of at most 256 sequences). Larger steps run eagerly,
unpadded, with the eager all-reduce (the table's two modes differ by ~15 us per call).

The step's shape is known only through BatchShape's aggregates. Decode attention is priced at
batch = decode sequences and context = their mean context (exact for the KV bytes read, which
are linear in the contexts; `simserve validate` quantifies the rest against per-sequence
pricing); prefill chunks over cached context are priced as the larger of the fresh prefill with
the same causal query-key pairs (compute) and a decode-style read of their mean context (memory).

Everything that depends on the step's shape through a single number is tabulated once at
construction (`DenseCurve` per token count, `LogGrid` over batch x context), so `step_time` is a
few list lookups and float operations.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simserve.catalog import GpuSpec, ModelSpec
from simserve.costmodel.base import BatchShape, DecodeRun, stepwise_run
from simserve.costmodel.engine_loop import LoopTerms
from simserve.costmodel.interpolation import DenseCurve, LogGrid
from simserve.costmodel.kernel_ops import AttentionMap, KernelCoverageError, KernelOps
from simserve.costmodel.kernel_tables import kernel_meta
from simserve.costmodel.pipeline import StepParts

__all__ = [
    "KernelCostModel",
    "KernelSetup",
    "capture_sizes",
    "gemm_dtype",
]

# Grids of the tabulated attention (1/16 octave, up to 2^12 sequences and 2^21 tokens).
_PER_OCTAVE = 16
_BATCH_OCTAVES = 12
_SEQ_OCTAVES = 21
# NOTE: vLLM V0 (0.2-0.6) captured decode batches of 1, 2, 4 and 8..256 in steps of 8
# (`_BATCH_SIZES_TO_CAPTURE`); V1 (0.10+) captures 1, 2, 4, 8..248 by 8, then by 16 up to
# max_capture_size = min(2 x max_num_seqs, 512) (`CompilationConfig` defaults).
_V0_MAX_CAPTURE = 256


def capture_sizes(version: str, max_num_seqs: int) -> list[int]:
    """The token counts vLLM captures CUDA graphs for."""
    if version == "v0":
        return [1, 2, 4, *range(8, _V0_MAX_CAPTURE + 1, 8)]
    top = min(2 * max_num_seqs, 512)
    sizes = [1, 2, 4, *range(8, 256, 8), *range(256, top + 1, 16)]
    return [s for s in sizes if s <= top] or [1]


def gemm_dtype(model: ModelSpec) -> str:
    """The GEMM table a model's decoder-layer weights use."""
    if model.dtype_bytes == 2:
        return "bfloat16"
    if model.dtype_bytes == 1:
        return "fp8" if model.weight_quant == "none" else model.weight_quant
    raise KernelCoverageError(f"{model.name}: {model.dtype_bytes}-byte weights have no measured "
                              "GEMM table (bf16 and FP8 only)")


@dataclass(frozen=True)
class KernelSetup:
    """What besides the model prices a step: engine generation, its limits and cache dtype."""

    version: str = "v1"  # v0: vLLM <= 0.6 (serial CPU loop); v1: vLLM >= 0.8 engine
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    kv_dtype: str = "bfloat16"  # "bfloat16" or "fp8" (engine.kv_cache_dtype)
    enforce_eager: bool = False
    loop: LoopTerms = field(default_factory=LoopTerms)


class KernelCostModel:
    """Per-step time from measured kernels for one replica of `tp` GPUs (see module doc)."""

    def __init__(self, gpu: GpuSpec, model: ModelSpec, tp: int, setup: KernelSetup,
                 framework: str = "vllm", ops: KernelOps | None = None,
                 selected_by: str | None = None) -> None:
        if ops is None:
            # NOTE: the tables of one (GPU, model, TP, engine limits) are built once per
            # process: sweeps and capacity searches resolve the same setup many times.
            state = _built_state(gpu, model, tp, dataclasses.replace(setup, loop=LoopTerms()),
                                 framework)
            self.__dict__.update(state)
            self.notes = list(state["notes"])
        else:
            self._init(gpu, model, tp, setup, framework, ops)
        self.setup = setup
        self._cpu_us = setup.loop
        self.selected_by = selected_by

    def _init(self, gpu: GpuSpec, model: ModelSpec, tp: int, setup: KernelSetup,
              framework: str, ops: KernelOps) -> None:
        self.gpu = gpu
        self.model = model
        self.tp = tp
        self.setup = setup
        self.framework = framework
        self.meta = kernel_meta(gpu.name, framework)
        self.ops = ops
        self.notes: list[str] = []
        self._build()

    # ------------------------------------------------------------------ construction

    def _build(self) -> None:
        m, tp, setup, ops = self.model, self.tp, self.setup, self.ops
        if m.num_heads % tp:
            raise KernelCoverageError(f"tp={tp} does not divide {m.num_heads} heads")
        self.heads = m.num_heads // tp
        self.kv_heads = max(m.num_kv_heads // tp, 1)
        self.dtype = gemm_dtype(m)
        if self.dtype not in ops.gemm_dtypes():
            raise KernelCoverageError(f"no {self.dtype} GEMMs were measured on {self.gpu.name}")
        spec = self.meta.get("system_spec", {})
        # NOTE: aiconfigurator's own constants for unmeasured memory-bound kernels (its
        # systems/<gpu>.yaml, recorded in meta.yaml): achievable bandwidth and fixed latency.
        self._ew_bytes_per_us = (float(spec.get("mem_bw", self.gpu.mem_bandwidth_gbps * 1e9))
                                 * float(spec.get("mem_bw_empirical_scaling_factor", 0.8)) / 1e6)
        self._ew_fixed_us = float(spec.get("mem_empirical_constant_latency", 3e-6)) * 1e6
        self.ctx_map = ops.attention_map("context_attention", setup.kv_dtype, m.head_dim,
                                         self.heads, self.kv_heads)
        self.gen_map = ops.attention_map("generation_attention", setup.kv_dtype, m.head_dim,
                                         self.heads, self.kv_heads)
        for label, amap in (("prefill", self.ctx_map), ("decode", self.gen_map)):
            if not amap.exact:
                self.notes.append(
                    f"{label} attention of {self.heads} query / {self.kv_heads} KV heads per GPU "
                    f"was not measured; priced as {amap.num_heads}/{amap.num_kv_heads} heads at "
                    f"{amap.batch_scale:g}x the batch (same work per KV head)")
        self._graph_sizes = [] if setup.enforce_eager else capture_sizes(
            setup.version, setup.max_num_seqs)
        self._capture_max = self._graph_sizes[-1] if self._graph_sizes else 0
        n_max = max(setup.max_num_batched_tokens, setup.max_num_seqs, self._capture_max) + 1
        tokens = np.arange(n_max, dtype=np.float64)
        tokens[0] = 1.0
        eager = self._per_token_us(tokens, "eager")
        eager[0] = 0.0
        self._tok_eager = DenseCurve(eager, 1.0)
        if self._graph_sizes:
            graph = self._per_token_us(np.asarray(self._graph_sizes, dtype=np.float64), "graph")
            padded = [0.0]
            for n in range(1, self._capture_max + 1):
                padded.append(float(graph[bisect.bisect_left(self._graph_sizes, n)]))
            self._tok_graph = padded
        else:
            self._tok_graph = [0.0]
        rows = np.arange(n_max, dtype=np.float64)
        rows[0] = 1.0
        lm = self._lm_head_us(rows)
        lm[0] = 0.0
        self._lm = DenseCurve(lm, 1.0)
        self._build_attention()
        self._build_envelope()

    def _ew_us(self, num_bytes: np.ndarray, kernels: float) -> np.ndarray:
        """Elementwise kernels moving `num_bytes` in all (`kernels` launches)."""
        return num_bytes / self._ew_bytes_per_us + kernels * self._ew_fixed_us

    def _per_token_us(self, n: np.ndarray, mode: str) -> np.ndarray:
        """Time (us) of everything that scales with the step's token count alone: every
        layer's GEMMs or MoE, elementwise kernels and all-reduces, and the embedding."""
        m, tp, ops, d = self.model, self.tp, self.ops, self.model.head_dim
        hs, act = m.hidden_size, 2  # activations are bf16
        q_width, kv_width = self.heads * d, self.kv_heads * d
        layer = ops.gemm(self.dtype, q_width + 2 * kv_width, hs, n)
        layer = layer + ops.gemm(self.dtype, hs, q_width, n)
        if m.is_moe:
            layer = layer + ops.gemm("bfloat16", m.num_experts, hs, n)  # router, bf16
            layer = layer + ops.moe(self.dtype, hs, m.moe_intermediate_size,
                                    m.num_experts_per_tok, m.num_experts, tp, 1, n)
            act_width = 2 * m.moe_intermediate_size * m.num_experts_per_tok / tp
        else:
            inter = m.intermediate_size // tp
            up = 2 * inter if m.mlp == "gated" else inter
            layer = layer + ops.gemm(self.dtype, up, hs, n) + ops.gemm(self.dtype, hs, inter, n)
            act_width = up
        # Two fused residual-add + norms (read x and residual, write both), rotary on q and k,
        # the KV-cache write, the MLP activation (read the up projection, write half).
        kv_bytes = self.model.kv_bytes
        ew_bytes = n * (2 * 4 * hs * act + 2 * (q_width + kv_width) * act
                        + 2 * kv_width * (act + kv_bytes) + 1.5 * act_width * act)
        layer = layer + self._ew_us(ew_bytes, 5.0)
        if tp > 1:
            layer = layer + 2 * ops.allreduce(mode, tp, n * hs)
        total = m.num_layers * layer
        total = total + self._ew_us(n * hs * act, 1.0)  # embedding gather
        if tp > 1:
            total = total + ops.allreduce(mode, tp, n * hs)  # vocab-parallel embedding
        return total

    def _lm_head_us(self, rows: np.ndarray) -> np.ndarray:
        """The final norm, LM head and sampling of `rows` sampled positions."""
        m, tp = self.model, self.tp
        vocab = m.vocab_size // tp
        out = self._ew_us(rows * 4 * m.hidden_size * 2, 1.0)
        out = out + self.ops.gemm("bfloat16", vocab, m.hidden_size, rows)
        if tp > 1:
            # NOTE: gathering the vocabulary shards of the logits is priced as an all-reduce
            # of the gathered tensor (same ring traffic order; no all-gather table).
            out = out + self.ops.allreduce("eager", tp, rows * vocab)
        # Sampling on fp32 logits: softmax, top-k/top-p and the draw read and write them a few
        # times (three passes).
        return out + self._ew_us(rows * m.vocab_size * 4 * 3, 3.0)

    def _build_attention(self) -> None:
        key = (self.setup.kv_dtype, self.model.head_dim, self.model.num_layers, self.gen_map,
               self.ctx_map)
        if self.ops is _shared_ops(self.gpu.name, self.framework):
            grids = _shared_attention_grids(self.gpu.name, self.framework, *key)
        else:
            grids = _attention_grids(self.ops, *key)
        self._gen, self._ctx, self._attn_call_us = grids

    def _build_envelope(self) -> None:
        ops, kv, d = self.ops, self.setup.kv_dtype, self.model.head_dim
        self._max_tokens = ops.gemm_max_m(self.dtype)
        self._gen_extent = ops.attention_extent("generation_attention", kv, d, self.gen_map)
        self._ctx_extent = ops.attention_extent("context_attention", kv, d, self.ctx_map)
        if self.model.is_moe:
            self._max_tokens = min(self._max_tokens, ops.moe_max_tokens(
                (self.dtype, self.model.hidden_size, self.model.moe_intermediate_size,
                 self.model.num_experts_per_tok, self.model.num_experts, self.tp, 1)))
        widths = [self.model.vocab_size // self.tp]
        measured = max(k[1] for k in ops.table("gemm").keys_where(dtype="bfloat16"))
        if widths[0] > measured:
            self.notes.append(
                f"LM head width {widths[0]} exceeds the widest measured GEMM ({measured}); its "
                "time is scaled in proportion to the width")

    # ------------------------------------------------------------------ pricing

    def gpu_time_us(self, shape: BatchShape) -> float:
        """The forward pass of one step on the GPU (us), without the engine's CPU time."""
        n = shape.num_prefill_tokens + shape.num_decode_tokens
        if n == 0:
            return 0.0
        graph = n <= self._capture_max and (
            self.setup.version == "v1" or shape.num_prefill_tokens == 0)
        t = self._tok_graph[n] if graph else self._tok_eager(n)
        t += self._lm(shape.num_prefill_seqs + shape.num_decode_tokens)
        attn = 0.0
        b = shape.num_decode_seqs
        if b:
            context = shape.decode_kv_tokens / b
            attn = self._gen(b, context)
            width = shape.num_decode_tokens / b
            if width > 1.0:
                # Speculative verify: w query rows over the context, like a prefill chunk.
                cached = context - width
                pairs = width * (cached + width / 2)
                attn = max(attn, self._ctx(b, math.sqrt(2.0 * pairs)))
        p = shape.num_prefill_seqs
        if p:
            s_eq = math.sqrt(2.0 * shape.prefill_attn_pairs / p)
            prefill = self._ctx(p, s_eq)
            kv_per_chunk = shape.prefill_kv_tokens / p
            if kv_per_chunk > s_eq:
                prefill = max(prefill, self._gen(p, kv_per_chunk))
            attn = attn + prefill - (self._attn_call_us if b else 0.0)
        return t + attn

    def decode_step_fn(self, num_seqs: int) -> Callable[[int], float]:
        """`step_time` of a plain decode step of `num_seqs` sequences as a function of its
        decode KV tokens (the same float operations in the same order)."""
        m = num_seqs
        if m == 0:
            return lambda kv: self._cpu_us.step_us(0.0, 0, 0) * 1e-6
        head = self._tok_graph[m] if m <= self._capture_max else self._tok_eager(m)
        head += self._lm(m)
        gen, step_us = self._gen, self._cpu_us.step_us
        return lambda kv: step_us(head + gen(m, kv / m), m, m) * 1e-6

    def decode_run_fn(self, num_seqs: int) -> DecodeRun:
        """The fast-forward's pricer (`costmodel.base.DecodeRun`) for plain decode steps of
        `num_seqs` sequences, the whole run in one frame: it repeats `decode_step_fn`'s float
        operations in the same order, with the batch-size half of the attention grid lookup
        and the CPU terms, which do not change within a run, taken once (tests check every
        step against `step_time`)."""
        m = num_seqs
        if m == 0:
            return stepwise_run(self.decode_step_fn(0), 0)
        head = self._tok_graph[m] if m <= self._capture_max else self._tok_eager(m)
        head += self._lm(m)
        ta, row0, row1 = self._gen.first_axis(m)
        per, last = self._gen.per_octave, self._gen.last_b
        loop = self._cpu_us
        per_step_us = loop.per_step_us
        cpu_us = loop.per_seq_us * m + loop.per_token_us * m
        serial = loop.version == "v0"
        log2, exp = math.log2, math.exp

        def run(now: float, first_kv: int, max_steps: int, horizon: float
                ) -> tuple[list[float], list[float]]:
            starts, durations = [now], []
            t, kv = now, first_kv
            for _ in range(max_steps):
                if durations and t >= horizon:
                    break
                # LogGrid.__call__(m, kv / m) with the m half precomputed.
                b = kv / m
                fb = log2(b) * per if b > 1.0 else 0.0
                ib = int(fb)
                if ib >= last:
                    ib, fb = last - 1, float(last)
                tb = fb - ib
                v0 = row0[ib] + tb * (row0[ib + 1] - row0[ib])
                v1 = row1[ib] + tb * (row1[ib + 1] - row1[ib])
                gpu_us = head + exp(v0 + ta * (v1 - v0))
                # LoopTerms.step_us(gpu_us, m, m).
                if serial:
                    step_us = gpu_us + per_step_us + cpu_us
                else:
                    step_us = per_step_us + (gpu_us if gpu_us > cpu_us else cpu_us)
                d = step_us * 1e-6
                durations.append(d)
                t = t + d
                starts.append(t)
                kv += m
            return starts, durations

        return run

    def step_time(self, shape: BatchShape) -> float:
        """Seconds of one engine step: GPU forward pass and the engine loop's CPU time."""
        seqs = shape.num_prefill_seqs + shape.num_decode_seqs
        tokens = shape.num_prefill_tokens + shape.num_decode_tokens
        return self._cpu_us.step_us(self.gpu_time_us(shape), seqs, tokens) * 1e-6

    def step_parts(self, shape: BatchShape) -> StepParts:
        """`step_time` by pipeline part: the engine loop's CPU time is the host's, the final
        norm, LM head and sampling the last stage's, the rest (layers, embedding) is split."""
        seqs = shape.num_prefill_seqs + shape.num_decode_seqs
        tokens = shape.num_prefill_tokens + shape.num_decode_tokens
        gpu_us = self.gpu_time_us(shape)
        host_us = self._cpu_us.step_us(gpu_us, seqs, tokens) - gpu_us
        lm_us = self._lm(shape.num_prefill_seqs + shape.num_decode_tokens) if tokens else 0.0
        return StepParts(layers_s=(gpu_us - lm_us) * 1e-6, last_s=lm_us * 1e-6,
                         host_s=host_us * 1e-6)

    # ------------------------------------------------------------------ reporting

    def describe(self) -> dict[str, object]:
        tables = self.meta.get("tables", {})
        return {
            "kind": "kernels",
            "framework": self.framework,
            "gpu": self.gpu.name,
            "model": self.model.name,
            "tp": self.tp,
            "gemm_dtype": self.dtype,
            "kv_cache_dtype": self.setup.kv_dtype,
            "engine_version": self.setup.version,
            "cuda_graph_max_tokens": self._capture_max,
            "engine_loop": self.setup.loop.describe(),
            "source": (f"{self.meta.get('package')} {self.meta.get('package_version')} "
                       f"({self.meta.get('license')}), "
                       + ", ".join(f"{name} {t.get('framework_version')}"
                                   for name, t in sorted(tables.items()))),
            "notes": list(self.notes),
            **({"selected_by": self.selected_by} if self.selected_by else {}),
        }

    def _outside(self, steps: Any) -> dict[str, np.ndarray]:
        prefill = np.asarray(steps.num_prefill_tokens, dtype=np.float64)
        decode = np.asarray(steps.num_decode_tokens, dtype=np.float64)
        seqs = np.asarray(steps.num_seqs, dtype=np.float64)
        decode_kv = np.asarray(steps.decode_kv_tokens, dtype=np.float64)
        prefill_kv = np.asarray(steps.prefill_kv_tokens, dtype=np.float64)
        # NOTE: StepRecords has no decode-sequence count: decode tokens stand for it (exact
        # without speculation), and the remaining sequences are the prefill chunks.
        context = np.divide(decode_kv, decode, out=np.zeros_like(decode), where=decode > 0)
        chunks = np.where(prefill > 0, np.maximum(seqs - decode, 1.0), 0.0)
        q = np.divide(prefill, chunks, out=np.zeros_like(prefill), where=chunks > 0)
        kv = np.divide(prefill_kv, chunks, out=np.zeros_like(prefill), where=chunks > 0)
        s_eq = np.sqrt(np.maximum(2.0 * q * (kv - q / 2.0), 0.0))
        return {
            f"with more tokens than the {self._max_tokens:.0f} of the measured GEMMs":
                prefill + decode > self._max_tokens,
            "with decode batch x context beyond the measured decode attention":
                (decode > 0) & _beyond(self._gen_extent, decode, context),
            "with prefill chunks x length beyond the measured prefill attention":
                (prefill > 0) & _beyond(self._ctx_extent, chunks, s_eq),
        }

    def envelope_report(self, steps: Any) -> dict[str, object] | None:
        """Counts of steps priced outside the measured range of some table."""
        masks = self._outside(steps)
        any_out = np.zeros(len(steps), dtype=bool)
        counts = {}
        for key, mask in masks.items():
            counts[key] = int(mask.sum())
            any_out |= mask
        return {"cost_model": "kernels", "num_steps": len(steps),
                "num_steps_outside": int(any_out.sum()), "by_limit": counts,
                "notes": list(self.notes)}

    def envelope_warnings(self, steps: Any) -> list[str]:
        """A count of the steps priced past the measured tables (none inside them). The
        model-level approximations (`notes`) are in the run's cost-model description."""
        out: list[str] = []
        total = len(steps)
        if not total:
            return out
        report = self.envelope_report(steps)
        assert report is not None
        outside = int(report["num_steps_outside"])  # type: ignore[arg-type]
        if outside:
            by = report["by_limit"]
            assert isinstance(by, dict)
            detail = ", ".join(f"{v} {k}" for k, v in by.items() if v)
            out.append(f"{outside} of {total} steps ({100.0 * outside / total:.1f}%) outside the "
                       f"measured kernel tables ({detail}); their times are extrapolated")
        tokens = np.asarray(steps.num_prefill_tokens) + np.asarray(steps.num_decode_tokens)
        loop = self.setup.loop.extrapolation_warning(steps.num_seqs, tokens)
        if loop is not None:
            out.append(loop)
        return out


def _attention_grids(ops: KernelOps, kv_dtype: str, head_dim: int, num_layers: int,
                     gen_map: AttentionMap, ctx_map: AttentionMap
                     ) -> tuple[LogGrid, LogGrid, float]:
    """Decode and prefill attention of all layers on (batch, context) grids, and the fixed time
    of one attention call."""
    b = LogGrid.axis(_BATCH_OCTAVES, _PER_OCTAVE)[:, None]
    s = LogGrid.axis(_SEQ_OCTAVES, _PER_OCTAVE)[None, :]
    gen = num_layers * ops.attention("generation_attention", kv_dtype, head_dim, gen_map, b, s)
    ctx = num_layers * ops.attention("context_attention", kv_dtype, head_dim, ctx_map, b, s)
    # NOTE: V1 runs prefill chunks and decodes of a step in ONE attention call; the measured
    # context and generation calls each include the kernel's fixed time, which a mixed step
    # pays once: the smallest measured call.
    call_us = num_layers * float(
        ops.attention("context_attention", kv_dtype, head_dim, ctx_map, 1.0, 1.0))
    return LogGrid(np.log(gen), _PER_OCTAVE), LogGrid(np.log(ctx), _PER_OCTAVE), call_us


@functools.lru_cache(maxsize=32)
def _shared_attention_grids(gpu_name: str, framework: str, kv_dtype: str, head_dim: int,
                            num_layers: int, gen_map: AttentionMap, ctx_map: AttentionMap
                            ) -> tuple[LogGrid, LogGrid, float]:
    """`_attention_grids` of the shipped tables, once per process: they depend on the head
    layout, not on the engine's limits, so setups that differ only in limits (sweeps over
    max_num_seqs or the token budget) share them."""
    return _attention_grids(_shared_ops(gpu_name, framework), kv_dtype, head_dim, num_layers,
                            gen_map, ctx_map)


@functools.cache
def _shared_ops(gpu_name: str, framework: str) -> KernelOps:
    """One `KernelOps` per GPU and framework in a process (its tables are read once)."""
    return KernelOps(gpu_name, framework)


@functools.lru_cache(maxsize=32)
def _built_state(gpu: GpuSpec, model: ModelSpec, tp: int, setup: KernelSetup,
                 framework: str) -> dict[str, Any]:
    """The precomputed tables of a kernel model (without its engine loop)."""
    km = KernelCostModel.__new__(KernelCostModel)
    km._init(gpu, model, tp, setup, framework, _shared_ops(gpu.name, framework))
    return dict(vars(km))


def _beyond(extent: tuple[list[float], list[float]], batch: np.ndarray,
            seq: np.ndarray) -> np.ndarray:
    """Whether (batch, seq) lies past the measured rows: more sequences than the largest
    measured batch, or longer than the longest measured sequence of the smallest measured batch
    at least as large."""
    batches, longest = extent
    if not batches:
        return np.ones(batch.shape, dtype=bool)
    idx = np.searchsorted(np.asarray(batches), batch, side="left")
    over_batch = idx >= len(batches)
    limit = np.asarray(longest)[np.minimum(idx, len(batches) - 1)]
    return over_batch | (seq > limit)
