"""Calibrated step times: the roofline terms of DESIGN §4 with coefficients fitted to measurements.

A step of N query tokens costs (ms)

    t0 + [prefill] t_prefill + per_seq x seqs
       + smax_p(linear FLOPs / (P mfu), weight bytes / (B mbu))
       + LM-head FLOPs / (P mfu) + prefill attention FLOPs / (P attn_eff)
       + decode KV bytes / (B kv_eff) + [tp > 1] (2L x allreduce latency + AR bytes / (link ar_eff))

where P, B and link are the catalog's peak FLOP/s, memory and interconnect bandwidth per GPU and
smax_p(a, b) = (a^p + b^p)^(1/p) is a smooth roofline ridge (p = 1: compute and weight reads add
up; p -> inf: the hard max of the roofline). The coefficients are dimensionless efficiencies
plus three engine constants (step overhead, per-sequence overhead, all-reduce latency), so one
profile fitted on (GPU, model, TP) transfers to another model or TP on the same GPU by
recomputing the terms from the catalog (`derive_profile`), which is how an uncalibrated model
gets a profile. A profile also records the envelope of its data (largest step, batch, context)
so a run that leaves it can say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from simserve.catalog import GpuSpec, ModelSpec
from simserve.costmodel.base import BatchShape
from simserve.costmodel.pipeline import StepParts, embedding_shares, split_linear
from simserve.errors import InputError
from simserve.formatting import round_significant
from simserve.yaml_lines import read_yaml_file

__all__ = [
    "COEFFICIENT_DEFAULTS",
    "COEFFICIENT_NAMES",
    "PROFILE_FORMAT",
    "TERM_NAMES",
    "Arch",
    "CalibratedCostModel",
    "Envelope",
    "Profile",
    "derive_profile",
    "envelope_counts",
    "envelope_masks",
    "load_profile",
    "predict_ms",
    "profile_from_mapping",
    "profile_to_mapping",
    "smooth_max",
    "step_terms",
]

PROFILE_FORMAT = "simserve-profile/1"

# Order of the coefficient vector used by the fitter; units in the names.
COEFFICIENT_NAMES: tuple[str, ...] = (
    "step_overhead_ms",
    "prefill_overhead_ms",
    "per_seq_ms",
    "mfu",
    "mbu",
    "attn_eff",
    "kv_eff",
    "allreduce_latency_us",
    "allreduce_eff",
    "ridge_sharpness",
)

# NOTE: used for terms the data cannot determine (e.g. all-reduce at TP1) and as the weak prior
# of the fit; mfu/mbu/allreduce are the roofline's defaults (config.CostModelConfig), attention
# efficiencies are typical of FlashAttention-2 prefill (~40% of peak, Dao 2023) and paged decode
# attention (~60% of HBM bandwidth, vLLM PagedAttention paper §7).
COEFFICIENT_DEFAULTS: dict[str, float] = {
    "step_overhead_ms": 3.0,
    "prefill_overhead_ms": 0.0,
    "per_seq_ms": 0.0,
    "mfu": 0.6,
    "mbu": 0.75,
    "attn_eff": 0.4,
    "kv_eff": 0.6,
    "allreduce_latency_us": 10.0,
    "allreduce_eff": 0.7,
    "ridge_sharpness": 4.0,
}

TERM_NAMES: tuple[str, ...] = (
    "one",  # 1 for a non-empty step
    "prefill",  # 1 for a step with prefill tokens
    "seqs",  # sequences in the batch
    "lin_c",  # ms of linear-layer FLOPs at peak
    "lin_m",  # ms of weight reads at peak bandwidth
    "lm_c",  # ms of LM-head FLOPs at peak
    "attn_c",  # ms of prefill attention FLOPs at peak
    "kv_m",  # ms of decode KV reads at peak bandwidth
    "ar_n",  # all-reduce latency hops: 2 per layer x log2(tp) (0 at TP1)
    "ar_b",  # ms of all-reduce traffic at peak link bandwidth
)


class Arch(NamedTuple):
    """The architecture numbers the cost terms need (from a catalog ModelSpec or a data file)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    linear_params_per_layer: int  # q, k, v, o and MLP matrices
    vocab_size: int
    dtype_bytes: int = 2

    @classmethod
    def from_model(cls, model: ModelSpec) -> Arch:
        """The cost-relevant numbers of a catalog model."""
        return cls(
            name=model.name,
            num_layers=model.num_layers,
            hidden_size=model.hidden_size,
            num_heads=model.num_heads,
            num_kv_heads=model.num_kv_heads,
            head_dim=model.head_dim,
            linear_params_per_layer=model.attention_params_per_layer
            + model.mlp_params_per_layer,
            vocab_size=model.vocab_size,
            dtype_bytes=model.dtype_bytes,
        )


