"""A cost model where every step takes the same time: exact timelines for tests and teaching."""

from __future__ import annotations

from dataclasses import dataclass

from simserve.costmodel.base import BatchShape

__all__ = ["ConstantCostModel"]


@dataclass(frozen=True)
class ConstantCostModel:
    step_time_s: float

    def step_time(self, shape: BatchShape) -> float:
        return self.step_time_s

    def describe(self) -> dict[str, object]:
        return {"kind": "constant", "step_time_ms": self.step_time_s * 1e3}
