"""`simserve calibrate kernels`: the compact kernel tables simserve ships, from aiconfigurator-core.

NVIDIA's aiconfigurator-core (PyPI, Apache-2.0) ships kernel latencies measured inside the
serving engines themselves, per GPU, framework and framework version, as parquet tables under
`aiconfigurator_core/systems/data/<system>/<op>/<framework>/<version>/`. This module reads the
installed package (pandas + pyarrow: the optional `calibrate` extra) and writes what simserve's
kernel cost model needs into `calibration/kernels/<framework>/<gpu>/` in the plain-text format
of `simserve/costmodel/kernel_tables.py`:

- only the newest framework version of each op on each GPU;
- per measured shape the one kernel implementation with the most measured points (where the
  package measured several; meta.yaml counts which priced how many shapes), full-attention rows
  only (window_size 0), MoE rows with a power-law (skewed) expert load;
- latencies converted from ms to us and rounded to 4 significant digits.

The output is a pure function of the package version, so a test regenerates it and compares it
byte for byte with the shipped files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from simserve.costmodel.kernel_tables import TABLES, TableSpec
from simserve.errors import InputError
from simserve.formatting import fmt_plain, round_significant

__all__ = [
    "AIC_PACKAGE",
    "AIC_VERSION",
    "GPU_SYSTEMS",
    "extract_kernels",
    "format_us",
]

AIC_PACKAGE = "aiconfigurator-core"
# NOTE: pinned: the shipped tables and the byte-for-byte regeneration test depend on it.
AIC_VERSION = "0.12.0"

# Catalog GPU name -> aiconfigurator system name.
GPU_SYSTEMS: dict[str, str] = {
    "a100-80gb-sxm": "a100_sxm",
    "h100-80gb-sxm": "h100_sxm",
    "h200": "h200_sxm",
    "b200": "b200_sxm",
    "gb200": "gb200",
    "l40s": "l40s",
    "rtx-pro-6000": "rtx_pro_6000_server",
}

# table -> (op folder, parquet file, dtype column, aiconfigurator key columns in TableSpec order,
# axis column)
_SOURCES: dict[str, tuple[str, str, str, tuple[str, ...], str]] = {
    "gemm": ("gemm", "gemm_perf.parquet", "gemm_dtype", ("gemm_dtype", "n", "k"), "m"),
    "context_attention": (
        "attention", "context_attention_perf.parquet", "kv_cache_dtype",
        ("kv_cache_dtype", "head_dim", "num_heads", "num_key_value_heads", "batch_size"), "isl",
    ),
    "generation_attention": (
        "attention", "generation_attention_perf.parquet", "kv_cache_dtype",
        ("kv_cache_dtype", "head_dim", "num_heads", "num_key_value_heads", "batch_size"),
        "kv_len",
    ),
    "allreduce": ("comm", "custom_allreduce_perf.parquet", "backend",
                  ("backend", "num_gpus"), "message_size"),
    "moe": ("moe", "moe_perf.parquet", "moe_dtype",
            ("moe_dtype", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size",
             "moe_ep_size"), "num_tokens"),
}
# Weight / KV formats simserve prices (others, e.g. nvfp4 or int4 MoE, are left out).
_DTYPES = {"gemm": ("bfloat16", "fp8", "fp8_block"),
           "context_attention": ("bfloat16", "fp8"),
           "generation_attention": ("bfloat16", "fp8"),
           "allreduce": ("vllm_graph", "vllm_eager"),
           "moe": ("bfloat16", "fp8", "fp8_block")}
_SHORT_BACKEND = {"vllm_graph": "graph", "vllm_eager": "eager"}


def format_us(latency_ms: float) -> str:
    """A latency in ms as us with 4 significant digits, without an exponent."""
    return fmt_plain(round_significant(latency_ms * 1e3, 4))


def _package_root() -> Path:
    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"`simserve calibrate kernels` reads the tables of {AIC_PACKAGE}=={AIC_VERSION}: "
            f"pip install 'simserve[calibrate]' (or pip install {AIC_PACKAGE}=={AIC_VERSION} "
            "pandas)"
        )
    version = importlib.metadata.version(AIC_PACKAGE)
    if version != AIC_VERSION:
        raise InputError(f"{AIC_PACKAGE} {version} is installed; the shipped tables come from "
                         f"{AIC_VERSION} (pip install {AIC_PACKAGE}=={AIC_VERSION})")
    return Path(next(iter(spec.submodule_search_locations)))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))


def _newest_version(op_dir: Path, file_name: str) -> Path | None:
    versions = [p for p in op_dir.iterdir() if (p / file_name).is_file()] if op_dir.is_dir() \
        else []
    return max(versions, key=lambda p: _version_key(p.name)) if versions else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prepare(name: str, df: Any) -> Any:
    """Rows simserve prices, with the axis column named as in the table spec."""
    if name in ("context_attention", "generation_attention"):
        if "window_size" in df:
            df = df[df["window_size"] == 0]
        if name == "generation_attention":
            # NOTE: aiconfigurator measures a decode step of a sequence with `isl` prompt
            # tokens after `step` generated ones: its KV read covers isl + step tokens.
            df = df.assign(kv_len=df["isl"] + df["step"])
    if name == "moe":
        # NOTE: a router's choices are skewed, not round-robin: the package's "balanced" rows
        # spread a few tokens over the most experts (16 tokens x top-8 of 128 reach all 128;
        # uniform random routing reaches ~82), so they overprice small decode batches by up to
        # 1.6x. Its power-law rows (aiconfigurator's own default workload) are kept, and the
        # balanced ones only for shapes measured without them.
        df = df[df["distribution"].isin(("power_law_1.01", "balanced"))]
        keys = [*_SOURCES[name][3], "kernel_source"]
        skewed = df[df["distribution"] == "power_law_1.01"]
        have = set(map(tuple, skewed[keys].drop_duplicates().itertuples(index=False)))
        fallback = np.array([tuple(r) not in have for r in df[keys].itertuples(index=False)],
                            dtype=bool)
        df = df[(df["distribution"] == "power_law_1.01") | ((df["distribution"] == "balanced")
                                                            & fallback)]
    return df


def _pick_kernels(name: str, df: Any) -> tuple[Any, dict[str, dict[str, int]]]:
    """Per shape (all key columns), the kernel implementation with the most measured points
    (ties: alphabetical); returns the rows kept and, per dtype, how many shapes each
    implementation priced.

    NOTE: per shape, not per table: the framework picks kernels per configuration (e.g. vLLM's
    block-FP8 MoE runs FlashInfer's CUTLASS kernel with expert parallelism and Triton without).
    """
    _op, _file, dtype_col, key_cols, _axis = _SOURCES[name]
    df = df[df[dtype_col].isin(_DTYPES[name])]
    if df.empty:
        return df, {}
    counts = df.groupby([*key_cols, "kernel_source"]).size().reset_index(name="rows")
    counts = counts.sort_values([*key_cols, "rows", "kernel_source"],
                                ascending=[True] * len(key_cols) + [False, True])
    best = counts.drop_duplicates(list(key_cols), keep="first")
    kept = df.merge(best[[*key_cols, "kernel_source"]], on=[*key_cols, "kernel_source"])
    chosen: dict[str, dict[str, int]] = {}
    for (dtype, source), group in best.groupby([dtype_col, "kernel_source"]):
        chosen.setdefault(str(dtype), {})[str(source)] = len(group)
    return kept, chosen


def _wide_csv(spec: TableSpec, df: Any, key_cols: Sequence[str], axis_col: str) -> str:
    """The wide text table: one row per key (sorted), one column per axis value (sorted)."""
    # NOTE: a few points were measured more than once (A100); their median is kept.
    df = df.groupby([*key_cols, axis_col], as_index=False)["latency"].median()
    axis_values = sorted({int(v) for v in df[axis_col]})
    col_of = {v: i for i, v in enumerate(axis_values)}
    rows: dict[tuple[Any, ...], list[str]] = {}
    for rec in df[[*key_cols, axis_col, "latency"]].itertuples(index=False):
        key = tuple(rec[: len(key_cols)])
        if spec.name == "allreduce":
            key = (_SHORT_BACKEND[key[0]], *key[1:])
        key = tuple(v if isinstance(v, str) else int(v) for v in key)
        cells = rows.setdefault(key, [""] * len(axis_values))
        cells[col_of[int(rec[len(key_cols)])]] = format_us(float(rec[-1]))
    lines = [",".join([*spec.keys, *map(str, axis_values)])]
    for key in sorted(rows, key=lambda k: tuple((0, v) if isinstance(v, int) else (1, v)
                                                    for v in k)):
        lines.append(",".join([*map(str, key), *rows[key]]))
    return "\n".join(lines) + "\n"


def _gpu_spec(root: Path, system: str) -> dict[str, Any]:
    with (root / "systems" / f"{system}.yaml").open(encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    gpu = spec.get("gpu", {})
    keys = ("mem_bw", "mem_bw_empirical_scaling_factor", "mem_empirical_constant_latency",
            "mem_capacity", "bfloat16_tc_flops", "fp8_tc_flops", "sm_version")
    node = spec.get("node", {})
    return {**{k: gpu[k] for k in keys if k in gpu},
            "intra_node_bw": node.get("intra_node_bw"),
            "num_gpus_per_node": node.get("num_gpus_per_node")}


def _extract_gpu(root: Path, gpu: str, system: str, framework: str) -> dict[str, str]:
    """File name -> text of every table of one GPU, plus its meta.yaml."""
    import pandas as pd

    files: dict[str, str] = {}
    sources: dict[str, Any] = {}
    for name, (op, file_name, _dtype_col, key_cols, axis_col) in _SOURCES.items():
        version_dir = _newest_version(root / "systems" / "data" / system / op / framework,
                                      file_name)
        if version_dir is None:
            continue
        parquet = version_dir / file_name
        raw = pd.read_parquet(parquet)
        df, chosen = _pick_kernels(name, _prepare(name, raw))
        if df.empty:
            continue
        spec = TABLES[name]
        files[spec.file_name] = _wide_csv(spec, df, key_cols, axis_col)
        meta_path = version_dir / "collection_meta.yaml"
        collection = yaml.safe_load(meta_path.read_text(encoding="utf-8")) \
            if meta_path.is_file() else None
        sources[name] = {
            "file": str(parquet.relative_to(root.parent)),
            "sha256": _sha256(parquet),
            "framework_version": version_dir.name,
            "device": sorted(set(map(str, raw["device"])))[0] if "device" in raw else None,
            "rows_in_source": len(raw),
            "rows_kept": len(df),
            "kernel_source_shapes": chosen,
            "collection_meta": collection,
        }
    meta = {
        "format": "simserve-kernels/1",
        "package": AIC_PACKAGE,
        "package_version": AIC_VERSION,
        "license": importlib.metadata.metadata(AIC_PACKAGE).get("License-Expression"),
        "copyright": "NVIDIA CORPORATION & AFFILIATES (SPDX headers of the source files)",
        "gpu": gpu,
        "system": system,
        "framework": framework,
        "units": "latency in microseconds, 4 significant digits",
        "system_spec": _gpu_spec(root, system),
        "tables": sources,
    }
    files["meta.yaml"] = yaml.safe_dump(meta, sort_keys=True, width=100)
    return files


def extract_kernels(
    out_dir: str | Path | None = None, *, gpus: Sequence[str] | None = None,
    framework: str = "vllm",
) -> dict[str, list[Path]]:
    """Write the compact tables of `gpus` (catalog names; default all) under
    `out_dir/<framework>/<gpu>/` (default `calibration/kernels/`); returns the files per GPU.

    Each GPU's folder is written to a temporary sibling first and swapped in whole, so an
    interrupted run leaves the previous tables intact.
    """
    if framework != "vllm":
        raise InputError(f"only framework vllm is extracted, got {framework!r}",
                         field="--framework")
    root = _package_root()
    # NOTE: like `calibrate`'s profiles, relative to the working directory (a checkout's root:
    # the repository's calibration/kernels/), never into an installed package.
    out = Path(out_dir) if out_dir is not None else Path("calibration") / "kernels"
    chosen = list(gpus) if gpus else list(GPU_SYSTEMS)
    for gpu in chosen:
        if gpu not in GPU_SYSTEMS:
            raise InputError(f"unknown GPU {gpu!r}; kernel tables exist for "
                             f"{', '.join(GPU_SYSTEMS)}", field="--gpu")
    written: dict[str, list[Path]] = {}
    for gpu in chosen:
        files = _extract_gpu(root, gpu, GPU_SYSTEMS[gpu], framework)
        final = out / framework / gpu
        tmp = final.with_name(final.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for old in (final.iterdir() if final.is_dir() else ()):
            old.unlink()
        if final.is_dir():
            final.rmdir()
        tmp.rename(final)
        written[gpu] = sorted(final / name for name in files)
    return written
