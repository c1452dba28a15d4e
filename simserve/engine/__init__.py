"""The serving engine: KV-aware replica state, pure scheduling policies, the SimPy model."""

from simserve.engine.plan import StepPlan
from simserve.engine.policies import POLICIES, BatchingPolicy
from simserve.engine.queues import QUEUES, FCFSQueue, KeyedQueue
from simserve.engine.records import REJECT_REASONS, SimulationResult, StepRecords
from simserve.engine.setup import EngineLimits, EngineSetup, PoolSetup, Speculation
from simserve.engine.simulation import simulate

__all__ = [
    "POLICIES",
    "QUEUES",
    "REJECT_REASONS",
    "BatchingPolicy",
    "EngineLimits",
    "EngineSetup",
    "FCFSQueue",
    "KeyedQueue",
    "PoolSetup",
    "SimulationResult",
    "Speculation",
    "StepPlan",
    "StepRecords",
    "simulate",
]
