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

    def cached_tokens(self, request_id: int) -> int: ...


def route(name: str, replicas: Sequence[Routable], request_index: int, request_id: int = -1,
          prompt_len: int = 1, load_weight: float = 0.5) -> int:
    """Index of the replica for the `request_index`-th routed request (`request_id`, with a
    `prompt_len`-token prompt).

    `round_robin` cycles; `least_outstanding` picks the fewest waiting + running requests;
    `least_kv` picks the most free KV blocks; `prefix_aware` picks the highest score
    `cached / prompt_len - load_weight * outstanding / (most outstanding + 1)`: the share of
    the prompt the replica's prefix cache holds, less its load relative to the busiest one,
    the trade-off cache-aware gateways weigh (SGLang's router, llm-d's prefix-cache and load
    scorers). Ties go to the lowest index, so routing is deterministic and needs no random
    numbers.
    """
    if len(replicas) == 1:
        return 0
    if name == "round_robin":
        return request_index % len(replicas)
    if name == "least_outstanding":
        return min(range(len(replicas)), key=lambda i: replicas[i].num_outstanding)
    if name == "least_kv":
        return max(range(len(replicas)), key=lambda i: (replicas[i].free_blocks, -i))
    if name == "prefix_aware":
        loads = [r.num_outstanding for r in replicas]
        scale = max(loads) + 1
        scores = [r.cached_tokens(request_id) / prompt_len - load_weight * load / scale
                  for r, load in zip(replicas, loads, strict=True)]
        return max(range(len(replicas)), key=lambda i: (scores[i], -i))
    raise ValueError(f"unknown router {name!r}")