def _shape_arrays(shapes: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(shapes.get(k, 0), dtype=np.float64) for k in BatchShape._fields}


def step_terms(
    arch: Arch, gpu: GpuSpec, tp: int, shapes: Mapping[str, Any] | BatchShape
) -> dict[str, np.ndarray]:
    """Per-step cost terms at 100% efficiency (ms, or counts), vectorised over steps.

    `shapes` maps BatchShape field names to scalars or arrays (missing fields are 0).
    """
    if isinstance(shapes, BatchShape):
        shapes = shapes._asdict()
    s = _shape_arrays(shapes)
    n = s["num_prefill_tokens"] + s["num_decode_tokens"]
    busy = (n > 0).astype(np.float64)
    flops_per_ms = gpu.bf16_tflops * 1e9
    bytes_per_ms = gpu.mem_bandwidth_gbps * 1e6
    a = arch
    linear_params = a.num_layers * a.linear_params_per_layer
    lm_params = a.vocab_size * a.hidden_size
    # NOTE: vLLM replicates KV heads when tp exceeds them, so per-GPU KV never drops below one
    # head per layer.
    kv_heads_per_gpu = max(a.num_kv_heads / tp, 1.0)
    kv_bytes_per_token = 2 * a.num_layers * kv_heads_per_gpu * a.head_dim * a.dtype_bytes
    attn_flops_per_pair = 4.0 * a.num_layers * a.num_heads * a.head_dim / tp
    if s["num_decode_seqs"].any():
        width = np.divide(
            s["num_decode_tokens"],
            s["num_decode_seqs"],
            out=np.zeros_like(n),
            where=s["num_decode_seqs"] > 0,
        )
    else:
        width = np.zeros_like(n)
    sampled = s["num_prefill_seqs"] + s["num_decode_tokens"]
    terms = {
        "one": busy,
        "prefill": (s["num_prefill_tokens"] > 0).astype(np.float64),
        "seqs": s["num_prefill_seqs"] + s["num_decode_seqs"],
        "lin_c": n * (2.0 * linear_params / tp) / flops_per_ms,
        "lin_m": busy * ((linear_params + lm_params) * a.dtype_bytes / tp) / bytes_per_ms,
        "lm_c": sampled * (2.0 * lm_params / tp) / flops_per_ms,
        # Decode/verify attention of width w > 1 (speculative verify) adds w-1 query rows of
        # compute over the same KV; plain decode (w = 1) is counted as KV bytes only.
        "attn_c": (s["prefill_attn_pairs"] + s["decode_kv_tokens"] * np.maximum(width - 1, 0))
        * attn_flops_per_pair
        / flops_per_ms,
        "kv_m": s["decode_kv_tokens"] * kv_bytes_per_token / bytes_per_ms,
    }
    if tp > 1:
        # NOTE: Megatron-style TP: two all-reduces per layer (after attention and after the
        # MLP) of N x hidden activations. Bandwidth: a ring moves 2 (tp-1)/tp of the message per
        # GPU; latency: small (decode) messages are latency-bound and NCCL's tree algorithm takes
        # log2(tp) hops each way (alpha-beta model, Thakur et al. 2005; NCCL docs), so the fixed
        # cost is counted in hops. Splitwise's decode steps support it: their fixed cost above
        # the weight read grows by about the same amount from TP2 to 4 as from 4 to 8.
        link_bytes_per_ms = gpu.interconnect_gbps * 1e6
        per_token = 2 * a.num_layers * a.hidden_size * a.dtype_bytes * 2 * (tp - 1) / tp
        terms["ar_n"] = busy * 2 * a.num_layers * math.log2(tp)
        terms["ar_b"] = n * per_token / link_bytes_per_ms
    else:
        terms["ar_n"] = np.zeros_like(n)
        terms["ar_b"] = np.zeros_like(n)
    return terms


