"""Routers: which replica a new request joins, decided once at arrival."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Routable", "route"]


class Routable(Protocol):
    """What a router reads of an instance (a replica state, or an instance of several)."""

    @property
    def num_outstanding(self) -> int: ...

    @property
    def free_blocks(self) -> int: ...

    @property
    def num_blocks(self) -> int: ...

    def cached_tokens(self, request_id: int) -> int: ...


def route(name: str, replicas: Sequence[Routable], request_index: int, request_id: int = -1,
          prompt_len: int = 1, load_weight: float = 0.5,
          eligible: Sequence[int] | None = None) -> int:
    """Index of the replica for a request (`request_id`, with a `prompt_len`-token prompt),
    among the `eligible` indices (unset: all).

    `round_robin` takes the first eligible replica from index `request_index` on (the caller
    passes one past its last choice), cycling; `least_outstanding` picks the fewest waiting +
    running requests; `least_kv` the largest free share of its KV blocks (free / total: the
    order of free blocks when the replicas are alike); `prefix_aware` the highest score
    `cached / prompt_len - load_weight * outstanding / (most outstanding + 1)`: the share of
    the prompt the replica's prefix cache holds, less its load relative to the busiest one,
    the trade-off cache-aware gateways weigh (SGLang's router, llm-d's prefix-cache and load
    scorers). Ties go to the lowest index, so routing is deterministic and needs no random
    numbers.

    NOTE: with unlike replicas (replica groups on different GPUs), round robin ignores speed,
    as a gateway's round robin does; least_outstanding sends more to the faster replicas only
    because they drain their queues sooner; least_kv compares KV usage as a fraction, as the
    Gateway API Inference Extension's kv-cache-utilization scorer (used by llm-d) scores an
    endpoint 1 - its vLLM KV-cache usage fraction, so a smaller cache is not avoided for being
    small.
    """
    candidates: Sequence[int] = range(len(replicas)) if eligible is None else eligible
    if len(candidates) == 1:
        return candidates[0]
    if name == "round_robin":
        start = request_index % len(replicas)
        return next((i for i in candidates if i >= start), candidates[0])
    if name == "least_outstanding":
        return min(candidates, key=lambda i: replicas[i].num_outstanding)
    if name == "least_kv":
        return max(candidates,
                   key=lambda i: (replicas[i].free_blocks / (replicas[i].num_blocks or 1), -i))
    if name == "prefix_aware":
        loads = {i: replicas[i].num_outstanding for i in candidates}
        scale = max(loads.values()) + 1
        scores = {i: replicas[i].cached_tokens(request_id) / prompt_len
                  - load_weight * loads[i] / scale for i in candidates}
        return max(candidates, key=lambda i: (scores[i], -i))
    raise ValueError(f"unknown router {name!r}")
