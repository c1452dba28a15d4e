"""What the figures read off a `SimulationResult` about its instances: each instance's steps
in time order and their end times, what an instance does (co-located replica, prefill or
decode instance) and its label, whether it runs pipeline-parallel virtual engines, and the KV
handoff of a disaggregated run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simserve.engine.records import SimulationResult


def _step_ends_s(result: SimulationResult) -> np.ndarray:
    """End time of every step, computed exactly as the engine stamps its tokens."""
    return result.steps.started_at + result.steps.duration_s


def _replica_step_ids(result: SimulationResult, replica: int) -> np.ndarray:
    """Indices of one replica's steps in time order."""
    ids = np.flatnonzero(result.steps.replica == replica)
    return ids[np.argsort(result.steps.started_at[ids], kind="stable")]


def _role(result: SimulationResult, replica: int) -> str:
    """What an instance does: "replica" (co-located), "prefill" or "decode" (disaggregated).

    A disaggregated run's `replica` column holds prefill instances only and `decode_replica`
    decode instances only, so the records alone tell them apart.
    """
    if result.decode_replica is None:
        return "replica"
    return "decode" if np.any(result.decode_replica == replica) else "prefill"


def _instance_label(result: SimulationResult, replica: int) -> str:
    """"replica 2", "prefill instance 0" or "decode instance 1" (numbered within its pool).

    NOTE: decode instances follow the prefill pool's; its size is taken as the highest prefill
    instance that served a request, + 1 (`run_figures` passes exact labels instead).
    """
    role = _role(result, replica)
    if role == "replica":
        return f"replica {replica}"
    if role == "prefill":
        return f"prefill instance {replica}"
    routed = result.replica[result.replica >= 0]
    first_decode = int(routed.max()) + 1 if routed.size else 0
    return f"decode instance {replica - first_decode}"


@dataclass(frozen=True)
class _Handoff:
    """Per request, the KV handoff of a disaggregated run (s; NaN where there was none)."""

    first_token: np.ndarray  # end of the prefill on the prefill instance
    start: np.ndarray  # KV transfer starts (after waiting for a decode slot/blocks, the link)
    end: np.ndarray  # transfer ends: prefill instance frees the blocks, decode gets them


def _handoff(result: SimulationResult) -> _Handoff | None:
    """KV handoff times of every request, or None for a co-located run."""
    start = result.kv_transfer_started_at
    if start is None or result.kv_transfer_s is None:
        return None
    return _Handoff(result.first_token_at, start, start + result.kv_transfer_s)


def _has_virtual_engines(result: SimulationResult, step_ids: np.ndarray) -> bool:
    """True when one instance's steps overlap in time: pipeline-parallel virtual engines, each
    with its own share of the KV blocks, take turns in its step log."""
    if step_ids.size < 2:
        return False
    ends = _step_ends_s(result)[step_ids]
    return bool(np.any(result.steps.started_at[step_ids[1:]] < ends[:-1] - 1e-12))