def smooth_max(a: np.ndarray | float, b: np.ndarray | float, p: float) -> np.ndarray:
    """(a^p + b^p)^(1/p), computed stably: between a + b (p = 1) and max(a, b) (p -> inf)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    hi = np.maximum(a, b)
    lo = np.minimum(a, b)
    ratio = np.divide(lo, hi, out=np.zeros_like(hi), where=hi > 0)
    return hi * (1.0 + ratio**p) ** (1.0 / p)


def predict_ms(coefficients: Mapping[str, float], terms: Mapping[str, np.ndarray]) -> np.ndarray:
    """Step times (ms) for precomputed `step_terms` under one set of coefficients."""
    c = coefficients
    linear = smooth_max(
        terms["lin_c"] / c["mfu"], terms["lin_m"] / c["mbu"], c["ridge_sharpness"]
    )
    return (
        terms["one"] * c["step_overhead_ms"]
        + terms["prefill"] * c["prefill_overhead_ms"]
        + terms["seqs"] * c["per_seq_ms"]
        + linear
        + terms["lm_c"] / c["mfu"]
        + terms["attn_c"] / c["attn_eff"]
        + terms["kv_m"] / c["kv_eff"]
        + terms["ar_n"] * c["allreduce_latency_us"] * 1e-3
        + terms["ar_b"] / c["allreduce_eff"]
    )


# --------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class Envelope:
    """The range of step shapes the profile's data covered (per-step aggregates, as in
    StepRecords), and which regimes (prefill, decode, mixed) it measured."""

    max_num_tokens: int
    max_num_seqs: int
    max_decode_context: int  # mean context of the decode sequences of one step
    max_decode_kv_tokens: int  # sum of decode contexts in one step
    max_prefill_kv_tokens: int  # sum over prefill chunks of cached + new tokens
    regimes: tuple[str, ...] = ("prefill", "decode")

    def to_mapping(self) -> dict[str, Any]:
        """Plain data for YAML."""
        return {
            "max_num_tokens": self.max_num_tokens,
            "max_num_seqs": self.max_num_seqs,
            "max_decode_context": self.max_decode_context,
            "max_decode_kv_tokens": self.max_decode_kv_tokens,
            "max_prefill_kv_tokens": self.max_prefill_kv_tokens,
            "regimes": list(self.regimes),
        }


@dataclass(frozen=True)
class Profile:
    """A fitted (or derived) cost profile for one (GPU, model, TP, engine)."""

    name: str
    gpu: str
    model: str
    tp: int
    engine: str
    coefficients: dict[str, float]
    envelope: Envelope | None
    kind: str = "step"  # "step": a full step model; "linear": linear layers only (Vidur)
    source: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    derived_from: dict[str, Any] | None = None
    path: str | None = None
    # A profile fitted on several TP degrees of its model at once (`simserve calibrate
    # --pool-tp`) holds one coefficient set for all of them: it prices each (leave-one-TP-out
    # in calibration/REPORT.md measures how well), and `tp` is the smallest.
    pooled_tps: tuple[int, ...] = ()

    def covers_tp(self, tp: int) -> bool:
        """Whether the profile was fitted for `tp` (alone or pooled with other degrees)."""
        return tp == self.tp or tp in self.pooled_tps

    @property
    def tp_label(self) -> str:
        """`tp=2`, or `tp=2,3,4,8` for a pooled profile."""
        return "tp=" + ",".join(str(t) for t in (self.pooled_tps or (self.tp,)))

    def __post_init__(self) -> None:
        missing = [k for k in COEFFICIENT_NAMES if k not in self.coefficients]
        if self.kind == "step" and missing:
            raise InputError(f"missing coefficients: {', '.join(missing)}", field="coefficients")
        for key, value in self.coefficients.items():
            if not _is_finite(value) or value < 0:
                raise InputError(f"must be a finite number >= 0, got {value!r}",
                                 field=f"coefficients.{key}")
        for key in ("mfu", "mbu", "attn_eff", "kv_eff", "allreduce_eff"):
            if key in self.coefficients and not 0 < self.coefficients[key] <= 1:
                raise InputError(f"must be in (0, 1], got {self.coefficients[key]}",
                                 field=f"coefficients.{key}")
        if self.coefficients.get("ridge_sharpness", 1.0) < 1:
            raise InputError("must be >= 1", field="coefficients.ridge_sharpness")


def _is_finite(value: Any) -> bool:
    """A real number (not a bool) that a float holds finitely."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def profile_to_mapping(profile: Profile) -> dict[str, Any]:
    """Plain data for the profile YAML (rounded for readability, stable key order)."""
    return {
        "format": PROFILE_FORMAT,
        "name": profile.name,
        "kind": profile.kind,
        "gpu": profile.gpu,
        "model": profile.model,
        "tp": profile.tp,
        "engine": profile.engine,
        "derived_from": profile.derived_from,
        "source": profile.source,
        "coefficients": {k: (round_significant(v, 6) if abs(v) > 1e-9 else 0.0)
                         for k, v in profile.coefficients.items()},
        "envelope": profile.envelope.to_mapping() if profile.envelope else None,
        "fit": profile.fit,
        **({"pooled_tps": list(profile.pooled_tps)} if profile.pooled_tps else {}),
    }


