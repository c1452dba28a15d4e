"""Fit the calibrated cost model's coefficients to measured step times (relative error).

The model (`simserve.costmodel.calibrated`) is a sum of physical terms whose coefficients are
efficiencies in (0, 1] and non-negative engine constants. Fitting minimises the RELATIVE error
pred / measured - 1 (so a 20 ms decode step weighs as much as a 5 s prefill) with
`scipy.optimize.least_squares` under bounds, plus a weak prior pulling each efficiency towards
its default in log space, so terms the data barely constrains stay physical and transfer to
other TP degrees and models. Terms the data does not exercise at all (no TP > 1, no decode
steps) are not fitted and keep their defaults; the result says which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from simserve.calibration.datasets import LinearData, StepData
from simserve.catalog import Catalog, load_catalog
from simserve.costmodel.calibrated import (
    COEFFICIENT_DEFAULTS,
    COEFFICIENT_NAMES,
    TERM_NAMES,
    Envelope,
    envelope_masks,
    predict_ms,
    step_terms,
)
from simserve.errors import InputError

__all__ = [
    "FitResult",
    "envelope_of",
    "error_stats",
    "fit_linear",
    "fit_steps",
    "holdout_mask",
    "inside_envelope",
    "linear_terms",
    "merged_envelope",
    "predict_linear",
    "predict_steps",
    "terms_of",
]

EFFICIENCIES = ("mfu", "mbu", "attn_eff", "kv_eff", "allreduce_eff")
# Bounds of the optimiser's variables: additive constants >= 0, efficiencies in [0.01, 1]
# (stored as their inverses), ridge sharpness in [1, 20].
_LOWER = {"ridge_sharpness": 1.0, "allreduce_latency_us": 0.1, **{k: 1.0 for k in EFFICIENCIES}}
_UPPER = {"ridge_sharpness": 20.0, **{k: 100.0 for k in EFFICIENCIES}}
PRIOR_WEIGHT = 0.02
# Coefficients with a weak log-prior towards their defaults.
PRIORED = (*EFFICIENCIES, "ridge_sharpness")


@dataclass(frozen=True)
class FitResult:
    """Fitted coefficients, which of them the data determined, and the optimiser's report."""

    coefficients: dict[str, float]
    fitted: tuple[str, ...]
    num_points: int
    loss: str
    prior_weight: float
    success: bool
    message: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        """Plain data for the profile's `fit:` section."""
        return {
            "method": (
                "scipy.optimize.least_squares on relative error (pred/measured - 1), "
                f"loss={self.loss}, log-prior weight {self.prior_weight} towards defaults"
            ),
            "fitted": list(self.fitted),
            "defaults_kept": [k for k in COEFFICIENT_NAMES if k not in self.fitted],
            "num_points": self.num_points,
        }


# --------------------------------------------------------------------------- terms


def terms_of(data: StepData, catalog: Catalog | None = None) -> dict[str, np.ndarray]:
    """Cost terms (at 100% efficiency) of every row of a step group."""
    catalog = catalog or load_catalog()
    return step_terms(data.arch, catalog.gpu(data.gpu), data.tp, data.shapes)


def linear_terms(data: LinearData, catalog: Catalog | None = None) -> dict[str, np.ndarray]:
    """Terms of Vidur's per-layer linear times: GEMM FLOPs and weight reads, a fixed launch
    cost, and nothing else (the all-reduce and attention are not in these measurements)."""
    catalog = catalog or load_catalog()
    gpu = catalog.gpu(data.gpu)
    n = data.num_tokens.size
    out = {k: np.zeros(n) for k in TERM_NAMES}
    for tp in np.unique(data.tp):
        rows = data.tp == tp
        t = step_terms(data.arch, gpu, int(tp), {"num_prefill_tokens": data.num_tokens[rows]})
        for key in ("one", "lin_c", "lin_m"):
            out[key][rows] = t[key]
    return out


def _concat(terms: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([t[k] for t in terms]) for k in terms[0]}


# --------------------------------------------------------------------------- fitting


def _free_coefficients(terms: Mapping[str, np.ndarray]) -> list[str]:
    """Coefficients the data exercises (a term that is zero everywhere cannot be fitted)."""
    free = ["step_overhead_ms"]
    if terms["prefill"].any() and not terms["prefill"].all():
        free.append("prefill_overhead_ms")
    if np.ptp(terms["seqs"]) > 0:
        free.append("per_seq_ms")
    if terms["lin_c"].any():
        free.append("mfu")
    if terms["lin_m"].any():
        free.append("mbu")
    if terms["lin_c"].any() and terms["lin_m"].any():
        free.append("ridge_sharpness")
    if terms["attn_c"].any():
        free.append("attn_eff")
    if terms["kv_m"].any():
        free.append("kv_eff")
    if terms["ar_n"].any():
        free += ["allreduce_latency_us", "allreduce_eff"]
    return free


