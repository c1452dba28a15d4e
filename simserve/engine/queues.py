"""Queue order: in which order waiting requests are admitted, and running ones preempted.

Queue order is an axis of its own, independent of the batching policy (vLLM's
`v1/core/sched/request_queue.py` separates them the same way): every policy walks
`state.waiting` in the queue's order and preempts in the order `preemption_order` gives.

- `fcfs` (vLLM's default): arrival order; a preempted request goes back to the front, and the
  most recently admitted running request is preempted first.
- `priority` (vLLM's `--scheduling-policy priority`): lower `priority` value first, then
  arrival; a preempted request goes back by that key, and the running request with the
  largest key (lowest priority, latest arrival) is preempted first.
- `shortest_prompt`, `shortest_remaining` (output tokens still to generate: an oracle, as
  simulators know output lengths; real schedulers predict them), `deadline` (earliest TTFT
  deadline first, EDF): the same rules with their keys.

A variant is a class with a `key` (SimPy's `PriorityResource` is likewise one class
attribute away from `Resource`); user-defined orders subclass `KeyedQueue`.
"""

from __future__ import annotations

from bisect import insort
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from simserve.engine.state import RequestTable

__all__ = [
    "QUEUES",
    "DeadlineQueue",
    "FCFSQueue",
    "KeyedQueue",
    "PriorityQueue",
    "ShortestPromptQueue",
    "ShortestRemainingQueue",
]


class FCFSQueue:
    """First come, first served (see the module docstring)."""

    name: ClassVar[str] = "fcfs"
    #: Preemption victims: the most recently admitted first (vLLM's FCFS); otherwise by key.
    preempts_newest: ClassVar[bool] = True

    def __init__(self, requests: RequestTable) -> None:
        self.requests = requests
        self._queue: deque[int] = deque()

    def push(self, request_id: int) -> None:
        """A request arrives."""
        self._queue.append(request_id)

    def push_preempted(self, request_id: int) -> None:
        """A preempted request comes back (vLLM prepends it)."""
        self._queue.appendleft(request_id)

    def take(self, request_ids: Sequence[int]) -> None:
        """Remove admitted requests (usually the head of the queue, in order)."""
        queue = self._queue
        for rid in request_ids:
            if queue and queue[0] == rid:
                queue.popleft()
            else:
                queue.remove(rid)

    def key(self, request_id: int) -> tuple:
        """Sort key of a request (smaller goes first); FCFS: arrival."""
        return (self.requests.arrived_at[request_id], request_id)

    def running_key(self, request_id: int, remaining_output: int) -> tuple:
        """`key` of a running request, which has `remaining_output` tokens still to emit."""
        return self.key(request_id)

    def __iter__(self) -> Iterator[int]:
        return iter(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:
        return bool(self._queue)


class KeyedQueue(FCFSQueue):
    """Waiting requests sorted by `key` (smaller first, computed when a request is queued);
    preempted requests go back by their key, and the running request with the largest key is
    preempted first. Subclasses define `name` and `key`."""

    preempts_newest = False

    def __init__(self, requests: RequestTable) -> None:
        super().__init__(requests)
        self._sorted: list[tuple[tuple, int]] = []

    def push(self, request_id: int) -> None:
        insort(self._sorted, (self.key(request_id), request_id))

    push_preempted = push

    def take(self, request_ids: Sequence[int]) -> None:
        taken = set(request_ids)
        head = 0
        while head < len(self._sorted) and self._sorted[head][1] in taken:
            head += 1
        del self._sorted[:head]
        if head < len(taken):
            self._sorted = [e for e in self._sorted if e[1] not in taken]

    def __iter__(self) -> Iterator[int]:
        return (rid for _, rid in self._sorted)

    def __len__(self) -> int:
        return len(self._sorted)

    def __bool__(self) -> bool:
        return bool(self._sorted)


class PriorityQueue(KeyedQueue):
    """Lower `priority` first, then arrival (vLLM's priority policy)."""

    name = "priority"

    def key(self, request_id: int) -> tuple:
        r = self.requests
        return (r.priority[request_id], r.arrived_at[request_id], request_id)


class ShortestPromptQueue(KeyedQueue):
    """Shortest prompt first, then arrival."""

    name = "shortest_prompt"

    def key(self, request_id: int) -> tuple:
        r = self.requests
        return (r.prompt_len[request_id], r.arrived_at[request_id], request_id)


class ShortestRemainingQueue(KeyedQueue):
    """Fewest output tokens still to generate first (an oracle of the output length), then
    arrival."""

    name = "shortest_remaining"

    def key(self, request_id: int) -> tuple:
        r = self.requests
        return self.running_key(request_id, r.output_len[request_id] - r.emitted[request_id])

    def running_key(self, request_id: int, remaining_output: int) -> tuple:
        return (remaining_output, self.requests.arrived_at[request_id], request_id)


class DeadlineQueue(KeyedQueue):
    """Earliest TTFT deadline first (EDF): each request's deadline is its arrival plus its
    TTFT budget, which may depend on its prompt length and its class."""

    name = "deadline"

    def key(self, request_id: int) -> tuple:
        r = self.requests
        # NOTE: closed-loop requests get their arrival time when they are sent, before this.
        return (r.arrived_at[request_id] + r.ttft_budget_s[request_id], request_id)


QUEUES: dict[str, type[FCFSQueue]] = {
    q.name: q
    for q in (FCFSQueue, PriorityQueue, ShortestPromptQueue, ShortestRemainingQueue,
              DeadlineQueue)
}
