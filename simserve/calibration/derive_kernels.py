"""`simserve derive-profile` where kernels were measured: a profile fitted to the kernel model.

Deriving a profile by carrying another model's fitted efficiencies AND its engine constants to a
new model (`simserve.costmodel.calibrated.derive_profile`) also carries the constants of the
engine and batch range that profile was measured on: splitwise's per-sequence term, fitted on
batches of at most 64, adds ~0.4 ms per sequence per step, ~100 ms at batch 256. Where the
measured kernel tables cover the GPU, model and TP, the derived profile is instead fitted (the
same least squares as `simserve calibrate`) to the kernel model's own step times, engine loop
included, on a grid of prefill, decode and mixed steps spanning the engine's limits: it prices
like the kernel model (its held-back error against it is recorded in the profile) in the
portable profile form, and can never be the worse of the two by more than that error.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from simserve.calibration.calibrate import CalibrationOutcome, calibrate_steps
from simserve.calibration.datasets import StepData, prefill_shape
from simserve.catalog import GpuSpec, ModelSpec
from simserve.config import CostModelConfig, EngineConfig
from simserve.costmodel.base import BatchShape
from simserve.costmodel.calibrated import Arch
from simserve.costmodel.select import kernel_cost_model
from simserve.errors import InputError

__all__ = ["derive_from_kernels", "kernel_step_grid"]

_PREFILL_BATCHES = (1, 2, 4, 8)
_PREFILL_TOKENS = (64, 256, 512, 1024, 2048, 4096)
_DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 192, 256)
_CONTEXTS = (128, 512, 1024, 2048, 4096)
_MIXED = ((16, 256), (64, 512), (128, 1024), (32, 1792))  # (decodes, prefill chunk tokens)


def kernel_step_grid(max_num_seqs: int, max_num_batched_tokens: int) -> list[dict[str, float]]:
    """Prefill, decode and mixed step shapes inside an engine's limits."""
    shapes: list[dict[str, float]] = []
    for b, q in itertools.product(_PREFILL_BATCHES, _PREFILL_TOKENS):
        if b * q <= max(max_num_batched_tokens, q):
            shapes.append(prefill_shape(b, q))
    for b, ctx in itertools.product(_DECODE_BATCHES, _CONTEXTS):
        if b <= max_num_seqs:
            shapes.append({"num_decode_seqs": b, "num_decode_tokens": b,
                           "decode_kv_tokens": b * ctx})
    for (b, q), ctx in itertools.product(_MIXED, (512, 2048)):
        if b <= max_num_seqs and b + q <= max_num_batched_tokens:
            shapes.append({**prefill_shape(1, q, cached=ctx), "num_decode_seqs": b,
                           "num_decode_tokens": b, "decode_kv_tokens": b * ctx})
    return shapes


def _shape(row: dict[str, float]) -> BatchShape:
    return BatchShape(**{f: (float(v) if f == "prefill_attn_pairs" else int(v))
                         for f, v in row.items()})


def derive_from_kernels(
    gpu: GpuSpec, model: ModelSpec, tp: int, *, engine: EngineConfig,
    name: str | None = None, base: str | None = None,
) -> CalibrationOutcome:
    """A step profile for (gpu, model, tp) fitted to the kernel model (InputError where the
    kernel tables cannot price it)."""
    if model.is_moe:
        raise InputError(f"{model.name} is a mixture of experts, which the profile form cannot "
                         "express; use cost_model.kind kernels", field="--model")
    km = kernel_cost_model(CostModelConfig(kind="kernels"), gpu, model, tp, engine)
    rows = kernel_step_grid(engine.max_num_seqs, engine.max_num_batched_tokens)
    shapes = {f: np.array([r.get(f, 0) for r in rows], dtype=np.float64)
              for f in BatchShape._fields}
    times = np.array([km.step_time(_shape(r)) for r in rows]) * 1e3
    version = engine.version or "v1"
    data = StepData(
        dataset="kernels", source=f"calibration/kernels/vllm/{gpu.name}", gpu=gpu.name,
        model=model.name, tp=tp, engine=f"vllm-{version}", arch=Arch.from_model(model),
        shapes=shapes, time_ms=times,
        notes=(f"the kernel model's step times (measured vLLM kernels of {gpu.name}, engine "
               f"loop {version}) on {len(rows)} prefill, decode and mixed shapes",),
    )
    out = calibrate_steps(data, name=name or f"{gpu.name}_{model.name}_tp{tp}_derived-kernels")
    profile = out.profile
    derived = {"kernels": km.describe()["source"], "engine_version": version,
               **({"base_profile": base} if base else {})}
    profile = dataclasses.replace(profile, derived_from=derived, source={
        **profile.source, "note": "derived: fitted to the kernel model (measured kernels of "
                                  f"{gpu.name} + the {version} engine loop), not to "
                                  "measurements of this model"})
    return CalibrationOutcome(profile, out.train, out.holdout, out.holdout_in_envelope)
