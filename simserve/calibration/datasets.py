"""Loaders that turn measured latency files into step tables the fitter reads.

Every format becomes `StepData`: one (GPU, model, TP, engine) group of steps described by the
BatchShape aggregates the simulator prices (DESIGN §4) and a measured time in ms, or
`LinearData` for Vidur's per-layer linear-operator times. Formats:

- `splitwise`: splitwise-sim `perf_model.csv` (whole-prefill time of a batch of equal prompts and
  per-token decode time at a batch size; Llama-2-70B and BLOOM-176B on A100/H100);
- `distserve`: DistServe's fitted step-latency coefficients (`profiler-<gpu>.<engine>.json`, the
  engine from the file name: vllm or distserve), evaluated on a grid of that engine's operating
  range (their formula, not raw measurements);
- `steps`: the CSV that `calibration/profile_gpu.py` writes (one measured step per row);
- `vidur`: Vidur `mlp.csv` files or simserve's reduced extract `linear_ops.csv`.

Bad input is an `InputError` naming the file, the column and (for a value) the line.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simserve.catalog import Catalog, load_catalog
from simserve.config import EngineConfig
from simserve.costmodel.base import BatchShape
from simserve.costmodel.calibrated import Arch
from simserve.errors import InputError
from simserve.formatting import fmt_number
from simserve.resolve import kv_cache_bytes

__all__ = [
    "ALLREDUCE_COLUMNS",
    "FORMATS",
    "STEP_COLUMNS",
    "AllReduceData",
    "LinearData",
    "StepData",
    "detect_format",
    "distserve_engine",
    "kv_capacity_tokens",
    "load_allreduce",
    "load_distserve",
    "load_splitwise",
    "load_steps_csv",
    "load_vidur_linear",
    "regimes_of",
]

FORMATS: tuple[str, ...] = ("splitwise", "distserve", "steps", "vidur")
SHAPE_FIELDS: tuple[str, ...] = BatchShape._fields
# Columns of the profiler CSV: metadata, the BatchShape aggregates, the measured time.
STEP_COLUMNS: tuple[str, ...] = ("gpu", "model", "tp", "engine", *SHAPE_FIELDS, "time_ms")

# NOTE: splitwise-sim and DistServe name hardware and models their own way; these map them to
# catalog names. "h100-80gb-pcap" is not mapped: its prefill times are exactly 1.30 x the
# H100 ones and its decode times identical (checked row by row), i.e. a scaled copy, not an
# independent measurement.
SPLITWISE_GPUS = {"a100-80gb": "a100-80gb-sxm", "h100-80gb": "h100-80gb-sxm"}
SPLITWISE_MODELS = {"llama2-70b": "llama-2-70b", "bloom-176b": "bloom-176b"}
SPLITWISE_PCAP_NOTE = (
    "its prefill times are the H100 ones x 1.30 and its decode times identical, a scaled copy "
    "rather than an independent measurement"
)
DISTSERVE_MODELS = {"facebook/opt-13b": "opt-13b", "facebook/opt-66b": "opt-66b",
                    "facebook/opt-175b": "opt-175b"}


@dataclass(frozen=True, eq=False)
class StepData:
    """Measured steps of one (GPU, model, TP, engine): BatchShape columns and time in ms."""

    dataset: str
    source: str
    gpu: str
    model: str
    tp: int
    engine: str
    arch: Arch
    shapes: dict[str, np.ndarray]
    time_ms: np.ndarray
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return int(self.time_ms.size)

    @property
    def key(self) -> str:
        """A readable group name."""
        return f"{self.gpu}/{self.model}/tp{self.tp}"

    @property
    def regimes(self) -> np.ndarray:
        """'prefill', 'decode' or 'mixed' per row."""
        return regimes_of(self.shapes)

    def subset(self, mask: np.ndarray) -> StepData:
        """The rows where `mask` is true."""
        return StepData(
            self.dataset, self.source, self.gpu, self.model, self.tp, self.engine, self.arch,
            {k: v[mask] for k, v in self.shapes.items()}, self.time_ms[mask], self.notes,
        )


@dataclass(frozen=True, eq=False)
class LinearData:
    """Vidur per-layer linear-layer times (ms) of one (GPU, model) over num_tokens and TP."""

    dataset: str
    source: str
    gpu: str
    model: str
    arch: Arch  # num_layers = 1: one transformer layer, no LM head
    num_tokens: np.ndarray
    tp: np.ndarray
    time_ms: np.ndarray

    def __len__(self) -> int:
        return int(self.time_ms.size)

    def subset(self, mask: np.ndarray) -> LinearData:
        """The rows where `mask` is true."""
        return LinearData(self.dataset, self.source, self.gpu, self.model, self.arch,
                          self.num_tokens[mask], self.tp[mask], self.time_ms[mask])


def regimes_of(shapes: dict[str, np.ndarray]) -> np.ndarray:
    """Regime label per step from its prefill and decode token counts."""
    prefill = np.asarray(shapes["num_prefill_tokens"]) > 0
    decode = np.asarray(shapes["num_decode_tokens"]) > 0
    out = np.full(prefill.size, "decode", dtype=object)
    out[prefill & ~decode] = "prefill"
    out[prefill & decode] = "mixed"
    return out


# --------------------------------------------------------------------------- CSV helpers


def _read_csv(path: Path, required: Iterable[str]) -> tuple[dict[str, list[str]], list[int]]:
    """Columns of a CSV (by header name) and the 1-based line of each data row."""
    source = str(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            rows, lines = [], []
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    rows.append(row)
                    lines.append(reader.line_num)
    except FileNotFoundError:
        raise InputError("file not found", source=source) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read CSV ({exc})", source=source) from None
    if not header:
        raise InputError("empty file (expected a CSV header)", source=source)
    for name in required:
        if name not in header:
            raise InputError(f"missing column {name!r} (header: {','.join(header)})",
                             source=source, line=1)
    index = {name: i for i, name in enumerate(header)}
    columns: dict[str, list[str]] = {name: [] for name in header}
    for row, line in zip(rows, lines, strict=True):
        if len(row) < len(header):
            raise InputError(f"expected {len(header)} columns, got {len(row)}", source=source,
                             line=line)
        for name, i in index.items():
            columns[name].append(row[i].strip())
    if not rows:
        raise InputError("no data rows", source=source, line=1)
    return columns, lines


def _numbers(
    columns: dict[str, list[str]], name: str, lines: list[int], source: str, *,
    positive: bool = False, nonnegative: bool = False,
) -> np.ndarray:
    """A numeric column; a bad or non-positive value names its line and column."""
    out = np.empty(len(columns[name]), dtype=np.float64)
    for i, raw in enumerate(columns[name]):
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"column {name!r}: expected a number, got {raw!r}",
                             source=source, line=lines[i]) from None
        if not np.isfinite(value):
            raise InputError(f"column {name!r}: not a finite number: {raw!r}", source=source,
                             line=lines[i])
        if positive and value <= 0:
            raise InputError(f"column {name!r}: must be > 0, got {raw}", source=source,
                             line=lines[i])
        if nonnegative and value < 0:
            raise InputError(f"column {name!r}: must be >= 0, got {raw}", source=source,
                             line=lines[i])
        out[i] = value
    return out


def _catalog_arch(catalog: Catalog, model: str, source: str) -> Arch:
    try:
        return Arch.from_model(catalog.model(model))
    except InputError as exc:
        raise InputError(f"{exc.message} (add it with --catalog)", source=source) from None


def _median_groups(keys: list[tuple], values: np.ndarray) -> tuple[list[tuple], np.ndarray]:
    """Distinct keys (first-seen order) and the median of their values (replicates)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for key, value in zip(keys, values, strict=True):
        groups[key].append(float(value))
    distinct = list(groups)
    return distinct, np.array([np.median(groups[k]) for k in distinct])


