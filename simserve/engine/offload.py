"""The host-memory tier of one engine's prefix cache (vLLM V1-style CPU KV offload).

NOTE: vLLM V1's CPU offloading connector (`OffloadingConnector`, `--kv-offloading-size`) saves
computed KV blocks to a pool of CPU blocks on a separate CUDA stream (overlapping the model's
steps), evicts that pool least recently used first, and when a new request's prefix misses the
GPU prefix cache but continues in the CPU pool, loads those blocks back asynchronously: the
request waits for its load (`WAITING_FOR_REMOTE_KVS`) while the engine keeps stepping the
others, then is scheduled with the loaded tokens computed. simserve keeps a block in this tier
when the GPU cache evicts it (vLLM writes every block through as it is computed; the blocks a
lookup can find here are the same, those still on the GPU being found there first).

Like the GPU cache (`engine.prefix_cache`), blocks are named by content space and index, and
the tier holds one run `[first, end)` per space, so storing and finding are a few dictionary
operations whatever the lengths.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["CpuTier"]


class CpuTier:
    """Evicted prefix-cache blocks kept in `num_blocks` host-memory blocks, least recently
    used spaces dropped first (from their end, as the GPU cache evicts)."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.used = 0
        self._runs: dict[int, list[int]] = {}
        self._lru: OrderedDict[int, None] = OrderedDict()
        self.stored_blocks = 0
        self.dropped_blocks = 0
        self.loaded_blocks = 0
        self.num_loads = 0
        self.load_s = 0.0  # load time, summed over loads (overlapping the steps)

    def run(self, space: int) -> list[int] | None:
        """The run `[first, end)` of `space` held here (None: none)."""
        return self._runs.get(space)

    def store(self, space: int, first: int, end: int) -> None:
        """Blocks `[first, end)` of `space` leave GPU memory: keep them. A run they touch
        grows to cover both; one they do not touch is replaced, since the GPU still holds the
        blocks between them, so a lookup reaches the new run first."""
        if end <= first or self.num_blocks == 0:
            return
        run = self._runs.get(space)
        if run is None:
            self._runs[space] = [first, end]
            added = end - first
        elif first <= run[1] and end >= run[0]:
            old = run[1] - run[0]
            run[0], run[1] = min(run[0], first), max(run[1], end)
            added = run[1] - run[0] - old
        else:
            added = (end - first) - (run[1] - run[0])
            run[0], run[1] = first, end
        self.used += added
        self.stored_blocks += max(added, 0)
        self._lru[space] = None
        self._lru.move_to_end(space)
        self._shrink()

    def _shrink(self) -> None:
        excess = self.used - self.num_blocks
        while excess > 0:
            space = next(iter(self._lru))
            run = self._runs[space]
            room = run[1] - run[0]
            if room > excess:
                run[1] -= excess
                self.dropped_blocks += excess
                self.used -= excess
                return
            del self._runs[space], self._lru[space]
            self.dropped_blocks += room
            self.used -= room
            excess -= room

    def load(self, spaces: list[int], num_blocks: int, load_s: float) -> None:
        """A request loads `num_blocks` blocks of these spaces back to the GPU (they stay here
        too, now most recently used)."""
        for space in spaces:
            if space in self._lru:
                self._lru.move_to_end(space)
        self.loaded_blocks += num_blocks
        self.num_loads += 1
        self.load_s += load_s

    def check(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (for tests)."""
        assert self.used == sum(b - a for a, b in self._runs.values()), self._runs
        assert all(a < b for a, b in self._runs.values()), self._runs
        assert 0 <= self.used <= self.num_blocks, (self.used, self.num_blocks)
        assert set(self._runs) == set(self._lru)
