"""Measured kernels re-priced where the benchmark found their operands in the L2 cache.

aiconfigurator-core times a kernel by calling it over and over on the same tensors. An operand
that fits in the GPU's L2 cache is then read from L2 on every call but the first. On the GDDR
GPUs, whose L2 is large (96 MiB on the L40S, 128 MiB on the RTX PRO 6000) and whose device
memory is slow, such calls run up to 2.9x (decode attention, GEMMs) and 3.6x (one-token MoE
layers) faster than device memory could feed them, and decode attention's time jumps 3-6x where
K and V outgrow L2. A serving step never sees that cache state: between two calls of one
layer's kernel every other layer's weights and K and V stream through L2, so the operands a
call reads from earlier steps (the KV cache, the weights) come from device memory. (Operands
the previous kernel of the same step just wrote, such as a prefill chunk's fresh Q, K and V,
may well be in L2 in serving too: prefill attention is left as measured.) REPORT.md §7.2 shows
the evidence per GPU and table.

Decode attention (`dram_bound_decode`): every call whose K and V fit in L2 costs the larger of
its measured time and what the same shape takes when it reads them from device memory:

- each shape's own DRAM regime, a straight line through its measured points whose K and V are
  2 to 8 times the L2 size (far enough past L2 that no hits remain, near enough that the
  kernel's split strategy is the one used below), extended down (from no less than 0 at no
  K and V);
- never above the shape's floor (its time at the smallest measured context, where it reads
  almost nothing) plus its K and V read at the GPU's DRAM efficiency: the median over shapes of
  the efficiency those lines imply (peak bandwidth over their slope), so a line whose intercept
  carries a longer context's split reduction does not raise calls that do not pay it, and
  shapes measured only below 2x L2 (small batches) get the same device-memory read.

GEMMs and MoE layers (`dram_bound_weights`): a call whose weights fit in L2 costs at least its
weights read at the table's DRAM efficiency: the median of weight bytes over time (as a fraction
of peak bandwidth) of the table's memory-bound calls (GEMMs of at most 16 rows, MoE layers of
one token) whose weights are 2 to 8 times the L2 size. No launch floor is added (the GEMM
tables' small-row times follow no single floor-plus-bandwidth line), so for smaller weights,
where the launch weighs more, it is a lower bound, and it raises only calls that beat what
device memory allows. A MoE layer reads at least its top-k experts' weights (exactly those
at one token); with expert parallelism the experts a token reaches on the measured GPU are
unknown, so those shapes are left as measured.

The rules only ever raise a measured time, and change nothing whose operand exceeds L2: those
calls read device memory in the benchmark too.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "REPORTED_RISE",
    "L2Repricing",
    "dram_bound_decode",
    "dram_bound_weights",
    "kv_bytes_per_token",
    "weight_bytes",
]

Key = tuple[Any, ...]
Curve = tuple[tuple[float, ...], tuple[float, ...]]
Curves = Mapping[Key, Curve]

# NOTE: the DRAM regime is read from operands 2-8x the L2 size: at 1-2x a cache with an adaptive
# replacement policy can still hit on part of a working set slightly larger than itself, and far
# beyond 8x the kernels split their work differently.
_DRAM_FROM_L2 = 2.0
_DRAM_TO_L2 = 8.0
# Calls counted as raised in reports: by 10% or more (smaller rises are mostly decode calls at
# their floor measured a little under the shape's smallest time).
REPORTED_RISE = 1.1
# Memory-bound sizes the weight tables' DRAM efficiency is read from: GEMMs of at most one
# 16-row tile (the weights dominate the bytes), MoE layers of one token (exactly top-k experts).
_MEMORY_BOUND_AXIS = {"gemm": 16.0, "moe": 1.0}
_ELEMENT_BYTES = {"bfloat16": 2, "fp8": 1, "fp8_block": 1}


@dataclass(frozen=True)
class L2Repricing:
    """What the re-pricing did to one table of one GPU."""

    table: str
    l2_bytes: float
    peak_bytes_per_us: float
    # The DRAM efficiency (fraction of peak bandwidth) used, and how many shapes (decode) or
    # memory-bound calls (GEMM, MoE) it is the median of (0: none, nothing re-priced).
    dram_efficiency: float
    fitted_on: int
    # Calls whose operand fits in L2, those raised by REPORTED_RISE or more, the largest rise
    # (priced time over measured time).
    rows_in_l2: int
    rows_raised: int
    max_factor: float


def kv_bytes_per_token(kv_dtype: str, head_dim: int, num_kv_heads: int, batch: int) -> int:
    """Bytes of K and V one decode call of `batch` sequences reads per token of context."""
    return batch * num_kv_heads * head_dim * 2 * _ELEMENT_BYTES.get(kv_dtype, 2)


def weight_bytes(table: str, key: Key) -> float | None:
    """Bytes of weights a GEMM (dtype, n, k) or a MoE layer (dtype, hidden, expert width,
    top-k, experts, TP, EP) must read at least, None where unknown (MoE with EP > 1)."""
    if table == "gemm":
        dtype, n, k = key
        return float(n * k * _ELEMENT_BYTES[dtype])
    if table == "moe":
        dtype, hidden, inter, topk, _experts, moe_tp, moe_ep = key
        if moe_ep != 1:
            return None
        # Gated experts: gate, up and down matrices, the expert width split over moe_tp.
        return topk * 3 * hidden * inter / moe_tp * _ELEMENT_BYTES[dtype]
    raise ValueError(f"no weight bytes for table {table!r}")


def _line(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) through the points, None unless the slope is > 0."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    if slope <= 0.0:
        return None
    return my - slope * mx, slope


def _raise_rows(curves: Curves, bound: Callable[[Key, float], float | None]
                ) -> dict[Key, Curve]:
    """Every point priced max(measured, bound(key, x)); bound None: outside L2, as measured."""
    out: dict[Key, Curve] = {}
    for key, (xs, ys) in curves.items():
        priced = []
        for x, y in zip(xs, ys, strict=True):
            floor_us = bound(key, x)
            priced.append(y if floor_us is None else max(y, floor_us))
        out[key] = (xs, tuple(priced))
    return out


def _summary(table: str, measured: Curves, priced: Mapping[Key, Curve], l2_bytes: float,
             peak_bytes_per_us: float, efficiency: float, fitted_on: int,
             in_l2: Callable[[Key, float], bool]) -> L2Repricing:
    """What the re-pricing changed (`L2Repricing`)."""
    count, raised, top = 0, 0, 1.0
    for key, (xs, ys) in measured.items():
        for x, y, p in zip(xs, ys, priced[key][1], strict=True):
            if in_l2(key, x):
                count += 1
                raised += p / y >= REPORTED_RISE
                top = max(top, p / y)
    return L2Repricing(table, l2_bytes, peak_bytes_per_us, efficiency, fitted_on, count,
                       raised, top)


def _monotone_in_batch(measured: Curves, priced: Mapping[Key, Curve],
                       in_l2: Callable[[Key, float], bool]) -> dict[Key, Curve]:
    """Decode calls within L2 priced no lower than the next smaller measured batch at the same
    context, where they were measured no faster than it.

    NOTE: each batch is re-priced on its own line and floor, whose noise can put a batch below
    the next smaller one; more sequences read more K and V, so where the measurements kept that
    order the re-pricing keeps it too. (Where they did not, the two batches ran different
    kernels, and that is left as measured. Past L2 nothing is changed: a batch past L2 has
    every larger batch past it too.)
    """
    out = dict(priced)
    configs: dict[Key, list[Key]] = {}
    for key in measured:
        configs.setdefault(key[:4], []).append(key)
    for keys in configs.values():
        below: dict[float, tuple[float, float]] = {}  # x -> (measured, priced) of the last batch
        for key in sorted(keys, key=lambda k: k[4]):
            xs, ys = measured[key]
            new = list(out[key][1])
            for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
                if not in_l2(key, x):
                    continue
                if x in below and y >= below[x][0]:
                    new[i] = max(new[i], below[x][1])
                below[x] = (y, new[i])
            out[key] = (xs, tuple(new))
    return out


def dram_bound_decode(curves: Curves, l2_bytes: float, peak_bytes_per_us: float
                      ) -> tuple[dict[Key, Curve], L2Repricing]:
    """The decode attention table (`curves[key] = (kv lengths, latencies us)`, keys
    (kv dtype, head dim, heads, KV heads, batch)) with every call whose K and V fit in L2
    priced as a device-memory read where that is slower than measured (module doc)."""

    def kv_bytes(key: Key, x: float) -> float:
        return x * kv_bytes_per_token(key[0], key[1], key[3], key[4])

    def in_l2(key: Key, x: float) -> bool:
        return kv_bytes(key, x) <= l2_bytes

    lines: dict[Key, tuple[float, float]] = {}
    for key, (xs, ys) in curves.items():
        pts = [(kv_bytes(key, x), y) for x, y in zip(xs, ys, strict=True)
               if _DRAM_FROM_L2 * l2_bytes <= kv_bytes(key, x) <= _DRAM_TO_L2 * l2_bytes]
        fit = _line([b for b, _ in pts], [y for _, y in pts])
        if fit is not None:
            lines[key] = fit
    if not lines:
        return dict(curves), _summary("generation_attention", curves, curves, l2_bytes,
                                      peak_bytes_per_us, float("nan"), 0, in_l2)
    us_per_byte = statistics.median(slope for _, slope in lines.values())
    floors = {key: min(ys) for key, (_xs, ys) in curves.items() if ys}

    def bound(key: Key, x: float) -> float | None:
        if not in_l2(key, x):
            return None
        # NOTE: in serving every layer's K and V come from device memory (module doc): the
        # shape's floor plus the read at the GPU's DRAM efficiency, or the shape's own DRAM
        # line if lower (its intercept clipped at 0: no call takes negative time).
        dram_us = floors[key] + kv_bytes(key, x) * us_per_byte
        own = lines.get(key)
        return dram_us if own is None else min(dram_us,
                                               max(own[0], 0.0) + own[1] * kv_bytes(key, x))

    priced = _monotone_in_batch(curves, _raise_rows(curves, bound), in_l2)
    return priced, _summary("generation_attention", curves, priced, l2_bytes, peak_bytes_per_us,
                            1.0 / (us_per_byte * peak_bytes_per_us), len(lines), in_l2)


def dram_bound_weights(table: str, curves: Curves, l2_bytes: float, peak_bytes_per_us: float
                       ) -> tuple[dict[Key, Curve], L2Repricing]:
    """The GEMM (`table` "gemm") or MoE ("moe") table with every call whose weights fit in L2
    priced at least as its weights' read from device memory (module doc)."""

    def in_l2(key: Key, _x: float) -> bool:
        w = weight_bytes(table, key)
        return w is not None and w <= l2_bytes

    limit = _MEMORY_BOUND_AXIS[table]
    fractions = []
    for key, (xs, ys) in curves.items():
        w = weight_bytes(table, key)
        if w is None or not _DRAM_FROM_L2 * l2_bytes <= w <= _DRAM_TO_L2 * l2_bytes:
            continue
        fractions += [w / (y * peak_bytes_per_us) for x, y in zip(xs, ys, strict=True)
                      if x <= limit]
    if not fractions:
        return dict(curves), _summary(table, curves, curves, l2_bytes, peak_bytes_per_us,
                                      float("nan"), 0, in_l2)
    efficiency = statistics.median(fractions)
    bytes_per_us = efficiency * peak_bytes_per_us

    def bound(key: Key, x: float) -> float | None:
        # NOTE: in serving a layer's weights come from device memory (module doc).
        w = weight_bytes(table, key)
        return w / bytes_per_us if w is not None and in_l2(key, x) else None

    priced = _raise_rows(curves, bound)
    return priced, _summary(table, curves, priced, l2_bytes, peak_bytes_per_us, efficiency,
                            len(fractions), in_l2)