def _shapes(rows: list[dict[str, float]]) -> dict[str, np.ndarray]:
    return {f: np.array([r.get(f, 0) for r in rows], dtype=np.float64) for f in SHAPE_FIELDS}


def prefill_shape(batch: int, prompt: int, cached: int = 0) -> dict[str, float]:
    """A prefill step of `batch` chunks of `prompt` new tokens over `cached` cached ones."""
    return {
        "num_prefill_tokens": batch * prompt,
        "num_prefill_seqs": batch,
        "prefill_attn_pairs": batch * prompt * (cached + prompt / 2),
        "prefill_kv_tokens": batch * (cached + prompt),
    }


def decode_shape(batch: int, context: float) -> dict[str, float]:
    """A decode step of `batch` sequences, each reading `context` KV tokens (incl. the new one)."""
    return {
        "num_decode_seqs": batch,
        "num_decode_tokens": batch,
        "decode_kv_tokens": batch * context,
    }


# --------------------------------------------------------------------------- splitwise

SPLITWISE_COLUMNS = ("model", "hardware", "tensor_parallel", "prompt_size", "batch_size",
                     "token_size", "prompt_time", "token_time")


def load_splitwise(path: str | Path, catalog: Catalog | None = None) -> list[StepData]:
    """Step groups from splitwise-sim's perf_model.csv (replicates reduced to medians).

    A prefill row is one step of `batch_size` prompts of `prompt_size` tokens; a decode row is
    the mean step of `batch_size` sequences generating `token_size` tokens after the prompt, so
    decode step j reads prompt + j KV tokens per sequence, prompt + token_size / 2 on average.
    """
    path = Path(path)
    source = str(path)
    catalog = catalog or load_catalog()
    cols, lines = _read_csv(path, SPLITWISE_COLUMNS)
    tp = _numbers(cols, "tensor_parallel", lines, source, positive=True)
    p = _numbers(cols, "prompt_size", lines, source, positive=True)
    b = _numbers(cols, "batch_size", lines, source, positive=True)
    t = _numbers(cols, "token_size", lines, source, positive=True)
    prompt_ms = _numbers(cols, "prompt_time", lines, source, positive=True)
    token_ms = _numbers(cols, "token_time", lines, source, positive=True)
    groups: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    skipped: set[str] = set()
    for i, (hw, model) in enumerate(zip(cols["hardware"], cols["model"], strict=True)):
        if hw not in SPLITWISE_GPUS or model not in SPLITWISE_MODELS:
            skipped.add(f"{model}/{hw}")
            continue
        groups[(SPLITWISE_GPUS[hw], SPLITWISE_MODELS[model], int(tp[i]))].append(i)
    dataset_notes = [
        f"skipped {s}: " + (SPLITWISE_PCAP_NOTE if s.endswith("-pcap") else "not mapped to "
                            "the catalog")
        for s in sorted(skipped)
    ]
    out = []
    for (gpu, model, tp_), idx in groups.items():
        arch = _catalog_arch(catalog, model, source)
        ix = np.array(idx)
        notes = list(dataset_notes)
        # Prefill: one row per (prompt, batch); decode: one per (prompt, batch, tokens).
        pre_keys, pre_ms = _median_groups([(p[i], b[i]) for i in ix], prompt_ms[ix])
        dec_keys, dec_ms = _median_groups([(p[i], b[i], t[i]) for i in ix], token_ms[ix])
        bad_batches = _inconsistent_batches(pre_keys, pre_ms)
        if bad_batches:
            notes.append(
                f"excluded batch sizes {sorted(int(x) for x in bad_batches)} at tp={tp_}: "
                "prefill time per "
                "token drops more than 2x from the next smaller batch (physically impossible; "
                "the KV cache cannot hold the batch, so the run did not batch it)"
            )
        rows, times = [], []
        for (pp, bb), ms in zip(pre_keys, pre_ms, strict=True):
            if bb not in bad_batches:
                rows.append(prefill_shape(int(bb), int(pp)))
                times.append(ms)
        for (pp, bb, tt), ms in zip(dec_keys, dec_ms, strict=True):
            if bb not in bad_batches:
                rows.append(decode_shape(int(bb), pp + tt / 2))
                times.append(ms)
        out.append(StepData("splitwise", source, gpu, model, tp_, "splitwise-sim",
                            arch, _shapes(rows), np.array(times), tuple(notes)))
    return out


