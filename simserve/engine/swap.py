"""The CPU swap space of one engine (vLLM v0's `swap_space`): where swap preemption keeps the KV
blocks of the requests it preempted until they resume, and what moving them cost.

NOTE: vLLM v0's `PreemptionMode.SWAP` copies a preempted request's GPU blocks to CPU blocks
(`blocks_to_swap_out`) and, when it is scheduled again, back (`blocks_to_swap_in`); its worker
issues both copies in `execute_worker`, on the model's stream, before the forward pass of the
step that planned them, so their time adds to that step (docs/kv_tiers.md). Its scheduler
divides the CPU blocks among the virtual engines of a pipeline-parallel instance as it does
the GPU blocks.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["SwapSpace"]


class SwapSpace:
    """Swapped-out requests of one engine and their CPU blocks, with running totals.

    `copy_s(num_blocks)` is the time to copy that many blocks one way between GPU and host
    memory (the engine's share of a step: every GPU copies its own shard); `block_bytes` is
    one block's size over all the engine's GPUs.
    """

    def __init__(self, num_blocks: int, copy_s: Callable[[int], float],
                 block_bytes: float = 0.0) -> None:
        self.num_blocks = num_blocks
        self.block_bytes = block_bytes
        self.free_blocks = num_blocks
        self.copy_s = copy_s
        # Request id -> (computed tokens, CPU blocks, when it was swapped out).
        self._swapped: dict[int, tuple[int, int, float]] = {}
        self.num_swap_outs = 0
        self.num_swap_ins = 0
        self.blocks_out = 0
        self.blocks_in = 0
        self.blocks_discarded = 0  # of requests cancelled while swapped out
        self.copy_time_s = 0.0  # step time spent copying, both ways
        self.swapped_s = 0.0  # request-seconds spent swapped out (time in the CPU tier)
        self.block_s = 0.0  # block-seconds of CPU memory held

    def __contains__(self, request_id: int) -> bool:
        return request_id in self._swapped

    def __len__(self) -> int:
        return len(self._swapped)

    def computed(self, request_id: int) -> int:
        """Tokens whose KV a swapped-out request has in CPU memory."""
        return self._swapped[request_id][0]

    def swap_out(self, request_id: int, num_computed: int, num_blocks: int,
                 now: float) -> float | None:
        """Keep a preempted request's `num_blocks` blocks (`num_computed` tokens) in CPU
        memory; returns the copy's seconds, or None when the CPU blocks do not suffice."""
        if num_blocks > self.free_blocks:
            return None
        self.free_blocks -= num_blocks
        self._swapped[request_id] = (num_computed, num_blocks, now)
        self.num_swap_outs += 1
        self.blocks_out += num_blocks
        copy_s = self.copy_s(num_blocks)
        self.copy_time_s += copy_s
        return copy_s

    def swap_in(self, request_id: int, now: float) -> tuple[int, int, float]:
        """Bring a swapped-out request's blocks back to the GPU: (computed tokens, blocks,
        the copy's seconds); its CPU blocks are free again."""
        num_computed, num_blocks = self._leave(request_id, now)
        self.num_swap_ins += 1
        self.blocks_in += num_blocks
        copy_s = self.copy_s(num_blocks)
        self.copy_time_s += copy_s
        return num_computed, num_blocks, copy_s

    def discard(self, request_id: int, now: float) -> None:
        """A swapped-out request is cancelled: its CPU blocks are free, nothing is copied."""
        self.blocks_discarded += self._leave(request_id, now)[1]

    def _leave(self, request_id: int, now: float) -> tuple[int, int]:
        num_computed, num_blocks, since = self._swapped.pop(request_id)
        self.free_blocks += num_blocks
        self.swapped_s += now - since
        self.block_s += num_blocks * (now - since)
        return num_computed, num_blocks

    def check(self) -> None:
        """Raise AssertionError if the CPU blocks are not conserved (for tests): free plus
        the blocks of the swapped-out requests is the total, and blocks out less those
        copied back in or dropped with a cancelled request is what is held."""
        held = sum(b for _c, b, _t in self._swapped.values())
        assert self.free_blocks + held == self.num_blocks, (self.free_blocks, held)
        assert self.blocks_out - self.blocks_in - self.blocks_discarded == held, (
            self.blocks_out, self.blocks_in, self.blocks_discarded, held)
        assert 0 <= self.free_blocks <= self.num_blocks
