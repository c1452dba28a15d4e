"""Validation of the kernel cost model (REPORT.md §7): every number computed from shipped data.

- op level: each kernel table's held-back 20% of measured points predicted by the
  interpolation from the other 80% (inside the measured range: interpolation; past it: the
  power-law extension), where the error sits (steps between kept neighbours), and the floors
  the data set: GEMM rows 1..16 do the same work yet differ, GEMMs that get faster with more
  rows, decode attention that steps where its K and V outgrow the L2 cache; what re-pricing the
  calls the benchmark served from L2 changes (tables and decode steps, measured vs re-priced);
- the step shape: decode attention priced at the batch's mean context vs each sequence at its
  own, on ShareGPT-like batches;
- step level: the kernel model's GPU time against the step data the project has (Vidur's
  linear layers, splitwise's and DistServe's steps) where the GPU is covered, beside the
  roofline's defaults and the shipped profile fitted to that same data;
- end to end: the real vLLM runs replayed (V0 OPT-13B A100, V1 RTX PRO 6000) with the fitted
  engine loop, beside the roofline and the best existing profile, and leave-one-run-out of the
  loop terms;
- aiconfigurator's own static estimate (same kernel data) for fixed-concurrency batches.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from simserve.calibration.datasets import StepData, load_distserve, load_splitwise
from simserve.calibration.engine_loop_fit import (
    LoopFit,
    LoopRun,
    fit_loop,
    loop_runs,
    loro_pool,
    replay_run,
)
from simserve.calibration.fit import error_stats
from simserve.calibration.paths import PROFILES_DIR, SHIPPED_DATA
from simserve.calibration.replay import ReplayResult, replay_trace
from simserve.calibration.served_v1 import occupancy_series
from simserve.catalog import Catalog, GpuSpec, ModelSpec, load_catalog
from simserve.config import CostModelConfig, EngineConfig
from simserve.costmodel.base import BatchShape
from simserve.costmodel.calibrated import (
    COEFFICIENT_DEFAULTS,
    load_profile,
    predict_ms,
    step_terms,
)
from simserve.costmodel.kernel_ops import KernelOps
from simserve.costmodel.kernel_tables import (
    TABLES,
    TableSpec,
    kernel_gpus,
    load_kernel_table,
    load_measured_table,
)
from simserve.costmodel.kernels import KernelCostModel, KernelSetup
from simserve.costmodel.l2_residency import L2Repricing
from simserve.costmodel.roofline import RooflineCostModel
from simserve.costmodel.select import kernel_cost_model

__all__ = [
    "AicRow",
    "DeriveRow",
    "E2ERow",
    "GemmFloor",
    "KernelReport",
    "L2Row",
    "L2StepRow",
    "OpHoldout",
    "StepComparison",
    "run_kernel_validation",
]

OP_TARGET_PCT = 3.0
HOLDOUT = 0.2
E2E_TARGET_PCT = 10.0


@dataclass(frozen=True)
class OpHoldout:
    """Held-back errors (%) of one table of one GPU."""

    gpu: str
    table: str
    n_inside: int
    mape_inside: float
    median_inside: float
    n_beyond: int
    mape_beyond: float
    # The same split read the previous way (PREVIOUS_FORMS), for the tables whose
    # interpolation changed; nan for the others.
    mape_inside_before: float
    # Interpolated points whose two kept neighbours differ by STEP_RATIO or more (the kernel
    # changed tiling, split or cache regime in between): their share of the points and of
    # the summed error.
    step_points_pct: float
    step_error_pct: float


STEP_RATIO = 1.5
# How the tables whose interpolation changed were read before (GEMMs log-log without row
# tiles; decode attention as a monotone cubic in log-log; all-reduces log-log), scored on the
# same split beside it.
PREVIOUS_FORMS: dict[str, dict[str, bool]] = {
    "gemm": {"smooth": False},
    "generation_attention": {"smooth": True},
    "allreduce": {"smooth": False},
}


def _holdout_errors(gpu: str, table: str, spec: TableSpec, seed: int, measured: bool = False,
                    unchanged_only: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Errors (%) of the interpolated and the extrapolated held-back points, and the ratio of
    each interpolated point's kept neighbours; of the table as the cost model reads it, or with
    `measured` as measured (no L2 re-pricing). With `unchanged_only`, the interpolated points
    the L2 re-pricing left as measured only (the same split)."""
    rng = np.random.default_rng(seed)
    inside, beyond, ratio = [], [], []
    load = load_measured_table if measured else load_kernel_table
    curves = load(gpu, table).curves
    as_measured = load_measured_table(gpu, table).curves
    for key in sorted(curves, key=str):
        xs, ys = (np.asarray(v) for v in curves[key])
        held = rng.random(xs.size) < HOLDOUT
        if held.all() or not held.any():
            continue
        curve = spec.curve(xs[~held], ys[~held])
        err = np.abs(curve(xs[held]) / ys[held] - 1.0) * 100.0
        kept, kept_y = xs[~held], ys[~held]
        within = (xs[held] > kept.min()) & (xs[held] < kept.max())
        if unchanged_only:
            within &= ys[held] == np.asarray(as_measured[key][1])[held]
        above = np.searchsorted(kept, xs[held][within])
        inside += list(err[within])
        beyond += list(err[~within])
        ratio += list(kept_y[above] / kept_y[above - 1])
    return np.asarray(inside), np.asarray(beyond), np.asarray(ratio)


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else float("nan")


