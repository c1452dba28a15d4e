"""The measured kernel tables simserve ships (calibration/kernels/): where they are, their format.

`simserve calibrate kernels` writes, per framework and GPU, a compact subset of the kernel
latencies measured by NVIDIA's aiconfigurator-core (Apache-2.0): GEMMs, prefill ("context") and
decode ("generation") attention, the custom all-reduce and fused MoE layers. Each table is a
"wide" CSV: a few key columns, then one column per value of the table's sweep axis (GEMM rows
m, attention sequence length, all-reduce message size, MoE tokens), latencies in MICROSECONDS
with 4 significant digits, an empty cell where nothing was measured. `meta.yaml` beside them
records the package, its version and licence, the source tables and their collection metadata.

Reading needs nothing but the standard library: running simserve never imports the package
that produced the files, nor pandas.

The files are measurements and stay so (the regeneration test keeps checking them against the
package, and the correction below can be judged against them): what the cost model reads
(`load_kernel_table`) is the measured table with one modelling step applied on loading: decode
attention, GEMM and MoE calls whose KV cache or weights fit in the GPU's L2 cache are priced as
device-memory reads where the benchmark ran them from L2 (`simserve.costmodel.l2_residency`,
with the L2 size from the GPU catalog). `load_measured_table` returns the files as measured.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from simserve import resources
from simserve.catalog import load_catalog
from simserve.costmodel.interpolation import MonotoneCurve
from simserve.costmodel.l2_residency import L2Repricing, dram_bound_decode, dram_bound_weights
from simserve.errors import InputError

__all__ = [
    "TABLES",
    "KernelTable",
    "TableSpec",
    "kernel_gpus",
    "kernel_meta",
    "kernels_dir",
    "load_kernel_table",
    "load_measured_table",
]


def kernels_dir() -> Path:
    """The folder of the shipped kernel tables (`calibration/kernels/`, carried by the
    package: see `simserve.resources`)."""
    return resources.kernels_dir()


@dataclass(frozen=True)
class TableSpec:
    """One kernel table: its file, its key columns and its sweep axis (the wide columns).

    `exponent` is the physical growth of latency along the axis far beyond the measured range
    (GEMM time grows linearly in m once compute-bound, causal prefill attention
    quadratically in the sequence length, decode attention linearly in the context, an
    all-reduce linearly in the message, a MoE layer linearly in the tokens), used to extend a
    curve past its last measured point.
    """

    name: str
    keys: tuple[str, ...]
    axis: str
    exponent: float
    # Monotone cubic (PCHIP) instead of linear in log-log between points: the attention and
    # MoE curves bend smoothly from their floor to their asymptote over a coarse grid, and the
    # cubic follows that bend (REPORT.md §7 compares both on held-back points).
    smooth: bool = False
    # Linear in (x, latency) instead of log-log: for ops whose time is a floor plus a cost
    # linear in x, where a log-log chord runs above the curve.
    linear: bool = False
    # Rows per tile along the axis: flat to the end of a measured point's tile, linear in x
    # rounded up to whole tiles between them (`interpolation.tiled_interp`).
    tile: int = 1

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    def curve(self, xs: Sequence[float], ys: Sequence[float]) -> MonotoneCurve:
        """The interpolated curve through one shape's measured points, as this table reads."""
        return MonotoneCurve.fit(xs, ys, self.exponent, self.smooth, self.linear, self.tile)


TABLES: dict[str, TableSpec] = {
    # NOTE: 64-row tiles, linear in the padded rows between tiles (waves of tiles add time in
    # proportion). The tile was chosen by leave-one-out over all measured GEMM points of each
    # GPU (each point predicted from its two neighbours), not on held-back rows: among tiles of
    # 1, 16, 32, 64, 128 and 256 rows, 64 is the lowest on five of the seven GPUs and within
    # 0.2 points of the lowest on the other two (RTX PRO 6000: 32; GB200: 128).
    "gemm": TableSpec("gemm", ("dtype", "n", "k"), "m", 1.0, linear=True, tile=64),
    "context_attention": TableSpec(
        "context_attention",
        ("kv_dtype", "head_dim", "num_heads", "num_kv_heads", "batch"),
        "isl",
        2.0,
        smooth=True,
    ),
    "generation_attention": TableSpec(
        "generation_attention",
        ("kv_dtype", "head_dim", "num_heads", "num_kv_heads", "batch"),
        "kv_len",
        1.0,
        # NOTE: a decode attention call reads K and V once: a launch and split floor plus a
        # time linear in the context, so it is interpolated linearly in the context.
        linear=True,
    ),
    "allreduce": TableSpec(
        "allreduce",
        ("backend", "num_gpus"),
        "message_elems",
        1.0,
        # NOTE: an all-reduce costs a latency floor (launch, synchronisation between the GPUs)
        # plus its message over the link bandwidth (the alpha-beta model of collectives;
        # Hockney 1994), so it is interpolated linearly in the message between points: a
        # log-log chord runs above that line. Chosen by leave-one-out on the kept points of
        # the held-back split (lower on all seven GPUs than log-log and the monotone cubic;
        # REPORT.md §7.2 scores it beside log-log).
        linear=True,
    ),
    "moe": TableSpec(
        "moe",
        ("dtype", "hidden", "inter", "topk", "experts", "moe_tp", "moe_ep"),
        "num_tokens",
        1.0,
        smooth=True,
    ),
}