def _to_var(name: str, value: float) -> float:
    return 1.0 / value if name in EFFICIENCIES else value


def _from_var(name: str, x: float) -> float:
    return 1.0 / x if name in EFFICIENCIES else x


def fit_terms(
    terms: Mapping[str, np.ndarray],
    measured_ms: np.ndarray,
    *,
    start: Mapping[str, float] | None = None,
    fixed: Mapping[str, float] | None = None,
    prior_weight: float = PRIOR_WEIGHT,
    loss: str = "soft_l1",
    source: str = "data",
) -> FitResult:
    """Least-squares fit of the coefficients to measured step times, on relative error."""
    measured_ms = np.asarray(measured_ms, dtype=np.float64)
    if np.any(measured_ms <= 0) or not np.all(np.isfinite(measured_ms)):
        raise InputError("column 'time_ms': measured times must be finite and > 0",
                         source=source)
    fixed = dict(fixed or {})
    free = [k for k in _free_coefficients(terms) if k not in fixed]
    if measured_ms.size < len(free) + 1:
        raise InputError(
            f"too few points to fit: {measured_ms.size} distinct steps for {len(free)} "
            f"coefficients ({', '.join(free)}); need at least {len(free) + 1}",
            source=source,
        )
    base = {**COEFFICIENT_DEFAULTS, **(start or {}), **fixed}
    if "step_overhead_ms" not in (start or {}) and "step_overhead_ms" not in fixed:
        base["step_overhead_ms"] = 0.2 * float(np.min(measured_ms))
    x0 = np.array([_to_var(k, base[k]) for k in free])
    lower = np.array([_LOWER.get(k, 0.0) for k in free])
    upper = np.array([_UPPER.get(k, np.inf) for k in free])
    x0 = np.clip(x0, lower, np.where(np.isfinite(upper), upper, x0 + 1))
    priored = set(PRIORED)
    busy = terms["one"] > 0
    if "allreduce_latency_us" in free and np.ptp(terms["ar_n"][busy] / terms["one"][busy]) == 0:
        # NOTE: at one TP degree the all-reduce latency hops are the same in every step, so the
        # latency and the step overhead are one constant. A weak prior on the latency makes
        # their split unique (its default where the data allows it) instead of leaving it to
        # the optimiser's path and the machine's rounding; with several TP degrees the data
        # separates them and no prior is needed.
        priored.add("allreduce_latency_us")
    prior_idx = [i for i, k in enumerate(free) if k in priored]
    prior_center = np.array([math.log(_to_var(free[i], COEFFICIENT_DEFAULTS[free[i]]))
                             for i in prior_idx])

    def coefficients(x: np.ndarray) -> dict[str, float]:
        c = dict(base)
        for k, v in zip(free, x, strict=True):
            c[k] = _from_var(k, float(v))
        return c

    def residuals(x: np.ndarray) -> np.ndarray:
        rel = predict_ms(coefficients(x), terms) / measured_ms - 1.0
        prior = prior_weight * (np.log(x[prior_idx]) - prior_center)
        return np.concatenate([rel, prior])

    # NOTE: soft_l1 with a 5% scale keeps a few inconsistent replicates (e.g. two measuring
    # campaigns of one shape) from dominating, while exact data is fitted exactly.
    result = least_squares(residuals, x0, bounds=(lower, upper), loss=loss, f_scale=0.05,
                           x_scale="jac", max_nfev=5000)
    return FitResult(
        coefficients=coefficients(result.x),
        fitted=tuple(free),
        num_points=int(measured_ms.size),
        loss=loss,
        prior_weight=prior_weight,
        success=bool(result.success),
        message=str(result.message),
    )


def fit_steps(
    groups: Sequence[StepData],
    catalog: Catalog | None = None,
    **kwargs: Any,
) -> FitResult:
    """One coefficient set for all rows of `groups` (e.g. several TP degrees of one GPU)."""
    catalog = catalog or load_catalog()
    terms = _concat([terms_of(g, catalog) for g in groups])
    measured = np.concatenate([g.time_ms for g in groups])
    source = ", ".join(sorted({g.source for g in groups}))
    return fit_terms(terms, measured, source=source, **kwargs)


def predict_steps(coefficients: Mapping[str, float], data: StepData,
                  catalog: Catalog | None = None) -> np.ndarray:
    """Predicted ms of every row of a step group."""
    return predict_ms(coefficients, terms_of(data, catalog))


