"""The serving engine: KV-aware replica state, pure scheduling policies, the SimPy model.

What a user-defined policy or queue order needs is exported here: the base classes and the
built-ins to subclass, the state a policy reads and the plan it returns (docs/schedulers.md).
"""

from simserve.engine.plan import StepPlan
from simserve.engine.policies import (
    POLICIES,
    BatchingPolicy,
    ChunkedPrefillPolicy,
    MixedPolicy,
    PrefillFirstPolicy,
    StaticPolicy,
    fit_decodes,
)
from simserve.engine.queues import QUEUES, FCFSQueue, KeyedQueue
from simserve.engine.records import REJECT_REASONS, SimulationResult, StepRecords
from simserve.engine.setup import EngineLimits, EngineSetup, PoolSetup, Speculation
from simserve.engine.simulation import simulate
from simserve.engine.state import PrefillEntry, ReplicaState, RequestTable

__all__ = [
    "POLICIES",
    "QUEUES",
    "REJECT_REASONS",
    "BatchingPolicy",
    "ChunkedPrefillPolicy",
    "EngineLimits",
    "EngineSetup",
    "FCFSQueue",
    "KeyedQueue",
    "MixedPolicy",
    "PoolSetup",
    "PrefillEntry",
    "PrefillFirstPolicy",
    "ReplicaState",
    "RequestTable",
    "SimulationResult",
    "Speculation",
    "StaticPolicy",
    "StepPlan",
    "StepRecords",
    "fit_decodes",
    "simulate",
]