def op_holdout(gpu: str, table: str, seed: int = 0, measured: bool = False) -> OpHoldout:
    """Hold back 20% of each curve's measured points, predict them from the rest (of the table
    as the cost model reads it, or with `measured` as measured)."""
    spec = TABLES[table]
    a, b, ratio = _holdout_errors(gpu, table, spec, seed, measured)
    before = float("nan")
    if table in PREVIOUS_FORMS:
        previous = replace(spec, linear=False, tile=1, **PREVIOUS_FORMS[table])
        before = _mean(_holdout_errors(gpu, table, previous, seed, measured)[0])
    step = ratio >= STEP_RATIO
    return OpHoldout(gpu, table, a.size, _mean(a), float(np.median(a)) if a.size else float("nan"),
                     b.size, _mean(b), before, 100.0 * _mean(step.astype(float)),
                     100.0 * float(a[step].sum() / a.sum()) if a.size else float("nan"))


@dataclass(frozen=True)
class GemmFloor:
    """What the GEMM table's own measurements allow, per GPU (%)."""

    # Each point of m = 1..16 (one row tile: the same work) predicted by the geometric mean of
    # the other 15 of its curve: the error no interpolation can beat where the truth is flat.
    same_work_mape: float
    # Successive measured m (> 16) where the larger m runs more than 10% FASTER: kernel
    # selection or noise that no monotone curve can follow.
    drops_pct: float


def gemm_floor(gpu: str) -> GemmFloor:
    """The GEMM table's noise floor and its share of non-monotone steps."""
    errs: list[float] = []
    drops, pairs = 0, 0
    for xs, ys in load_kernel_table(gpu, "gemm").curves.values():
        x, log_y = np.asarray(xs), np.log(np.asarray(ys))
        flat = log_y[x <= 16]
        if flat.size >= 3:
            others = (flat.sum() - flat) / (flat.size - 1)
            errs += list(np.abs(np.exp(others - flat) - 1.0))
        step = np.diff(log_y[x > 16])
        drops += int((step < np.log(0.9)).sum())
        pairs += step.size
    return GemmFloor(100.0 * float(np.mean(errs)) if errs else float("nan"),
                     100.0 * drops / pairs if pairs else float("nan"))


def decode_cache_steps(gpu: str, measured: bool = True) -> tuple[int, float, float]:
    """Steps of 3x or more in decode attention between a context and its double: how many,
    and the median bytes of K and V (MB) the batch reads just before and after them. Where
    that is the same size every time, the step is the L2 cache filling, not a kernel. Of the
    table as measured, or (`measured` False) as the cost model reads it."""
    before, after = [], []
    load = load_measured_table if measured else load_kernel_table
    for (kv_dtype, head_dim, _h, kv_heads, batch), (xs, ys) in load(
            gpu, "generation_attention").curves.items():
        per_token = batch * kv_heads * head_dim * 2 * (1 if kv_dtype == "fp8" else 2) / 1e6
        for i in range(len(xs) - 1):
            if xs[i + 1] == 2 * xs[i] and ys[i + 1] >= 3.0 * ys[i]:
                before.append(xs[i] * per_token)
                after.append(xs[i + 1] * per_token)
    if not before:
        return 0, float("nan"), float("nan")
    return len(before), float(np.median(before)), float(np.median(after))


