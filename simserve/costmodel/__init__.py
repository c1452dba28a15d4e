"""Step-time models: how long one engine step of a given batch shape takes (DESIGN §4)."""

from simserve.costmodel.base import BatchShape, CostModel, envelope_warnings
from simserve.costmodel.constant import ConstantCostModel
from simserve.costmodel.roofline import RooflineCostModel
from simserve.costmodel.select import build_cost_model

__all__ = [
    "BatchShape",
    "ConstantCostModel",
    "CostModel",
    "RooflineCostModel",
    "build_cost_model",
    "envelope_warnings",
]