def _envelope_from(data: Any, source: str) -> Envelope | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise InputError("must be a mapping", field="envelope", source=source)
    limits = {}
    for key in ("max_num_tokens", "max_num_seqs", "max_decode_context", "max_decode_kv_tokens",
                "max_prefill_kv_tokens"):
        if key not in data:
            raise InputError("missing key", field=f"envelope.{key}", source=source)
        if not _is_finite(data[key]) or data[key] < 0:
            raise InputError(f"must be a number >= 0, got {data[key]!r}",
                             field=f"envelope.{key}", source=source)
        limits[key] = int(data[key])
    regimes = data.get("regimes", ("prefill", "decode"))
    if not isinstance(regimes, list | tuple) or not all(isinstance(r, str) for r in regimes):
        raise InputError(f"must be a list of regime names, got {regimes!r}",
                         field="envelope.regimes", source=source)
    return Envelope(**limits, regimes=tuple(regimes))


def profile_from_mapping(data: Any, source: str = "profile") -> Profile:
    """A validated Profile from parsed YAML; errors name the file and the key."""
    if not isinstance(data, Mapping):
        raise InputError("a profile must be a YAML mapping", source=source)
    if data.get("format") != PROFILE_FORMAT:
        raise InputError(
            f"not a simserve profile (expected format: {PROFILE_FORMAT}, got "
            f"{data.get('format')!r})",
            field="format",
            source=source,
        )
    for key in ("name", "gpu", "model", "tp", "engine", "coefficients"):
        if key not in data:
            raise InputError("missing key", field=key, source=source)
    coefficients = data["coefficients"]
    if not isinstance(coefficients, Mapping):
        raise InputError("must be a mapping", field="coefficients", source=source)
    pooled = data.get("pooled_tps")
    pooled = [] if pooled is None else pooled
    if not isinstance(pooled, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in pooled):
        raise InputError("must be a list of TP degrees (integers > 0)", field="pooled_tps",
                         source=source)
    for key in ("name", "gpu", "model", "engine"):
        if not isinstance(data[key], str | int | float) or isinstance(data[key], bool) or (
                not str(data[key]).strip()):
            raise InputError(f"must be a non-empty name, got {data[key]!r}", field=key,
                             source=source)
    kind = data.get("kind", "step")
    if kind not in ("step", "linear"):
        raise InputError(f"must be step or linear, got {kind!r}", field="kind", source=source)
    tp = data["tp"]
    least_tp = 1 if kind == "step" else 0  # a linear-layer profile spans every TP (tp: 0)
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < least_tp:
        raise InputError(f"must be an integer >= {least_tp}, got {tp!r}", field="tp",
                         source=source)
    for key in ("source", "fit", "derived_from"):
        if data.get(key) is not None and not isinstance(data[key], Mapping):
            raise InputError(f"must be a mapping, got {data[key]!r}", field=key, source=source)
    try:
        return Profile(
            name=str(data["name"]),
            gpu=str(data["gpu"]),
            model=str(data["model"]),
            tp=tp,
            engine=str(data["engine"]),
            coefficients={str(k): v for k, v in coefficients.items()},
            envelope=_envelope_from(data.get("envelope"), source),
            kind=kind,
            source=dict(data.get("source") or {}),
            fit=dict(data.get("fit") or {}),
            derived_from=data.get("derived_from"),
            path=source,
            pooled_tps=tuple(pooled),
        )
    except InputError as exc:
        raise exc.located(source, None) from None


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile YAML file."""
    path = Path(path)
    data, _text = read_yaml_file(path, "profile file")
    return profile_from_mapping(data, str(path))


def derive_profile(
    base: Profile,
    model: ModelSpec,
    tp: int,
    *,
    name: str | None = None,
    linear: Profile | None = None,
) -> Profile:
    """A profile for an uncalibrated (model, TP) on `base`'s GPU: the same efficiencies and
    engine constants applied to the new model's roofline terms (optionally taking the
    linear-layer efficiencies from a Vidur `linear` profile of the same GPU).

    NOTE: efficiencies are properties of GPU + kernels rather than of one model, which is what
    makes this transfer reasonable (Vidur fits per-operator times the same way); the envelope is
    dropped because nothing was measured for the new model, and every run says so.
    """
    if base.kind != "step":
        raise InputError(f"profile {base.name} is a {base.kind} profile; derive from a step "
                         "profile", field="--from")
    coefficients = dict(base.coefficients)
    linear_note = None
    if linear is not None:
        if linear.gpu != base.gpu:
            raise InputError(
                f"linear profile {linear.name} is for {linear.gpu}, not {base.gpu}",
                field="--linear-from",
            )
        for key in ("mfu", "mbu", "ridge_sharpness"):
            coefficients[key] = linear.coefficients[key]
        linear_note = linear.name
    derived_name = name or f"{base.gpu}_{model.name}_tp{tp}_derived-from-{base.name}"
    return Profile(
        name=derived_name,
        gpu=base.gpu,
        model=model.name,
        tp=tp,
        engine=base.engine,
        coefficients=coefficients,
        envelope=None,
        source={"note": "derived: no measurements of this model; roofline terms of the catalog "
                        "model with the fitted efficiencies of the base profile"},
        fit={},
        derived_from={"profile": base.name, "model": base.model, "tp": base.tp,
                      "linear_from": linear_note,
                      **({"pooled_tps": list(base.pooled_tps)} if base.pooled_tps else {})},
    )


# --------------------------------------------------------------------------- cost model


@dataclass(frozen=True)
class CalibratedCostModel:
    """Step time from a fitted profile; per-unit costs are precomputed so a step is a handful
    of float operations (DESIGN §9: per-step work with small constants)."""

    profile: Profile
    gpu: GpuSpec
    model: ModelSpec
    tp: int

    def __post_init__(self) -> None:
        arch = Arch.from_model(self.model)
        c = self.profile.coefficients
        unit = step_terms(
            arch,
            self.gpu,
            self.tp,
            {"num_prefill_tokens": 1, "num_prefill_seqs": 1, "prefill_attn_pairs": 1.0,
             "num_decode_seqs": 1, "num_decode_tokens": 1, "decode_kv_tokens": 1},
        )
        set_ = object.__setattr__
        # Per-unit costs in seconds; unit["lin_c"] and unit["ar_b"] are for N = 2 tokens.
        set_(self, "_overhead_s", c["step_overhead_ms"] * 1e-3)
        set_(self, "_prefill_overhead_s", c["prefill_overhead_ms"] * 1e-3)
        set_(self, "_seq_s", c["per_seq_ms"] * 1e-3)
        set_(self, "_lin_c_s", float(unit["lin_c"]) / 2 / c["mfu"] * 1e-3)
        set_(self, "_lin_m_s", float(unit["lin_m"]) / c["mbu"] * 1e-3)
        # One sampled row per prefill chunk and per decode token; unit has 2 sampled rows.
        set_(self, "_lm_s", float(unit["lm_c"]) / 2 / c["mfu"] * 1e-3)
        set_(self, "_pair_s", float(unit["attn_c"]) / c["attn_eff"] * 1e-3)
        set_(self, "_kv_s", float(unit["kv_m"]) / c["kv_eff"] * 1e-3)
        set_(self, "_ar_fixed_s", float(unit["ar_n"]) * c["allreduce_latency_us"] * 1e-6)
        set_(self, "_ar_tok_s", float(unit["ar_b"]) / 2 / c["allreduce_eff"] * 1e-3)
        set_(self, "_p", c["ridge_sharpness"])

    def step_time(self, shape: BatchShape) -> float:
        n = shape.num_prefill_tokens + shape.num_decode_tokens
        if n == 0:
            return self._overhead_s
        compute = n * self._lin_c_s
        memory = self._lin_m_s
        hi, lo = (compute, memory) if compute >= memory else (memory, compute)
        linear = hi * (1.0 + (lo / hi) ** self._p) ** (1.0 / self._p)
        seqs = shape.num_prefill_seqs + shape.num_decode_seqs
        pairs = shape.prefill_attn_pairs
        if shape.num_decode_seqs and shape.num_decode_tokens > shape.num_decode_seqs:
            width = shape.num_decode_tokens / shape.num_decode_seqs
            pairs += shape.decode_kv_tokens * (width - 1)
        return (
            self._overhead_s
            + (self._prefill_overhead_s if shape.num_prefill_tokens else 0.0)
            + seqs * self._seq_s
            + linear
            + (shape.num_prefill_seqs + shape.num_decode_tokens) * self._lm_s
            + pairs * self._pair_s
            + shape.decode_kv_tokens * self._kv_s
            + self._ar_fixed_s
            + n * self._ar_tok_s
        )

    def step_parts(self, shape: BatchShape) -> StepParts:
        """`step_time` by pipeline part: the fitted step, prefill and per-sequence overheads
        (a worker's launch and input preparation) are every stage's, the LM head the last
        stage's, the rest (layers, attention, all-reduces) is split."""
        n = shape.num_prefill_tokens + shape.num_decode_tokens
        if n == 0:
            return StepParts(per_stage_s=self._overhead_s)
        seqs = shape.num_prefill_seqs + shape.num_decode_seqs
        per_stage = (self._overhead_s
                     + (self._prefill_overhead_s if shape.num_prefill_tokens else 0.0)
                     + seqs * self._seq_s)
        compute, memory = n * self._lin_c_s, self._lin_m_s
        hi, lo = (compute, memory) if compute >= memory else (memory, compute)
        linear = hi * (1.0 + (lo / hi) ** self._p) ** (1.0 / self._p)
        first, _, last = split_linear(linear, memory >= compute, embedding_shares(self.model))
        lm_head = (shape.num_prefill_seqs + shape.num_decode_tokens) * self._lm_s
        return StepParts.around_layers(self.step_time(shape), per_stage, lm_head, first, last)

    def decode_step_fn(self, num_seqs: int) -> Callable[[int], float]:
        """`step_time` of a plain decode step of `num_seqs` sequences as a function of its
        decode KV tokens (the same float operations in the same order)."""
        n = num_seqs
        if n == 0:
            return lambda kv: self._overhead_s
        fixed = self._fixed(n)
        kv_s, ar_fixed, ar_tok = self._kv_s, self._ar_fixed_s, n * self._ar_tok_s
        return lambda kv: fixed + kv * kv_s + ar_fixed + ar_tok

    def _fixed(self, n: int) -> float:
        """The terms of a plain decode step of `n` sequences before its decode KV term."""
        compute = n * self._lin_c_s
        memory = self._lin_m_s
        hi, lo = (compute, memory) if compute >= memory else (memory, compute)
        linear = hi * (1.0 + (lo / hi) ** self._p) ** (1.0 / self._p)
        return (
            self._overhead_s
            + 0.0
            + n * self._seq_s
            + linear
            + (0 + n) * self._lm_s
            + 0.0 * self._pair_s
        )

    def decode_run_s(self, num_seqs: int, decode_kv_tokens: np.ndarray) -> np.ndarray:
        """`step_time` of plain decode steps of `num_seqs` sequences, vectorised over their
        decode KV tokens (the same float operations in the same order)."""
        n = num_seqs
        if n == 0:
            return np.full(decode_kv_tokens.size, self._overhead_s)
        out = self._fixed(n) + decode_kv_tokens.astype(np.float64) * self._kv_s
        out += self._ar_fixed_s
        out += n * self._ar_tok_s
        return out

    def describe(self) -> dict[str, object]:
        p = self.profile
        out: dict[str, object] = {
            "kind": "calibrated",
            "profile": p.name,
            "gpu": p.gpu,
            "model": p.model,
            "tp": p.tp,
            "engine": p.engine,
            "coefficients": dict(p.coefficients),
        }
        if p.derived_from:
            out["derived_from"] = p.derived_from
            out["note"] = (
                f"derived profile: {self.model.name} was not measured; efficiencies fitted on "
                f"{p.derived_from.get('model')} (tp={p.derived_from.get('tp')}) applied to its "
                "roofline terms"
            )
        else:
            out["source"] = p.source.get("dataset")
        return out

    def envelope_report(self, steps: Any) -> dict[str, object] | None:
        """Structured envelope counts for a summary (None for a profile without envelope)."""
        env = self.profile.envelope
        if env is None:
            return None
        counts = envelope_counts(env, steps)
        outside = counts.pop("outside")
        return {"profile": self.profile.name, "num_steps": len(steps),
                "num_steps_outside": outside, "by_limit": counts}

    def envelope_warnings(self, steps: Any) -> list[str]:
        """One warning counting the steps outside the profile's envelope (none inside)."""
        p = self.profile
        notes = []
        if p.derived_from:
            notes.append(
                f"cost model: profile {p.name} is derived (no measurements of {p.model}); "
                f"efficiencies fitted on {p.derived_from.get('model')} "
                f"tp={p.derived_from.get('tp')}"
            )
        env = p.envelope
        total = len(steps)
        if env is None or total == 0:
            return notes
        counts = envelope_counts(env, steps)
        outside = counts.pop("outside")
        if outside:
            detail = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
            notes.append(
                f"{outside} of {total} steps ({100.0 * outside / total:.1f}%) outside the "
                f"envelope of profile {p.name} ({detail}); their times are extrapolated"
            )
        return notes


def envelope_masks(env: Envelope, steps: Any) -> dict[str, np.ndarray]:
    """Per envelope limit, which steps exceed it; `steps` has StepRecords' per-step columns."""
    prefill = np.asarray(steps.num_prefill_tokens, dtype=np.int64)
    decode = np.asarray(steps.num_decode_tokens, dtype=np.int64)
    tokens = prefill + decode
    seqs = np.asarray(steps.num_seqs, dtype=np.int64)
    decode_kv = np.asarray(steps.decode_kv_tokens, dtype=np.int64)
    prefill_kv = np.asarray(steps.prefill_kv_tokens, dtype=np.int64)
    context = np.divide(decode_kv, decode, out=np.zeros(decode.size), where=decode > 0)
    masks = {
        f"with more tokens than {env.max_num_tokens}": tokens > env.max_num_tokens,
        f"with more sequences than {env.max_num_seqs}": seqs > env.max_num_seqs,
        f"with a longer mean decode context than {env.max_decode_context}": (
            context > env.max_decode_context
        ),
        f"reading more decode KV tokens than {env.max_decode_kv_tokens}": (
            decode_kv > env.max_decode_kv_tokens
        ),
        f"with more prefill KV tokens than {env.max_prefill_kv_tokens}": (
            prefill_kv > env.max_prefill_kv_tokens
        ),
    }
    if "mixed" not in env.regimes:
        masks["mixed prefill+decode (not measured)"] = (prefill > 0) & (decode > 0)
    return masks


def envelope_counts(env: Envelope, steps: Any) -> dict[str, int]:
    """How many steps exceed each envelope limit, and how many exceed any ('outside')."""
    masks = envelope_masks(env, steps)
    any_out = np.zeros(np.asarray(steps.num_seqs).size, dtype=bool)
    counts: dict[str, int] = {}
    for key, mask in masks.items():
        counts[key] = int(mask.sum())
        any_out |= mask
    counts["outside"] = int(any_out.sum())
    return counts