def _inconsistent_batches(keys: list[tuple], ms: np.ndarray) -> set[float]:
    """Batch sizes whose prefill ms per token is under half that of the next smaller batch."""
    by_prompt: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for (p, b), t in zip(keys, ms, strict=True):
        by_prompt[p].append((b, t / (p * b)))
    bad: set[float] = set()
    for series in by_prompt.values():
        series.sort()
        for (_, prev), (b, cur) in itertools.pairwise(series):
            if cur < 0.5 * prev:
                bad.add(b)
    return bad


# --------------------------------------------------------------------------- DistServe

# NOTE: the operating range of vLLM v0 serving OPT-13B on one A100-80GB: prefill batches up to
# max_num_batched_tokens = 2048 tokens, decode batches up to max_num_seqs = 256 with contexts up
# to the 2048-token limit and at most ~60k KV tokens (the KV capacity at
# gpu_memory_utilization 0.9).
DISTSERVE_PREFILL_LENS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048)
DISTSERVE_PREFILL_BATCHES = (1, 2, 4, 8, 16, 32, 64)
DISTSERVE_DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256)
DISTSERVE_DECODE_CONTEXTS = (32, 64, 128, 256, 512, 768, 1024, 1536, 2048)
DISTSERVE_MAX_BATCHED_TOKENS = 2048
DISTSERVE_MAX_KV_TOKENS = 60_000
# DistServe profiled both engines on A100-80GB (`profiler-a100-80g.*.json`).
DISTSERVE_GPU = "a100-80gb-sxm"