@dataclass(frozen=True)
class L2Row:
    """One table of one GPU: what re-pricing the calls the benchmark served from L2 changed,
    and its held-back interpolation error (%) as measured and as re-priced."""

    gpu: str
    repricing: L2Repricing
    mape_measured: float
    mape_priced: float
    # The re-priced table's error on the held-back points it left as measured: the re-priced
    # points follow a floor-plus-read line, which any interpolation predicts well.
    mape_unchanged: float


def l2_rows(seed: int = 0) -> list[L2Row]:
    """Every re-priced table of every GPU (`simserve.costmodel.l2_residency`)."""
    rows = []
    for gpu in kernel_gpus():
        for table, spec in TABLES.items():
            repricing = load_kernel_table(gpu, table).l2
            if repricing is None:
                continue
            rows.append(L2Row(
                gpu, repricing, op_holdout(gpu, table, seed, measured=True).mape_inside,
                op_holdout(gpu, table, seed).mape_inside,
                _mean(_holdout_errors(gpu, table, spec, seed, unchanged_only=True)[0])))
    return rows


def prefill_bandwidth_fraction(gpu: str) -> float:
    """The largest (Q, K, V and output bytes) / measured time of a prefill attention call whose
    operands fit in L2, as a fraction of the peak device-memory bandwidth."""
    spec = load_catalog().gpu(gpu)
    if spec.l2_bytes is None:
        return float("nan")
    peak_bytes_per_us = spec.mem_bandwidth_gbps * 1e3
    worst = 0.0
    for (kv_dtype, d, h, h_kv, b), (xs, ys) in load_measured_table(
            gpu, "context_attention").curves.items():
        kv_element = 1 if kv_dtype == "fp8" else 2
        for s, us in zip(xs, ys, strict=True):
            # bf16 Q and output, K and V in the cache's dtype.
            num_bytes = b * s * d * (2 * h * 2 + 2 * h_kv * kv_element)
            if num_bytes <= spec.l2_bytes:
                worst = max(worst, num_bytes / (us * peak_bytes_per_us))
    return worst


@dataclass(frozen=True)
class L2StepRow:
    """A plain decode step's GPU time (ms) priced from the tables as measured and re-priced,
    and the least time its reads from device memory take at peak bandwidth."""

    gpu: str
    model: str
    tp: int
    batch: int
    context: int
    measured_ms: float
    priced_ms: float
    floor_ms: float


def decode_read_floor_ms(gpu: GpuSpec, model: ModelSpec, tp: int, batch: int,
                         context: int) -> float:
    """What one GPU of a decode step must read from device memory, over its peak bandwidth:
    its share of the weights every token multiplies (a MoE layer: at least top-k experts; the
    embedding: only the gathered rows, unless tied to the LM head) and of the K and V."""
    high_bytes = max(model.dtype_bytes, 2)
    weights = model.weight_bytes
    if not model.tied_embeddings:
        weights -= model.embedding_params * high_bytes
    if model.is_moe:
        idle = model.num_experts - model.num_experts_per_tok
        weights -= model.num_layers * idle * model.expert_params * model.dtype_bytes
    kv = batch * context * model.kv_bytes_per_token_at(tp)
    return (weights + kv) / tp / (gpu.mem_bandwidth_gbps * 1e9) * 1e3


# NOTE: models served on these GPUs in the shipped scenarios and validation runs, at batches
# and contexts whose K and V per layer stay within the L2 cache of the GDDR GPUs.
L2_STEP_CASES = (("l40s", "llama-3.1-8b", 1), ("rtx-pro-6000", "llama-3.1-8b", 1),
                 ("rtx-pro-6000", "qwen3-32b", 2), ("l40s", "qwen3-30b-a3b", 1),
                 ("h100-80gb-sxm", "llama-3.1-8b", 1), ("b200", "llama-3.1-8b", 1))
L2_STEP_SHAPES = ((1, 2048), (8, 2048), (32, 512), (128, 512))


