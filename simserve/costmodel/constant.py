"""A cost model where every step takes the same time: exact timelines for tests and teaching."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simserve.costmodel.base import BatchShape

__all__ = ["ConstantCostModel"]


@dataclass(frozen=True)
class ConstantCostModel:
    step_time_s: float

    def step_time(self, shape: BatchShape) -> float:
        return self.step_time_s

    def decode_step_fn(self, num_seqs: int) -> Callable[[int], float]:
        step_s = self.step_time_s
        return lambda kv: step_s

    def decode_run_s(self, num_seqs: int, decode_kv_tokens: np.ndarray) -> np.ndarray:
        return np.full(decode_kv_tokens.size, self.step_time_s)

    def describe(self) -> dict[str, object]:
        return {"kind": "constant", "step_time_ms": self.step_time_s * 1e3}
