"""Latency of one kernel call of any shape, from the measured tables of one GPU (microseconds).

`KernelOps` answers "how long does this GEMM / attention call / all-reduce / MoE layer take" for
shapes between and beyond the measured ones (`simserve/costmodel/interpolation.py`):

- GEMM (m, n, k): the curves over m of the four measured (n, k) around the asked one, combined
  bilinearly in (log n, log k, log latency): exact for power laws, which GEMM time follows in n
  and k at fixed m (x^1 once the kernel fills the GPU); past the largest measured n or k
  latency grows in proportion.
- Attention (batch, sequence) for (heads, KV heads, head dim) per GPU: the measured rows of that
  head configuration. A configuration that was not measured is mapped to one with the same
  group size (query heads per KV head): its work items (one per sequence and KV head) are the
  same, so b sequences with h_kv KV heads cost like b x h_kv / h_kv0 sequences with h_kv0
  (FlashAttention splits work over batch x KV heads). This is how MHA models (OPT, Llama-2),
  which the decode table does not cover above 8 KV heads, are priced.
- All-reduce (GPUs, message elements) in CUDA-graph or eager mode; MoE layers for the exact
  (hidden, expert width, top-k, experts, TP, EP) measured.

A shape that cannot be priced (a head size, GPU count or MoE shape not measured) raises
`KernelCoverageError`, so a scenario says why it falls back to the roofline instead of getting a
silent guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simserve.costmodel.interpolation import MonotoneCurve, rows_at
from simserve.costmodel.kernel_tables import (
    TABLES,
    KernelTable,
    load_kernel_table,
    load_measured_table,
)
from simserve.formatting import fmt_number

__all__ = ["AttentionMap", "KernelCoverageError", "KernelOps"]

# Batch rows grow linearly past the largest measured batch (independent sequences).
_BATCH_EXPONENT = 1.0


class KernelCoverageError(ValueError):
    """A shape the measured tables cannot price (and why)."""


def _bracket(grid: Sequence[int], value: float) -> tuple[int, int]:
    """The grid values around `value` (equal ones at or beyond the ends)."""
    lo = max((g for g in grid if g <= value), default=grid[0])
    hi = min((g for g in grid if g >= value), default=grid[-1])
    return lo, hi


def _weight(lo: int, hi: int, value: float) -> float:
    if hi == lo:
        return 0.0
    return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))


@dataclass(frozen=True)
class AttentionMap:
    """How a model's attention maps onto measured rows: the head configuration used and the
    factor its batch is multiplied by (1 when the configuration itself was measured)."""

    num_heads: int
    num_kv_heads: int
    batch_scale: float

    @property
    def exact(self) -> bool:
        return self.batch_scale == 1.0


@dataclass
class KernelOps:
    """Interpolated kernel latencies (us) of one GPU and framework: the tables as the cost
    model reads them (re-priced for the L2 cache, `kernel_tables`), or with `measured` the
    files as measured (to show what that re-pricing changes)."""

    gpu: str
    framework: str = "vllm"
    measured: bool = False
    _curves: dict[tuple[str, tuple[object, ...]], MonotoneCurve] = field(default_factory=dict)

    def table(self, name: str) -> KernelTable:
        load = load_measured_table if self.measured else load_kernel_table
        return load(self.gpu, name, self.framework)

    def _curve(self, name: str, key: tuple[object, ...]) -> MonotoneCurve | None:
        cached = self._curves.get((name, key))
        if cached is None:
            data = self.table(name).curves.get(key)
            if not data or not data[0]:
                return None
            cached = TABLES[name].curve(data[0], data[1])
            self._curves[(name, key)] = cached
        return cached

    # ------------------------------------------------------------------ GEMM

    def gemm_dtypes(self) -> set[str]:
        return {k[0] for k in self.table("gemm").curves}

    def gemm(self, dtype: str, n: int, k: int, m: np.ndarray | float) -> np.ndarray:
        """Latency of an (m x k) @ (k x n) GEMM in `dtype`."""
        keys = self.table("gemm").keys_where(dtype=dtype)
        if not keys:
            raise KernelCoverageError(f"no {dtype} GEMM measured on {self.gpu}")
        ns = sorted({key[1] for key in keys})
        ks = sorted({key[2] for key in keys})
        n0, n1 = _bracket(ns, n)
        k0, k1 = _bracket(ks, k)
        wn, wk = _weight(n0, n1, n), _weight(k0, k1, k)
        logs = {}
        for nn in (n0, n1):
            for kk in (k0, k1):
                curve = self._curve("gemm", (dtype, nn, kk))
                if curve is None:
                    curve = self._nearest_gemm(dtype, nn, kk, keys)
                logs[(nn, kk)] = np.log(curve(m))
        out = ((1 - wn) * (1 - wk) * logs[(n0, k0)] + wn * (1 - wk) * logs[(n1, k0)]
               + (1 - wn) * wk * logs[(n0, k1)] + wn * wk * logs[(n1, k1)])
        # NOTE: past the measured widths time grows in proportion (FLOPs and bytes are linear in
        # n and in k once the GPU is full); below them it stays at the smallest kernel's.
        scale = max(n / ns[-1], 1.0) * max(k / ks[-1], 1.0)
        return np.exp(out) * scale

    def _nearest_gemm(self, dtype: str, n: int, k: int,
                      keys: Sequence[tuple[object, ...]]) -> MonotoneCurve:
        """The measured (n', k') nearest in log space, for a grid point a kernel skipped;
        scaled by (n k) / (n' k') as FLOPs and bytes would be."""
        best = min(keys, key=lambda key: (math.log(key[1] / n)) ** 2 + (math.log(key[2] / k)) ** 2)
        curve = self._curve("gemm", best)
        assert curve is not None
        return curve.scaled((n * k) / (best[1] * best[2]))

    # ------------------------------------------------------------------ attention

    def attention_map(self, name: str, kv_dtype: str, head_dim: int, num_heads: int,
                      num_kv_heads: int) -> AttentionMap:
        """The measured head configuration that prices (num_heads, num_kv_heads) per GPU."""
        keys = self.table(name).keys_where(kv_dtype=kv_dtype, head_dim=head_dim)
        if not keys:
            have = sorted({(k[0], k[1]) for k in self.table(name).curves})
            raise KernelCoverageError(
                f"{name.replace('_', ' ')} on {self.gpu} was not measured for head_dim "
                f"{head_dim} with a {kv_dtype} KV cache (measured: "
                f"{', '.join(f'{d} {h}' for d, h in have)})")
        configs = {(k[2], k[3]) for k in keys}
        if (num_heads, num_kv_heads) in configs:
            return AttentionMap(num_heads, num_kv_heads, 1.0)
        group = num_heads / num_kv_heads
        same = [(h, kv) for h, kv in configs if h / kv == group]
        if not same:
            raise KernelCoverageError(
                f"{name.replace('_', ' ')} on {self.gpu}: no measured configuration with "
                f"{fmt_number(group)} query heads per KV head (asked {num_heads}/{num_kv_heads})")
        # NOTE: prefer the largest measured KV-head count not above the asked one (the
        # closest per-sequence work), else the smallest above it.
        below = [c for c in same if c[1] <= num_kv_heads]
        h, kv = max(below, key=lambda c: c[1]) if below else min(same, key=lambda c: c[1])
        return AttentionMap(h, kv, num_kv_heads / kv)

    def attention(self, name: str, kv_dtype: str, head_dim: int, amap: AttentionMap,
                  batch: np.ndarray | float, seq: np.ndarray | float) -> np.ndarray:
        """Latency of one attention call over `batch` sequences of `seq` tokens (context:
        prompt length; generation: KV length), broadcast over batch and seq."""
        rows = {}
        for key in self.table(name).keys_where(kv_dtype=kv_dtype, head_dim=head_dim,
                                               num_heads=amap.num_heads,
                                               num_kv_heads=amap.num_kv_heads):
            curve = self._curve(name, key)
            if curve is not None:
                rows[float(key[4])] = curve
        scaled = np.asarray(batch, dtype=np.float64) * amap.batch_scale
        return rows_at(rows, scaled, seq, _BATCH_EXPONENT)

    def attention_extent(self, name: str, kv_dtype: str, head_dim: int,
                         amap: AttentionMap) -> tuple[list[float], list[float]]:
        """Measured batches (in the model's own batch units) and the longest measured
        sequence of each: the envelope of the table for this model."""
        out = []
        for key in self.table(name).keys_where(kv_dtype=kv_dtype, head_dim=head_dim,
                                               num_heads=amap.num_heads,
                                               num_kv_heads=amap.num_kv_heads):
            xs, _ = self.table(name).curves[key]
            if xs:
                out.append((key[4] / amap.batch_scale, max(xs)))
        out.sort()
        return [b for b, _ in out], [s for _, s in out]

    # ------------------------------------------------------------------ all-reduce, MoE

    def allreduce(self, backend: str, num_gpus: int, elems: np.ndarray | float) -> np.ndarray:
        """Latency of a custom all-reduce of `elems` bf16 elements over `num_gpus` GPUs."""
        curve = self._curve("allreduce", (backend, num_gpus))
        if curve is None:
            have = sorted({k[1] for k in self.table("allreduce").curves})
            raise KernelCoverageError(
                f"all-reduce over {num_gpus} GPUs was not measured on {self.gpu} (measured: "
                f"{', '.join(map(str, have)) or 'none'})")
        return curve(elems)

    def moe(self, dtype: str, hidden: int, inter: int, topk: int, experts: int, moe_tp: int,
            moe_ep: int, tokens: np.ndarray | float) -> np.ndarray:
        """Latency of one fused MoE layer (routing, experts' gate/up and down GEMMs) at
        `tokens` tokens."""
        key = (dtype, hidden, inter, topk, experts, moe_tp, moe_ep)
        curve = self._curve("moe", key)
        if curve is None:
            raise KernelCoverageError(
                f"no {dtype} MoE layer of hidden {hidden}, expert width {inter}, top-{topk} of "
                f"{experts} experts at TP{moe_tp}/EP{moe_ep} was measured on {self.gpu}")
        return curve(tokens)

    def moe_max_tokens(self, key: tuple[object, ...]) -> float:
        curve = self._curve("moe", key)
        return curve.x_max if curve is not None else 0.0

    def gemm_max_m(self, dtype: str) -> float:
        keys = self.table("gemm").keys_where(dtype=dtype)
        return max((max(self.table("gemm").curves[k][0], default=0.0) for k in keys),
                   default=0.0)