# The engine a DistServe profiler file describes is named in its file name,
# `profiler-<gpu>.<engine>.json` (DistServe ships `profiler-a100-80g.vllm.json` and
# `profiler-a100-80g.distserve.json`); a name without an engine part (e.g. DistServe's older
# `profiler-a100-80g.json`) is read as vLLM, the engine this loader assumed before.
DISTSERVE_DEFAULT_ENGINE = "vllm"
_ENGINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class DistServeGrid:
    """The step shapes at which DistServe's formula is evaluated: one engine's operating range.

    Prefill steps are `batch` prompts of `len` tokens with batch x len <= max_batched_tokens;
    decode steps are `batch` sequences of `context` KV tokens with batch x context <=
    max_kv_tokens (plus, per batch, the longest context that fills max_kv_tokens).
    """

    prefill_lens: tuple[int, ...]
    prefill_batches: tuple[int, ...]
    max_batched_tokens: int
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    max_kv_tokens: int
    description: str
    # The engine's KV memory share: no step can hold more tokens than the KV cache of its
    # (model, TP) at this setting, so the grid stops there too (`kv_capacity_tokens`).
    gpu_memory_utilization: float


VLLM_GRID = DistServeGrid(
    DISTSERVE_PREFILL_LENS, DISTSERVE_PREFILL_BATCHES, DISTSERVE_MAX_BATCHED_TOKENS,
    DISTSERVE_DECODE_BATCHES, DISTSERVE_DECODE_CONTEXTS, DISTSERVE_MAX_KV_TOKENS,
    "the vLLM v0 operating grid (prefill batches up to 2048 tokens, decode batches up to 256, "
    "contexts up to 2048, <= 60k KV tokens)",
    0.9,  # vLLM v0's default
)

