"""Serving-loop time outside the forward pass, added to any cost model's step time.

Step profiles (DistServe's, Vidur's, splitwise-sim's, `calibration/profile_gpu.py`) time the
model's forward pass in isolation. A serving engine also spends time on every step outside it:
the scheduler's pass, the call from the engine to its GPU workers (a Ray remote call per step in
DistServe and vLLM v0), and per sequence sampling, detokenising and streaming the token (vLLM
v0's Python output processing grows with batch size, which is why vLLM 0.6 moved it off the
critical path, vLLM blog 2024-09-05). Offline profiles cannot see this; it is fitted on a
served run (`simserve/calibration/serving.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simserve.costmodel.base import (
    BatchShape,
    CostModel,
    decode_run_s,
    decode_step_fn,
    envelope_report,
    envelope_warnings,
)
from simserve.costmodel.pipeline import StepParts, step_parts

__all__ = ["ServingOverheadCostModel"]


@dataclass(frozen=True)
class ServingOverheadCostModel:
    """`base`'s step time plus `per_step_s` and `per_seq_s` for every sequence in the batch."""

    base: CostModel
    per_step_s: float = 0.0
    per_seq_s: float = 0.0

    def step_time(self, shape: BatchShape) -> float:
        seqs = shape.num_prefill_seqs + shape.num_decode_seqs
        return self.base.step_time(shape) + self.per_step_s + self.per_seq_s * seqs

    def step_parts(self, shape: BatchShape) -> StepParts:
        """The base's parts; this time outside the forward pass is the engine's CPU work."""
        seqs = shape.num_prefill_seqs + shape.num_decode_seqs
        return step_parts(self.base, shape).with_host(self.per_step_s + self.per_seq_s * seqs)

    def decode_step_fn(self, num_seqs: int) -> Callable[[int], float]:
        base = decode_step_fn(self.base, num_seqs)
        per_step, per_seqs = self.per_step_s, self.per_seq_s * num_seqs
        return lambda kv: base(kv) + per_step + per_seqs

    def decode_run_s(self, num_seqs: int, decode_kv_tokens: np.ndarray) -> np.ndarray:
        out = decode_run_s(self.base, num_seqs, decode_kv_tokens) + self.per_step_s
        out += self.per_seq_s * num_seqs
        return out

    def describe(self) -> dict[str, object]:
        return {
            **self.base.describe(),
            "serving_step_ms": self.per_step_s * 1e3,
            "serving_per_seq_ms": self.per_seq_s * 1e3,
        }

    def envelope_warnings(self, steps: object) -> list[str]:
        return envelope_warnings(self.base, steps)

    def envelope_report(self, steps: object) -> dict[str, object] | None:
        return envelope_report(self.base, steps)