def l2_step_rows(catalog: Catalog) -> list[L2StepRow]:
    """Decode steps of `L2_STEP_CASES` x `L2_STEP_SHAPES` before and after the L2 re-pricing."""
    rows = []
    for gpu, model, tp in L2_STEP_CASES:
        models = [KernelCostModel(catalog.gpu(gpu), catalog.model(model), tp, KernelSetup(),
                                  ops=KernelOps(gpu, measured=measured))
                  for measured in (True, False)]
        for batch, context in L2_STEP_SHAPES:
            shape = BatchShape(num_decode_seqs=batch, num_decode_tokens=batch,
                               decode_kv_tokens=batch * context)
            before, after = (km.gpu_time_us(shape) / 1e3 for km in models)
            rows.append(L2StepRow(gpu, model, tp, batch, context, before, after,
                                  decode_read_floor_ms(catalog.gpu(gpu), catalog.model(model),
                                                       tp, batch, context)))
    return rows


# --------------------------------------------------------------------------- step shape


def aggregation_error(seed: int = 0) -> dict[str, float]:
    """Decode steps priced at the mean context vs each sequence at its own context (1/b of a
    batch-b call), Llama-3.1-8B on H100, ShareGPT-like contexts (lognormal, median 600):
    relative error (%) of the attention term and of the whole step."""
    catalog = load_catalog()
    km = KernelCostModel(catalog.gpu("h100-80gb-sxm"), catalog.model("llama-3.1-8b"), 1,
                         KernelSetup())
    rng = np.random.default_rng(seed)
    attn, step = [], []
    for b in (4, 8, 16, 32, 64, 96, 128, 192, 256) * 10:
        ctx = np.clip(rng.lognormal(np.log(600), 0.9, b), 16, 8000).astype(int)
        total = km.gpu_time_us(BatchShape(num_decode_seqs=b, num_decode_tokens=b,
                                          decode_kv_tokens=int(ctx.sum())))
        mean_attn = km._gen(b, float(ctx.sum()) / b)
        per_seq = float(np.mean([km._gen(b, float(c)) for c in ctx]))
        attn.append(abs(mean_attn / per_seq - 1.0))
        step.append(abs(total / (total - mean_attn + per_seq) - 1.0))
    return {"attention_mean": 100 * float(np.mean(attn)), "attention_max": 100 * max(attn),
            "step_mean": 100 * float(np.mean(step)), "step_max": 100 * max(step),
            "batches": len(step)}


# --------------------------------------------------------------------------- step level


@dataclass(frozen=True)
class StepComparison:
    """One group of measured steps: errors of the kernel model, roofline and shipped profile."""

    dataset: str
    group: str
    kernel: dict[str, dict[str, float]]
    roofline: dict[str, dict[str, float]]
    profile: dict[str, dict[str, float]] | None
    profile_name: str | None
    bias_pct: float  # median signed error of the kernel model


def _signed_median(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.median(pred / meas - 1.0) * 100.0)


def _vidur_rows() -> dict[tuple[str, str], dict[str, np.ndarray]]:
    with SHIPPED_DATA["vidur"].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups: dict[tuple[str, str], dict[str, list]] = {}
    for r in rows:
        g = groups.setdefault((r["gpu"], r["model"]), {k: [] for k in r})
        for k, v in r.items():
            g[k].append(v)
    return {k: {c: np.asarray(v) for c, v in g.items()} for k, g in groups.items()}