# NOTE: DistServe's own engine schedules prefill (context) batches up to a token budget, not
# vLLM's 2048: its serving launcher (LLMServe/DistServe
# distserve/evaluation/2-benchmark-serving/2-start-api-server.py, backend "distserve") passes
# --context-max-batch-size 128 --context-max-tokens-per-batch 32768, and the profiling runs its
# coefficients were fitted on (evaluation/0-test-single-forward-performance/main.py,
# "distserve-profiling") cover batches of up to 192 prompts of 4-2020 tokens with
# batch x tokens <= 49152 (TP1), 98304 (TP2), 250000 (TP4), so the formula is fitted, not
# extrapolated, up to 32768 prefill tokens per step at every TP here. The per-request limit is the
# same 2048 tokens (--max-num-blocks-per-req 128 x --block-size 16). The decode side keeps the
# vLLM grid: DistServe's decode limits (--decoding-max-batch-size 1024,
# --decoding-max-tokens-per-batch 65536, KV capacity 66144 tokens at TP1 in simdistserve's
# estimators/profile_data/max_num_tokens.csv) lie beyond the profiled decode batches (<= 192), so a
# wider decode grid would extrapolate DistServe's formula rather than follow it.
DISTSERVE_ENGINE_GRID = DistServeGrid(
    DISTSERVE_PREFILL_LENS, (*DISTSERVE_PREFILL_BATCHES, 128), 32_768,
    DISTSERVE_DECODE_BATCHES, DISTSERVE_DECODE_CONTEXTS, DISTSERVE_MAX_KV_TOKENS,
    "DistServe's own engine's operating grid (prefill batches of up to 128 prompts and 32768 "
    "tokens, decode batches up to 256, contexts up to 2048, <= 60k KV tokens)",
    0.92,  # the launcher's --gpu-memory-utilization (scenarios/validation/opt13b-a100-distserve)
)
DISTSERVE_GRIDS: dict[str, DistServeGrid] = {"vllm": VLLM_GRID, "distserve": DISTSERVE_ENGINE_GRID}


def _engine_part(path: str | Path) -> str | None:
    """The `<engine>` of `profiler-<gpu>.<engine>[.<anything>].json`, None when there is none."""
    parts = Path(path).name.split(".")
    if parts[-1].lower() == "json":
        parts = parts[:-1]
    return parts[1] if len(parts) >= 2 and parts[1] else None


def distserve_engine(path: str | Path) -> str:
    """The engine of a DistServe profiler file from its name: `profiler-<gpu>.<engine>.json` ->
    `<engine>` (the first dot-separated part after the GPU, so `profiler-a100-80g.vllm.1.json` is
    vllm too); a name without an engine part -> DISTSERVE_DEFAULT_ENGINE ("vllm")."""
    engine = _engine_part(path)
    if engine is None:
        return DISTSERVE_DEFAULT_ENGINE
    if not _ENGINE_NAME.fullmatch(engine):
        raise InputError(f"engine {engine!r} in the file name is not a plain name (letters, "
                         "digits, '-', '_'); name the file profiler-<gpu>.<engine>.json",
                         source=str(path))
    return engine.lower()