def fit_linear(groups: Sequence[LinearData], catalog: Catalog | None = None,
               **kwargs: Any) -> FitResult:
    """Linear-layer efficiencies (mfu, mbu, ridge) and a per-layer launch cost from Vidur."""
    catalog = catalog or load_catalog()
    terms = _concat([linear_terms(g, catalog) for g in groups])
    measured = np.concatenate([g.time_ms for g in groups])
    kwargs.setdefault("start", {"step_overhead_ms": 0.01})
    source = ", ".join(sorted({g.source for g in groups}))
    return fit_terms(terms, measured, source=source, **kwargs)


def predict_linear(coefficients: Mapping[str, float], data: LinearData,
                   catalog: Catalog | None = None) -> np.ndarray:
    """Predicted per-layer ms of every row of a Vidur group."""
    return predict_ms(coefficients, linear_terms(data, catalog))


# --------------------------------------------------------------------------- evaluation


def error_stats(predicted: np.ndarray, measured: np.ndarray,
                labels: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """MAPE and max relative error (%) per label (regime), and over all rows ('all')."""
    rel = np.abs(np.asarray(predicted) / np.asarray(measured) - 1.0) * 100.0
    labels = np.full(rel.size, "all", dtype=object) if labels is None else np.asarray(labels)
    out: dict[str, dict[str, float]] = {}
    for label in ("prefill", "decode", "mixed", "linear"):
        mask = labels == label
        if mask.any():
            out[label] = {"n": int(mask.sum()), "mape_pct": round(float(rel[mask].mean()), 3),
                          "max_err_pct": round(float(rel[mask].max()), 3)}
    if rel.size:
        out["all"] = {"n": int(rel.size), "mape_pct": round(float(rel.mean()), 3),
                      "max_err_pct": round(float(rel.max()), 3)}
    return out


def holdout_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the held-back rows: `fraction` of each label's rows, chosen at random."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    mask = np.zeros(labels.size, dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        k = round(fraction * idx.size)
        if k:
            mask[rng.choice(idx, size=k, replace=False)] = True
    return mask


def _records(shapes: Mapping[str, np.ndarray]) -> SimpleNamespace:
    """StepRecords-like per-step columns of a table of BatchShape aggregates."""
    return SimpleNamespace(
        num_prefill_tokens=np.rint(shapes["num_prefill_tokens"]),
        num_decode_tokens=np.rint(shapes["num_decode_tokens"]),
        num_seqs=np.rint(shapes["num_prefill_seqs"] + shapes["num_decode_seqs"]),
        decode_kv_tokens=np.rint(shapes["decode_kv_tokens"]),
        prefill_kv_tokens=np.rint(shapes["prefill_kv_tokens"]),
    )


def envelope_of(data: StepData) -> Envelope:
    """The envelope of a step group: the largest per-step aggregates it measured."""
    r = _records(data.shapes)
    decode = r.num_decode_tokens
    context = np.divide(r.decode_kv_tokens, decode, out=np.zeros(decode.size), where=decode > 0)
    regimes = tuple(x for x in ("prefill", "decode", "mixed") if (data.regimes == x).any())
    return Envelope(
        max_num_tokens=int((r.num_prefill_tokens + decode).max()),
        max_num_seqs=int(r.num_seqs.max()),
        max_decode_context=int(np.ceil(context.max())),
        max_decode_kv_tokens=int(r.decode_kv_tokens.max()),
        max_prefill_kv_tokens=int(r.prefill_kv_tokens.max()),
        regimes=regimes,
    )


def merged_envelope(envelopes: Sequence[Envelope]) -> Envelope:
    """The smallest envelope holding all of `envelopes` (the data of several step groups)."""
    regimes = {r for e in envelopes for r in e.regimes}
    return Envelope(
        max_num_tokens=max(e.max_num_tokens for e in envelopes),
        max_num_seqs=max(e.max_num_seqs for e in envelopes),
        max_decode_context=max(e.max_decode_context for e in envelopes),
        max_decode_kv_tokens=max(e.max_decode_kv_tokens for e in envelopes),
        max_prefill_kv_tokens=max(e.max_prefill_kv_tokens for e in envelopes),
        regimes=tuple(r for r in ("prefill", "decode", "mixed") if r in regimes),
    )


def inside_envelope(env: Envelope, data: StepData) -> np.ndarray:
    """True for the rows of `data` inside `env`."""
    masks = envelope_masks(env, _records(data.shapes))
    out = np.ones(len(data), dtype=bool)
    for mask in masks.values():
        out &= ~mask
    return out
