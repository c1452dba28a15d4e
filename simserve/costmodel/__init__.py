"""Step-time models: how long one engine step of a given batch shape takes (DESIGN §4)."""

from simserve.costmodel.base import BatchShape, CostModel, envelope_report, envelope_warnings
from simserve.costmodel.calibrated import CalibratedCostModel
from simserve.costmodel.constant import ConstantCostModel
from simserve.costmodel.roofline import RooflineCostModel
from simserve.costmodel.select import build_cost_model

__all__ = [
    "BatchShape",
    "CalibratedCostModel",
    "ConstantCostModel",
    "CostModel",
    "RooflineCostModel",
    "build_cost_model",
    "envelope_report",
    "envelope_warnings",
]