def _vidur_comparisons(catalog: Catalog) -> list[StepComparison]:
    """Per (GPU, model): Vidur's four linear projections per layer vs the GEMM table."""
    out = []
    for (gpu, model), g in sorted(_vidur_rows().items()):
        ops = KernelOps(gpu)
        heads, kv, hidden = (g[c].astype(int) for c in ("n_head", "n_kv_head", "n_embd"))
        inter = g["n_expanded_embd"].astype(int)
        gated = g["use_gated_mlp"] == "True"
        tokens, tp = g["num_tokens"].astype(float), g["tp"].astype(int)
        measured = sum(g[f"{op}_ms"].astype(float) for op in
                       ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj"))
        # Vidur reports each distinct shape several times; one row per (tokens, tp).
        keys = sorted({(int(t), int(p)) for t, p in zip(tokens, tp, strict=True)})
        meas = np.array([np.median(measured[(tokens == t) & (tp == p)]) for t, p in keys])
        h, k, d, i_, gt = int(heads[0]), int(kv[0]), int(hidden[0]), int(inter[0]), bool(gated[0])
        head_dim = d // h
        pred, roof = [], []
        gpu_spec = catalog.gpu(gpu)
        for t, p in keys:
            kv_w = max(k // p, 1) * head_dim
            up = (2 if gt else 1) * i_ // p
            us = (ops.gemm("bfloat16", h // p * head_dim + 2 * kv_w, d, t)
                  + ops.gemm("bfloat16", d, h // p * head_dim, t)
                  + ops.gemm("bfloat16", up, d, t) + ops.gemm("bfloat16", d, i_ // p, t))
            pred.append(float(us) / 1e3)
            params = d * (h // p * head_dim + 2 * kv_w) + d * h // p * head_dim + d * (up + i_ // p)
            roof.append(max(2 * t * params / (gpu_spec.bf16_tflops * 1e12 * 0.6),
                            2 * params / (gpu_spec.mem_bandwidth_gbps * 1e9 * 0.75)) * 1e3)
        pred_a, roof_a = np.asarray(pred), np.asarray(roof)
        labels = np.full(meas.size, "linear", dtype=object)
        name = f"{gpu}_linear_vidur"
        prof = None
        if (PROFILES_DIR / f"{name}.yaml").is_file():
            from simserve.calibration.datasets import load_vidur_linear
            from simserve.calibration.fit import predict_linear

            shipped = load_profile(PROFILES_DIR / f"{name}.yaml").coefficients
            # NOTE: a linear profile names its per-layer launch cost after what it is; the
            # shared term vector calls it the step overhead.
            coeffs = {**COEFFICIENT_DEFAULTS, **shipped,
                      "step_overhead_ms": shipped.get("launch_overhead_ms_per_layer", 0.0)}
            lin = next(x for x in load_vidur_linear(SHIPPED_DATA["vidur"]) if x.gpu == gpu
                   and x.model == model)
            p_all = predict_linear(coeffs, lin)
            p_keyed = np.array([np.median(p_all[(lin.num_tokens == t) & (lin.tp == p)])
                                for t, p in keys])
            prof = error_stats(p_keyed, meas, labels)
        out.append(StepComparison("vidur", f"{gpu}/{model}", error_stats(pred_a, meas, labels),
                                  error_stats(roof_a, meas, labels), prof,
                                  name if prof else None, _signed_median(pred_a, meas)))
    return out


def _step_group_comparison(dataset: str, g: StepData, catalog: Catalog,
                           profile_suffix: str) -> StepComparison | None:
    gpu, model = catalog.gpu(g.gpu), catalog.model(g.model)
    try:
        km = KernelCostModel(gpu, model, g.tp, KernelSetup(
            version="v0", max_num_seqs=1024, max_num_batched_tokens=65536))
    except ValueError:
        return None
    n = len(g)
    shapes = [BatchShape(**{f: int(g.shapes[f][i]) if f != "prefill_attn_pairs"
                            else float(g.shapes[f][i]) for f in BatchShape._fields})
              for i in range(n)]
    pred = np.array([km.gpu_time_us(s) / 1e3 for s in shapes])
    roof_model = RooflineCostModel(gpu, model, g.tp, CostModelConfig())
    roof = np.array([roof_model.step_time(s) * 1e3 for s in shapes])
    name = f"{g.gpu}_{g.model}_tp{g.tp}_{profile_suffix}"
    prof = None
    if (PROFILES_DIR / f"{name}.yaml").is_file():
        coeffs = load_profile(PROFILES_DIR / f"{name}.yaml").coefficients
        prof = error_stats(predict_ms(coeffs, step_terms(g.arch, gpu, g.tp, g.shapes)),
                           g.time_ms, g.regimes)
    return StepComparison(dataset, g.key, error_stats(pred, g.time_ms, g.regimes),
                          error_stats(roof, g.time_ms, g.regimes), prof,
                          name if prof else None, _signed_median(pred, g.time_ms))


def step_comparisons(catalog: Catalog) -> list[StepComparison]:
    """The kernel model against every step dataset whose GPU has kernel tables."""
    out = _vidur_comparisons(catalog)
    covered = set(kernel_gpus())
    for dataset, groups, suffix in (
        ("splitwise", load_splitwise(SHIPPED_DATA["splitwise"], catalog), "splitwise-sim"),
        ("distserve", load_distserve(SHIPPED_DATA["distserve"], catalog), "vllm"),
    ):
        for g in groups:
            if g.gpu in covered:
                row = _step_group_comparison(dataset, g, catalog, suffix)
                if row is not None:
                    out.append(row)
    return out


# --------------------------------------------------------------------------- end to end


@dataclass(frozen=True)
class E2ERow:
    """One real run: measured statistics and each cost model's replay."""

    run: LoopRun
    kernel: ReplayResult
    roofline: ReplayResult
    profile: ReplayResult | None  # best existing fitted profile (V0 only)


@dataclass(frozen=True)
class LoroRow:
    """Loop terms fitted without one run, and that run replayed with them."""

    version: str
    held_out: str
    fitted_on: tuple[str, ...]
    terms: dict[str, float]
    replay: ReplayResult


@dataclass
class KernelReport:
    """Everything of REPORT.md §7."""

    ops: list[OpHoldout]
    floors: dict[str, GemmFloor]
    # Per GPU: decode attention's 3x steps (decode_cache_steps) as measured and as re-priced.
    cache_steps: dict[str, tuple[int, float, float]]
    cache_steps_priced: dict[str, tuple[int, float, float]]
    l2: list[L2Row]
    l2_steps: list[L2StepRow]
    prefill_fraction: dict[str, float]
    aggregation: dict[str, float]
    steps: list[StepComparison]
    shipped_fits: list[LoopFit] = field(default_factory=list)
    e2e: list[E2ERow] = field(default_factory=list)
    loro: list[LoroRow] = field(default_factory=list)
    occupancy: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    aic: list[AicRow] = field(default_factory=list)
    aic_note: str = ""
    derive: list[DeriveRow] = field(default_factory=list)
    derive_replays: list[tuple[float, ReplayResult]] = field(default_factory=list)


def _roofline_replay(run: LoopRun) -> ReplayResult:
    overrides = [o for o in run.overrides if not o.startswith("cost_model.kind")]
    return replay_trace(run.trace, scenario=run.scenario,
                        overrides=[*overrides, "cost_model.kind=roofline",
                                   "cost_model.profile=null"])


def e2e_rows(profile_replays: dict[float, ReplayResult] | None = None) -> list[E2ERow]:
    """Every real run replayed on the kernel model (shipped loop terms) and the roofline; the
    V0 runs also on the best existing profile (the shipped validation scenario)."""
    from simserve.calibration.replay import trace_rate

    rows = []
    for run in loop_runs():
        prof = None
        if run.version == "v0":
            rate = trace_rate(run.trace)
            prof = (profile_replays or {}).get(rate) or replay_trace(run.trace)
        rows.append(E2ERow(run, replay_run(run), _roofline_replay(run), prof))
    return rows


def loro_rows() -> list[LoroRow]:
    """Leave one run out of the loop-term fit of each engine generation."""
    runs = loop_runs()
    out = []
    for version in ("v0", "v1"):
        pool = loro_pool(runs, version)
        for held in pool:
            others = [r for r in pool if r is not held]
            fit = fit_loop(version, others)
            out.append(LoroRow(version, held.label, fit.fitted_on, fit.terms,
                               replay_run(held, fit.terms)))
    return out


def v1_occupancy(rows: Sequence[E2ERow]) -> dict[str, dict[str, np.ndarray]]:
    """Running and waiting requests per second, measured and simulated, for the V1 runs."""
    from simserve.calibration.served_v1 import v1_runs

    measured = {r.name: r for r in v1_runs()}
    out = {}
    for row in rows:
        if row.run.version != "v1":
            continue
        name = row.run.label.split(" ")[0]
        m = measured[name]
        t, run_m, wait_m = occupancy_series(m.queued_s, m.scheduled_s, m.finished_s)
        res = row.kernel.output.result
        t_s, run_s, wait_s = occupancy_series(res.arrived_at, res.first_scheduled_at,
                                              res.finished_at)
        out[name] = {"t_measured": t, "running_measured": run_m, "waiting_measured": wait_m,
                     "t_simulated": t_s, "running_simulated": run_s,
                     "waiting_simulated": wait_s}
    return out


# --------------------------------------------------------------------------- aiconfigurator


@dataclass(frozen=True)
class AicRow:
    """A static batch (concurrency C prompts of isl tokens, osl outputs): TTFT (the batch's
    prefill) and TPOT (mean decode step), aiconfigurator vs simserve's kernel model."""

    label: str
    concurrency: int
    isl: int
    osl: int
    aic_ttft_ms: float
    aic_tpot_ms: float
    kernel_ttft_ms: float
    kernel_tpot_ms: float
    kernel_tpot_loop_ms: float  # with the V1 engine loop


AIC_CONFIGS: tuple[tuple[str, str, str, str, int], ...] = (
    # (label, aiconfigurator model id, system, catalog model, tp) on catalog GPU below
    ("Llama-3.1-8B H100 TP1", "meta-llama/Meta-Llama-3.1-8B", "h100_sxm", "llama-3.1-8b", 1),
    ("Llama-3.1-70B H100 TP4", "meta-llama/Meta-Llama-3.1-70B", "h100_sxm", "llama-3.1-70b", 4),
    ("Qwen3-32B RTX PRO 6000 TP2", "Qwen/Qwen3-32B", "rtx_pro_6000_server", "qwen3-32b", 2),
    ("Qwen3-30B-A3B H200 TP1", "Qwen/Qwen3-30B-A3B", "h200_sxm", "qwen3-30b-a3b", 1),
)
AIC_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 1024, 256), (16, 1024, 256),
                                                (64, 1024, 256))


def aic_rows() -> tuple[list[AicRow], str]:
    """aiconfigurator's static estimate beside the kernel model (needs the calibrate extra)."""
    try:
        from aiconfigurator_core.sdk.engine import EngineHandle
    except ImportError:
        return [], "aiconfigurator-core is not installed (pip install 'simserve[calibrate]')"
    from simserve.calibration.kernel_extract import GPU_SYSTEMS

    catalog = load_catalog()
    system_gpu = {v: k for k, v in GPU_SYSTEMS.items()}
    logging.disable(logging.WARNING)
    rows = []
    try:
        for label, hf_id, system, name, tp in AIC_CONFIGS:
            handle = EngineHandle.compile(hf_id, system, "vllm", tp_size=tp)
            gpu, model = catalog.gpu(system_gpu[system]), catalog.model(name)
            for c, isl, osl in AIC_SHAPES:
                ctx_ms, gen_ms, _ = handle.run_static(batch_size=c, isl=isl, osl=osl)
                engine = EngineConfig(max_num_seqs=max(c, 8), max_num_batched_tokens=c * isl)
                gpu_only = kernel_cost_model(CostModelConfig(kind="kernels"), gpu, model, tp,
                                             engine, with_loop=False)
                looped = kernel_cost_model(CostModelConfig(kind="kernels"), gpu, model, tp,
                                           engine)
                prefill = BatchShape(num_prefill_tokens=c * isl, num_prefill_seqs=c,
                                     prefill_attn_pairs=c * isl * isl / 2.0,
                                     prefill_kv_tokens=c * isl)
                steps = [BatchShape(num_decode_seqs=c, num_decode_tokens=c,
                                    decode_kv_tokens=c * (isl + j + 1)) for j in range(osl - 1)]
                rows.append(AicRow(
                    label, c, isl, osl, ctx_ms, gen_ms / (osl - 1),
                    gpu_only.step_time(prefill) * 1e3,
                    float(np.mean([gpu_only.step_time(s) for s in steps])) * 1e3,
                    float(np.mean([looped.step_time(s) for s in steps])) * 1e3))
    finally:
        logging.disable(logging.NOTSET)
    return rows, ""


# --------------------------------------------------------------------------- derive-profile


@dataclass(frozen=True)
class DeriveRow:
    """Decode steps of one scenario priced three ways: the kernel model, `derive-profile`
    fitted to it, and the old derivation carrying a base profile's coefficients."""

    label: str
    base: str
    batches: tuple[int, ...]
    kernel_ms: tuple[float, ...]
    derived_ms: tuple[float, ...]
    transfer_ms: tuple[float, ...]
    derived_holdout_mape: float


DERIVE_CASES: tuple[tuple[str, str, str, int, str, str], ...] = (
    # (label, base profile, GPU, TP, model, engine version)
    ("Llama-3-8B H100 (default scenario)", "h100-80gb-sxm_llama-2-70b_tp2_splitwise-sim",
     "h100-80gb-sxm", 1, "llama-3-8b", "v1"),
    ("OPT-13B A100 (the vLLM runs)", "a100-80gb-sxm_opt-66b_tp2-3-4-8_vllm", "a100-80gb-sxm", 1,
     "opt-13b", "v0"),
)
DERIVE_BATCHES = (1, 16, 64, 256)


def _derived_profile(case: tuple[str, str, str, int, str, str]):
    from simserve.calibration.derive_kernels import derive_from_kernels

    _label, base, gpu, tp, model, version = case
    catalog = load_catalog()
    return derive_from_kernels(catalog.gpu(gpu), catalog.model(model), tp, base=base,
                               engine=EngineConfig(version=version))


def derive_rows() -> list[DeriveRow]:
    """Decode steps (context 1000) of each case priced by the three models."""
    from simserve.costmodel.calibrated import CalibratedCostModel, derive_profile

    catalog = load_catalog()
    rows = []
    for case in DERIVE_CASES:
        label, base, gpu, tp, model, version = case
        g, m = catalog.gpu(gpu), catalog.model(model)
        km = kernel_cost_model(CostModelConfig(kind="kernels"), g, m, tp,
                               EngineConfig(version=version))
        out = _derived_profile(case)
        derived = CalibratedCostModel(out.profile, g, m, tp)
        transfer = CalibratedCostModel(
            derive_profile(load_profile(PROFILES_DIR / f"{base}.yaml"), m, tp), g, m, tp)
        shapes = [BatchShape(num_decode_seqs=b, num_decode_tokens=b, decode_kv_tokens=b * 1000)
                  for b in DERIVE_BATCHES]
        rows.append(DeriveRow(
            label, base, DERIVE_BATCHES,
            tuple(km.step_time(x) * 1e3 for x in shapes),
            tuple(derived.step_time(x) * 1e3 for x in shapes),
            tuple(transfer.step_time(x) * 1e3 for x in shapes),
            float(out.holdout["all"]["mape_pct"])))
    return rows


def derive_replays(tmp_dir) -> list[tuple[float, ReplayResult]]:
    """The V0 OPT-13B runs replayed with the kernel-derived OPT-13B profile."""
    from simserve.calibration.calibrate import write_profile
    from simserve.calibration.replay import trace_rate

    path = write_profile(_derived_profile(DERIVE_CASES[1]).profile, tmp_dir)
    out = []
    for run in loop_runs():
        if run.version == "v0":
            out.append((trace_rate(run.trace), replay_trace(
                run.trace, profile=str(path), overrides=["cost_model.serving_per_seq_ms=0"])))
    return out


# --------------------------------------------------------------------------- everything


def run_kernel_validation(profile_replays: dict[float, ReplayResult] | None = None,
                          *, replay: bool = True) -> KernelReport:
    """Compute every number of REPORT.md §7."""
    catalog = load_catalog()
    ops = [op_holdout(gpu, table) for gpu in kernel_gpus() for table in TABLES
           if load_kernel_table(gpu, table).curves]
    floors = {gpu: gemm_floor(gpu) for gpu in kernel_gpus()}
    cache_steps = {gpu: decode_cache_steps(gpu) for gpu in kernel_gpus()}
    cache_steps_priced = {gpu: decode_cache_steps(gpu, measured=False) for gpu in kernel_gpus()}
    report = KernelReport(ops, floors, cache_steps, cache_steps_priced, l2_rows(),
                          l2_step_rows(catalog),
                          {gpu: prefill_bandwidth_fraction(gpu) for gpu in kernel_gpus()},
                          aggregation_error(), step_comparisons(catalog))
    if replay:
        runs = loop_runs()
        report.shipped_fits = [fit_loop(v, [r for r in runs if r.version == v and r.fit])
                               for v in ("v0", "v1")]
        report.e2e = e2e_rows(profile_replays)
        report.loro = loro_rows()
        report.occupancy = v1_occupancy(report.e2e)
        with tempfile.TemporaryDirectory() as tmp:
            report.derive_replays = derive_replays(tmp)
    report.aic, report.aic_note = aic_rows()
    report.derive = derive_rows()
    return report