# Tables whose calls read operands an earlier step wrote (KV cache, weights): re-priced for L2.
_L2_BOUND = ("generation_attention", "gemm", "moe")


@dataclass(frozen=True)
class KernelTable:
    """A parsed wide table: `curves[key] = (axis values, latencies in us)`, measured points only.

    Keys are tuples of the spec's key columns (strings stay strings, numbers become ints).
    `l2` says how the table was re-priced for the L2 cache (None: as measured).
    """

    spec: TableSpec
    gpu: str
    framework: str
    curves: dict[tuple[Any, ...], tuple[tuple[float, ...], tuple[float, ...]]]
    l2: L2Repricing | None = None

    def keys_where(self, **fixed: Any) -> list[tuple[Any, ...]]:
        """Keys whose named key columns equal the given values."""
        idx = {name: self.spec.keys.index(name) for name in fixed}
        return [k for k in self.curves if all(k[i] == fixed[n] for n, i in idx.items())]


def _cell(raw: str) -> Any:
    try:
        return int(raw)
    except ValueError:
        return raw


def _gpu_dir(gpu: str, framework: str) -> Path:
    return kernels_dir() / framework / gpu


def kernel_gpus(framework: str = "vllm") -> tuple[str, ...]:
    """Catalog names of the GPUs with shipped kernel tables for `framework`, sorted."""
    root = kernels_dir() / framework
    if not root.is_dir():
        return ()
    return tuple(sorted(p.name for p in root.iterdir() if (p / "meta.yaml").is_file()))


@functools.cache
def kernel_meta(gpu: str, framework: str = "vllm") -> dict[str, Any]:
    """The `meta.yaml` of one GPU's tables (package, licence, sources, GPU spec)."""
    path = _gpu_dir(gpu, framework) / "meta.yaml"
    if not path.is_file():
        known = ", ".join(kernel_gpus(framework)) or "none"
        raise InputError(
            f"no measured kernel tables for GPU {gpu!r} and framework {framework!r} "
            f"(shipped: {known})",
            field="cost_model.kind",
        )
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@functools.cache
def load_kernel_table(gpu: str, name: str, framework: str = "vllm") -> KernelTable:
    """One shipped table of `gpu` (catalog name) as the cost model reads it, once per process:
    as measured, except decode attention, GEMM and MoE calls re-priced where the benchmark
    served their KV cache or weights from L2 (module doc)."""
    table = load_measured_table(gpu, name, framework)
    if name not in _L2_BOUND or not table.curves:
        return table
    # NOTE: the packaged catalog's figures: the tables measured that hardware, whatever a
    # scenario's own catalog file says about a GPU of the same name.
    spec = load_catalog().gpus.get(gpu.casefold())
    if spec is None or spec.l2_bytes is None:
        return table
    peak_bytes_per_us = spec.mem_bandwidth_gbps * 1e3
    if name == "generation_attention":
        curves, l2 = dram_bound_decode(table.curves, spec.l2_bytes, peak_bytes_per_us)
    else:
        curves, l2 = dram_bound_weights(name, table.curves, spec.l2_bytes, peak_bytes_per_us)
    return dataclasses.replace(table, curves=curves, l2=l2)


@functools.cache
def load_measured_table(gpu: str, name: str, framework: str = "vllm") -> KernelTable:
    """One shipped table of `gpu` (catalog name) as measured, parsed once per process."""
    spec = TABLES[name]
    path = _gpu_dir(gpu, framework) / spec.file_name
    if not path.is_file():
        return KernelTable(spec, gpu, framework, {})
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    num_keys = len(spec.keys)
    if tuple(header[:num_keys]) != spec.keys:
        raise InputError(f"expected key columns {','.join(spec.keys)}", source=str(path),
                         line=1)
    axis = [float(v) for v in header[num_keys:]]
    curves: dict[tuple[Any, ...], tuple[tuple[float, ...], tuple[float, ...]]] = {}
    for row in rows[1:]:
        key = tuple(_cell(v) for v in row[:num_keys])
        xs, ys = [], []
        for x, raw in zip(axis, row[num_keys:], strict=True):
            if raw:
                xs.append(x)
                ys.append(float(raw))
        curves[key] = (tuple(xs), tuple(ys))
    return KernelTable(spec, gpu, framework, curves)
