"""The serving engine: KV-aware replica state, pure scheduling policies, the SimPy model."""

from simserve.engine.plan import StepPlan
from simserve.engine.policies import POLICIES, make_policy
from simserve.engine.records import REJECT_REASONS, SimulationResult, StepRecords
from simserve.engine.simulation import EngineLimits, simulate

__all__ = [
    "POLICIES",
    "REJECT_REASONS",
    "EngineLimits",
    "SimulationResult",
    "StepPlan",
    "StepRecords",
    "make_policy",
    "simulate",
]