def kv_capacity_tokens(catalog: Catalog, model: str, gpu: str, tp: int,
                       gpu_memory_utilization: float) -> int:
    """Tokens the KV cache of `model` on `tp` GPUs holds, with the engine's default
    activation reserve (the arithmetic of `simserve.resolve.kv_cache_blocks`)."""
    spec = catalog.model(model)
    free = kv_cache_bytes(catalog.gpu(gpu), spec.weight_bytes, tp, gpu_memory_utilization,
                          EngineConfig().activation_reserve_gib)
    return int(free // spec.kv_bytes_per_token)


def distserve_formula_ms(params: dict[str, Any], shape: dict[str, float],
                         lens: list[float]) -> float:
    """DistServe's step latency (ms): prefill a + b sum(q) + c sum(q^2); decode
    a + b sum(context + 1) + c batch, with (a, b, c) switching at a batch-size threshold.

    NOTE: as in DistServe's simdistserve/estimators/time_estimator.py (read, not copied): decode
    contexts are `current_context_len + 1`, the KV tokens read including the new one.
    """
    if shape.get("num_prefill_tokens", 0):
        a, b, c = params["prefill"]
        return a + b * sum(lens) + c * sum(q * q for q in lens)
    batch = shape["num_decode_seqs"]
    key = "decoding_smallbs" if batch < params["decoding_large_small_bs_threshold"] \
        else "decoding_largebs"
    a, b, c = params[key]
    return a + b * shape["decode_kv_tokens"] + c * batch


def load_distserve(path: str | Path, catalog: Catalog | None = None) -> list[StepData]:
    """Step groups from DistServe's profiler JSON, evaluated on its engine's operating grid.

    The engine comes from the file name (`distserve_engine`): `.vllm.json` is DistServe's fit of
    vLLM, `.distserve.json` of DistServe's own engine; another engine name is evaluated on the
    vLLM grid (no other operating range is known) and says so in its notes.
    """
    path = Path(path)
    source = str(path)
    catalog = catalog or load_catalog()
    engine = distserve_engine(path)
    grid = DISTSERVE_GRIDS.get(engine, VLLM_GRID)
    notes = ["DistServe's fitted formula evaluated on a grid (no raw measurements)"]
    if _engine_part(path) is None:
        notes.append("no engine in the file name (profiler-<gpu>.<engine>.json): assumed "
                     f"{DISTSERVE_DEFAULT_ENGINE}")
    if engine != "vllm":
        unknown = "" if engine in DISTSERVE_GRIDS else " (no operating range known for it)"
        notes.append(f"engine {engine!r} from the file name{unknown}: evaluated on "
                     f"{grid.description}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("file not found", source=source) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"not a DistServe profiler JSON ({exc})", source=source) from None
    if not isinstance(data, dict):
        raise InputError("expected a mapping of model -> tp -> coefficients", source=source)
    out = []
    for hf_name, per_tp in data.items():
        model = DISTSERVE_MODELS.get(hf_name, hf_name)
        if model.casefold() not in catalog.models:
            continue  # e.g. OPT-66B: not in the catalog, nothing to price it with
        arch = _catalog_arch(catalog, model, source)
        for tp_key, params in per_tp.items():
            for key in ("prefill", "decoding_smallbs", "decoding_largebs"):
                if key not in params or len(params[key]) != 3:
                    raise InputError(f"{hf_name}.{tp_key}: missing column {key!r} (3 numbers)",
                                     source=source)
            if "decoding_large_small_bs_threshold" not in params:
                raise InputError(
                    f"{hf_name}.{tp_key}: missing 'decoding_large_small_bs_threshold'",
                    source=source)
            tp = int(tp_key)
            capacity = kv_capacity_tokens(catalog, model, DISTSERVE_GPU, tp,
                                          grid.gpu_memory_utilization)
            max_prefill = min(grid.max_batched_tokens, capacity)
            max_kv = min(grid.max_kv_tokens, capacity)
            group_notes = list(notes)
            if capacity < grid.max_kv_tokens:
                # NOTE: DistServe's formula is a fit; beyond what the KV cache of this (model,
                # TP) holds it describes steps the engine never ran (e.g. OPT-66B at TP2 keeps
                # ~10 GB per GPU for KV), so the grid stops at the capacity.
                group_notes.append(
                    f"{model} tp{tp}: grid limited to the {fmt_number(capacity)}-token KV "
                    f"capacity of {DISTSERVE_GPU} at gpu_memory_utilization "
                    f"{grid.gpu_memory_utilization}")
            rows, times = [], []
            for q in grid.prefill_lens:
                for b in grid.prefill_batches:
                    if b * q <= max_prefill:
                        shape = prefill_shape(b, q)
                        rows.append(shape)
                        times.append(distserve_formula_ms(params, shape, [q] * b))
            for b in grid.decode_batches:
                # The grid's contexts plus the longest that fills the KV capacity at this batch.
                fill = min(grid.decode_contexts[-1], max_kv // b)
                for ctx in sorted({*grid.decode_contexts, fill}):
                    if ctx > 0 and b * ctx <= max_kv:
                        shape = decode_shape(b, ctx)
                        rows.append(shape)
                        times.append(distserve_formula_ms(params, shape, []))
            times_arr = np.array(times)
            if np.any(times_arr <= 0):
                raise InputError(f"{hf_name}.{tp_key}: the coefficients give non-positive "
                                 "step times on the grid", source=source)
            out.append(StepData(
                "distserve", source, DISTSERVE_GPU, model, tp, engine,
                arch, _shapes(rows), times_arr, tuple(group_notes),
            ))
    if not out:
        raise InputError("no model of the file is in the catalog", source=source)
    return out


# --------------------------------------------------------------------------- profiler CSV


def load_steps_csv(path: str | Path, catalog: Catalog | None = None) -> list[StepData]:
    """Step groups from the profiler's CSV (`STEP_COLUMNS`; replicates kept as rows)."""
    path = Path(path)
    source = str(path)
    catalog = catalog or load_catalog()
    cols, lines = _read_csv(path, STEP_COLUMNS)
    time_ms = _numbers(cols, "time_ms", lines, source, positive=True)
    tp = _numbers(cols, "tp", lines, source, positive=True)
    shape_cols = {f: _numbers(cols, f, lines, source, nonnegative=True) for f in SHAPE_FIELDS}
    empty = (shape_cols["num_prefill_tokens"] + shape_cols["num_decode_tokens"]) == 0
    if empty.any():
        line = lines[int(np.argmax(empty))]
        raise InputError("column 'num_prefill_tokens': a step needs prefill or decode tokens",
                         source=source, line=line)
    groups: dict[tuple[str, str, int, str], list[int]] = defaultdict(list)
    for i in range(len(time_ms)):
        groups[(cols["gpu"][i], cols["model"][i], int(tp[i]), cols["engine"][i])].append(i)
    out = []
    for (gpu, model, tp_, engine), idx in groups.items():
        try:
            catalog.gpu(gpu)
        except InputError as exc:
            raise InputError(f"column 'gpu': {exc.message}", source=source) from None
        ix = np.array(idx)
        out.append(StepData("steps", source, catalog.gpu(gpu).name, catalog.model(model).name,
                            tp_, engine, _catalog_arch(catalog, model, source),
                            {k: v[ix] for k, v in shape_cols.items()}, time_ms[ix]))
    return out


# --------------------------------------------------------------------------- Vidur

VIDUR_ARCH_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size",
                      "use_gated_mlp", "num_tokens")
LINEAR_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
VIDUR_GPU_DIRS = {"a100": "a100-80gb-sxm", "h100": "h100-80gb-sxm"}


def _vidur_arch(model: str, n_head: int, n_kv: int, hidden: int, ffn: int, gated: bool) -> Arch:
    head_dim = hidden // n_head
    attn = 2 * hidden * hidden + 2 * hidden * n_kv * head_dim
    mlp = (3 if gated else 2) * hidden * ffn
    return Arch(model, 1, hidden, n_head, n_kv, head_dim, attn + mlp, 0, 2)


def load_vidur_linear(path: str | Path, gpu: str | None = None) -> list[LinearData]:
    """Per-layer linear times from simserve's extract (`linear_ops.csv`) or a Vidur `mlp.csv`
    (its GPU from `gpu` or the path's a100/h100 folder, its model from the folder name)."""
    path = Path(path)
    source = str(path)
    reduced = path.name != "mlp.csv"
    op_cols = [f"{op}_ms" for op in LINEAR_OPS] if reduced else [
        f"time_stats.{op}.median" for op in LINEAR_OPS]
    tp_col = "tp" if reduced else "num_tensor_parallel_workers"
    required = [*VIDUR_ARCH_COLUMNS, tp_col, *op_cols] + (["gpu", "model"] if reduced else [])
    cols, lines = _read_csv(path, required)
    n = len(lines)
    if reduced:
        gpus, models = cols["gpu"], cols["model"]
    else:
        folder = next((VIDUR_GPU_DIRS[p] for p in path.parts if p in VIDUR_GPU_DIRS), None)
        gpu_name = gpu or folder
        if gpu_name is None:
            raise InputError("cannot tell the GPU of a Vidur mlp.csv outside an a100/h100 "
                             "folder; give --gpu", source=source)
        gpus, models = [gpu_name] * n, [path.parent.name] * n
    time_ms = sum(_numbers(cols, c, lines, source, positive=True) for c in op_cols)
    tokens = _numbers(cols, "num_tokens", lines, source, positive=True)
    tps = _numbers(cols, tp_col, lines, source, positive=True)
    ints = {c: _numbers(cols, c, lines, source, positive=True) for c in
            ("n_head", "n_kv_head", "n_embd", "n_expanded_embd")}
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i in range(n):
        groups[(gpus[i], models[i])].append(i)
    out = []
    for (g, m), idx in groups.items():
        i0 = idx[0]
        gated = cols["use_gated_mlp"][i0].strip().lower() in ("true", "1")
        arch = _vidur_arch(m, int(ints["n_head"][i0]), int(ints["n_kv_head"][i0]),
                           int(ints["n_embd"][i0]), int(ints["n_expanded_embd"][i0]), gated)
        ix = np.array(idx)
        out.append(LinearData("vidur", source, g, m, arch, tokens[ix], tps[ix].astype(int),
                              np.asarray(time_ms)[ix]))
    return out


# --------------------------------------------------------------------------- collectives

ALLREDUCE_COLUMNS = ("gpu", "num_workers", "size_bytes", "time_ms")


@dataclass(frozen=True, eq=False)
class AllReduceData:
    """Measured all-reduce times (ms) of one GPU type over message size and number of GPUs."""

    source: str
    gpu: str
    num_workers: np.ndarray
    size_bytes: np.ndarray
    time_ms: np.ndarray

    def __len__(self) -> int:
        return int(self.time_ms.size)

    def interpolate_ms(self, num_workers: int, size_bytes: float) -> float:
        """The measured time at `size_bytes` on `num_workers` GPUs, interpolated log-log
        (a message outside the measured sizes takes the time of the nearest one)."""
        rows = self.num_workers == num_workers
        if not rows.any():
            raise InputError(f"no all-reduce measured on {num_workers} GPUs of {self.gpu}",
                             source=self.source)
        order = np.argsort(self.size_bytes[rows])
        x = np.log(self.size_bytes[rows][order])
        y = np.log(self.time_ms[rows][order])
        return float(np.exp(np.interp(np.log(size_bytes), x, y)))


def load_allreduce(path: str | Path) -> list[AllReduceData]:
    """All-reduce times per GPU type from simserve's Vidur extract (`all_reduce.csv`)."""
    path = Path(path)
    source = str(path)
    cols, lines = _read_csv(path, ALLREDUCE_COLUMNS)
    workers = _numbers(cols, "num_workers", lines, source, positive=True)
    sizes = _numbers(cols, "size_bytes", lines, source, positive=True)
    times = _numbers(cols, "time_ms", lines, source, positive=True)
    gpus = np.array(cols["gpu"], dtype=object)
    return [AllReduceData(source, g, workers[gpus == g].astype(int), sizes[gpus == g],
                          times[gpus == g]) for g in sorted(set(cols["gpu"]))]


# --------------------------------------------------------------------------- detection


def detect_format(path: str | Path) -> str:
    """The format of a measured-data file, from its extension and header."""
    path = Path(path)
    if path.suffix == ".json":
        return "distserve"
    try:
        with path.open(encoding="utf-8-sig") as fh:
            header = {h.strip() for h in fh.readline().split(",")}
    except FileNotFoundError:
        raise InputError("file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ({exc})", source=str(path)) from None
    if {"prompt_time", "token_time"} <= header:
        return "splitwise"
    if "num_tokens" in header and ("n_embd" in header):
        return "vidur"
    if "time_ms" in header:
        return "steps"
    raise InputError(
        "unrecognised measured-data file: expected a splitwise perf_model.csv "
        "(prompt_time, token_time), a Vidur mlp.csv / linear_ops.csv (num_tokens, n_embd), a "
        "DistServe profiler .json, or a profiler steps CSV (time_ms)",
        source=str(path), line=1,
    )
