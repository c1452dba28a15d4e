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


def route(name: str, replicas: Sequence[Routable], request_index: int) -> int:
    """Index of the replica for the `request_index`-th routed request.

    `round_robin` cycles; `least_outstanding` picks the fewest waiting + running requests;
    `least_kv` picks the most free KV blocks. Ties go to the lowest index, so routing is
    deterministic and needs no random numbers.
    """
    if len(replicas) == 1:
        return 0
    if name == "round_robin":
        return request_index % len(replicas)
    if name == "least_outstanding":
        return min(range(len(replicas)), key=lambda i: replicas[i].num_outstanding)
    if name == "least_kv":
        return max(range(len(replicas)), key=lambda i: (replicas[i].free_blocks, -i))
    raise ValueError(f"unknown router {name!r}")
