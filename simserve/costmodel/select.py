"""Pick and build the cost model a scenario asks for."""

from __future__ import annotations

from simserve.catalog import GpuSpec, ModelSpec
from simserve.config import CostModelConfig
from simserve.costmodel.base import CostModel
from simserve.costmodel.constant import ConstantCostModel
from simserve.costmodel.roofline import RooflineCostModel

__all__ = ["build_cost_model"]


def build_cost_model(
    config: CostModelConfig, gpu: GpuSpec, model: ModelSpec, tp: int
) -> CostModel:
    """The configured cost model for one replica."""
    if config.kind == "constant":
        return ConstantCostModel(config.step_time_ms * 1e-3)
    return RooflineCostModel(gpu=gpu, model=model, tp=tp, config=config)
