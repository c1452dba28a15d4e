"""Automatic prefix caching of one engine's KV blocks, as vLLM V1 does it, kept as counts.

vLLM names every full KV block by a hash chained over the tokens before it, keeps a freed
block's content until its memory is needed, and lets a new request skip the longest run of
leading blocks that are cached (always recomputing at least its last prompt token). Here a
block is named by its content space and index (`workload.content`): the blocks of a space
that are cached are always a run `[first, end)`, so a space is three numbers and a count of
the requests holding each prefix of it, never a list of blocks. Per request this costs a few
dictionary operations, whatever its length.

Accounting (the engine's `free_blocks` counts every block a new allocation may take):

- a cached block some running request holds is *in use*; one nobody holds is *evictable* and
  counts as free; `evictable` is their number;
- a request holds the cached blocks it hit or registered (`refs`), the rest of its blocks
  are its own; when it leaves, its own blocks are free again and the cached ones nobody else
  holds become evictable (the space moves to the most recently used end);
- when allocations leave fewer free blocks than evictable ones, the least recently used
  space loses blocks from its end (vLLM frees a request's blocks tail first, so a prefix
  outlives its continuation).

A request's full blocks are registered when the step that computes them ends (vLLM V1
registers them when it allocates them, so a request scheduled in the same step may already
hit them: the difference is at most one step).

With CPU offload (`engine.offload.CpuTier`), evicted blocks move to host memory, and a lookup
that stops on the GPU goes on there (`lookup_cpu`).
"""

from __future__ import annotations

from collections import OrderedDict

from simserve.engine.offload import CpuTier
from simserve.workload.content import STREAM, SharedContent

__all__ = ["PrefixCache"]


class _Space:
    """The cached run `[first, end)` of one content space, and how many requests hold each
    prefix `[first, e)` of it (`holders[e]`); `held_end` is the largest such `e`."""

    __slots__ = ("end", "first", "held_end", "holders")

    def __init__(self, first: int, end: int) -> None:
        self.first = first
        self.end = end
        self.holders: dict[int, int] = {}
        self.held_end = first

    def __repr__(self) -> str:
        return f"_Space(first={self.first}, end={self.end}, held_end={self.held_end}, " \
               f"holders={self.holders})"

    @property
    def evictable(self) -> int:
        return self.end - self.held_end


class PrefixCache:
    """The prefix cache of one engine (see the module docstring)."""

    def __init__(self, content: SharedContent | None, block_size: int,
                 prompt_len, output_len, cpu: CpuTier | None = None) -> None:
        self.content = content if content is not None else SharedContent()
        c = self.content
        # Nothing shared between requests: a request's blocks can only be found by its own
        # recompute, which comes after it left, so they are registered when it leaves (not
        # chunk by chunk) and a lookup is one dictionary probe.
        self._own_only = c.group is None and c.hash_ids is None and c.stream is None
        #: Whether blocks are registered as each chunk is computed (else when a request leaves).
        self.registers_chunks = not self._own_only
        self.block_size = block_size
        self._prompt_len = prompt_len
        self._output_len = output_len
        self._spaces: dict[int, _Space] = {}
        # Spaces with evictable blocks, least recently released first.
        self._lru: OrderedDict[int, None] = OrderedDict()
        self.evictable = 0
        # Per running request: [space, end] of every cached prefix it holds.
        self._refs: dict[int, list[list[int]]] = {}
        # Changes whenever what a lookup would return may change (memoised lookups check it).
        self.version = 0
        # vLLM's prefix-cache counters: tokens looked up and found, over admissions.
        self.queried_tokens = 0
        self.hit_tokens = 0
        # Host-memory tier of evicted blocks (None: no CPU offload).
        self.cpu = cpu

    # ------------------------------------------------------------------ lookups

    def _segments(self, request_id: int, num_tokens: int) -> list[tuple[int, int, int]]:
        return self.content.segments(request_id, self.block_size, num_tokens,
                                     self._prompt_len[request_id])

    def surely_misses(self, request_id: int) -> bool:
        """A cheap answer for the common case: nothing shared, and nothing of this request
        cached (it never left an engine before)."""
        if not self._own_only:
            return False
        key = STREAM + 3 * request_id
        return key not in self._spaces and (self.cpu is None or self.cpu.run(key) is None)

    def lookup(self, request_id: int, num_tokens: int) -> tuple[int, int]:
        """(cached leading blocks, of them evictable now) of a request about to compute
        `num_tokens` tokens: at most `num_tokens - 1` of them (the last one is always
        computed, as in vLLM)."""
        hit = taken = 0
        spaces = self._spaces
        if self._own_only and STREAM + 3 * request_id not in spaces:
            return 0, 0
        for space, first, count in self._segments(request_id, num_tokens - 1):
            sp = spaces.get(space)
            if sp is None or sp.first != first:
                break
            found = min(count, sp.end - first)
            hit += found
            if first + found > sp.held_end:
                taken += first + found - sp.held_end
            if found < count:
                break
        return hit, taken

    def lookup_cpu(self, request_id: int, num_tokens: int,
                   gpu_hit: int) -> tuple[int, list[int]]:
        """Blocks after a lookup's `gpu_hit` leading blocks that the CPU tier holds (at most
        `num_tokens - 1` tokens' worth in all, as `lookup`), and their spaces."""
        cpu = self.cpu
        if cpu is None or not cpu.used:
            return 0, []
        pos = loaded = 0
        spaces: list[int] = []
        for space, first, count in self._segments(request_id, num_tokens - 1):
            if pos + count <= gpu_hit:
                pos += count
                continue
            offset = gpu_hit + loaded - pos
            run = cpu.run(space)
            start = first + offset
            if run is None or not run[0] <= start < run[1]:
                break
            found = min(count - offset, run[1] - start)
            loaded += found
            spaces.append(space)
            if found < count - offset:
                break
            pos += count
        return loaded, spaces

    # ------------------------------------------------------------------ holding

    def acquire(self, request_id: int, num_tokens: int, hit_blocks: int) -> int:
        """A request admitted to compute `num_tokens` tokens holds its first `hit_blocks`
        cached blocks; returns how many of them were evictable (taken from the free pool)."""
        self.queried_tokens += num_tokens
        if hit_blocks == 0:
            return 0
        self.hit_tokens += hit_blocks * self.block_size
        self.version += 1
        taken = 0
        left = hit_blocks
        refs = self._refs.setdefault(request_id, [])
        for space, first, count in self._segments(request_id, num_tokens - 1):
            if left == 0:
                break
            end = first + min(count, left)
            left -= end - first
            taken += self._hold(space, end)
            refs.append([space, end])
        return taken

    def _hold(self, space: int, end: int) -> int:
        """One more holder of `[first, end)` of `space`; returns blocks it made unevictable."""
        sp = self._spaces[space]
        sp.holders[end] = sp.holders.get(end, 0) + 1
        if end <= sp.held_end:
            return 0
        taken = end - sp.held_end
        sp.held_end = end
        self.evictable -= taken
        if sp.evictable == 0:
            self._lru.pop(space, None)
        return taken

    def _unhold(self, space: int, end: int) -> int:
        """One holder fewer; returns blocks that became evictable."""
        sp = self._spaces[space]
        count = sp.holders[end] - 1
        if count:
            sp.holders[end] = count
        else:
            del sp.holders[end]
        if end < sp.held_end or (count and end == sp.held_end):
            return 0
        new_end = max(sp.holders, default=sp.first)
        released = sp.held_end - new_end
        sp.held_end = new_end
        self.evictable += released
        if released:
            self._lru[space] = None
            self._lru.move_to_end(space)
        return released

    def register(self, request_id: int, num_tokens: int, *, leaving: bool = False) -> None:
        """The request's full blocks of its first `num_tokens` tokens are computed: those that
        extend their space's cached run become cached (and stay held by it). Blocks some other
        request cached meanwhile stay the request's own duplicates, as in vLLM. `leaving`: it
        is about to release them."""
        if self._own_only and not leaving:
            return
        refs = self._refs.setdefault(request_id, [])
        held = {space: ref for space, ref in ((r[0], r) for r in refs)}
        spaces = self._spaces
        changed = False
        for space, first, count in self._segments(request_id, num_tokens):
            end = first + count
            sp = spaces.get(space)
            if sp is None:
                sp = spaces[space] = _Space(first, first)
            elif sp.first != first:
                break
            ref = held.get(space)
            mine = ref[1] if ref is not None else first
            if mine >= end:
                continue
            if sp.end != mine:
                break  # cached further by someone else (or a gap): no longer contiguous
            sp.end = end
            changed = True
            if ref is None:
                ref = [space, first]
                refs.append(ref)
                held[space] = ref
            self._move_hold(sp, ref[1], end)
            ref[1] = end
        if changed:
            self.version += 1

    def _move_hold(self, sp: _Space, old_end: int, new_end: int) -> None:
        """A holder's prefix grows from `old_end` to `new_end` over blocks it computed itself
        (neither free nor evictable before)."""
        if old_end > sp.first:
            count = sp.holders[old_end] - 1
            if count:
                sp.holders[old_end] = count
            else:
                del sp.holders[old_end]
        sp.holders[new_end] = sp.holders.get(new_end, 0) + 1
        if new_end > sp.held_end:
            sp.held_end = new_end

    def leave(self, request_id: int, held_blocks: int, num_computed: int) -> int:
        """A request leaves (finished, preempted, or its KV handed off) holding `held_blocks`
        blocks for `num_computed` tokens: its full blocks are registered, then released;
        returns how many blocks are free again."""
        if self._own_only and request_id not in self._refs:
            key = STREAM + 3 * request_id
            if key not in self._spaces:
                # Its first stay, nothing shared: its full blocks become one evictable run.
                blocks = num_computed // self.block_size
                if blocks:
                    self._spaces[key] = _Space(0, blocks)
                    self._lru[key] = None
                    self.evictable += blocks
                    self.version += 1
                return held_blocks
        self.register(request_id, num_computed, leaving=True)
        return self.release(request_id, held_blocks)

    def release(self, request_id: int, held_blocks: int) -> int:
        """The request leaves (finished, preempted, or its KV handed off) holding
        `held_blocks` blocks; returns how many of them are free again (its own ones, and the
        cached ones nobody else holds, which become evictable)."""
        refs = self._refs.pop(request_id, None)
        if not refs:
            return held_blocks
        self.version += 1
        shared = 0
        freed = 0
        for space, end in refs:
            sp = self._spaces[space]
            shared += end - sp.first
            freed += self._unhold(space, end)
        return held_blocks - shared + freed

    def would_free(self, request_id: int, held_blocks: int) -> int:
        """What `release` would return now (without releasing): the blocks preempting the
        request frees, its share of cached blocks others hold excepted."""
        refs = self._refs.get(request_id)
        if not refs:
            return held_blocks
        shared = freed = 0
        for space, end in refs:
            sp = self._spaces[space]
            shared += end - sp.first
            if end < sp.held_end or sp.holders[end] > 1:
                continue
            others = max((e for e in sp.holders if e != end), default=sp.first)
            freed += end - others
        return held_blocks - shared + freed

    # ------------------------------------------------------------------ eviction

    def evict(self, free_blocks: int) -> None:
        """Evict least recently released blocks until no more are evictable than free."""
        excess = self.evictable - free_blocks
        if excess <= 0:
            return
        self.version += 1
        self.evictable = free_blocks
        lru, spaces, cpu = self._lru, self._spaces, self.cpu
        while True:
            space = next(iter(lru))
            sp = spaces[space]
            room = sp.end - sp.held_end
            if room > excess:
                if cpu is not None:
                    cpu.store(space, sp.end - excess, sp.end)
                sp.end -= excess
                return
            if cpu is not None:
                cpu.store(space, sp.held_end, sp.end)
            sp.end = sp.held_end
            del lru[space]
            if not sp.holders:
                del spaces[space]
            excess -= room
            if excess == 0:
                return

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (for tests)."""
        evictable = 0
        for space, sp in self._spaces.items():
            assert sp.first <= sp.held_end <= sp.end, (space, sp)
            assert all(c > 0 for c in sp.holders.values()), (space, sp)
            assert sp.held_end == max(sp.holders, default=sp.first), (space, sp)
            assert (sp.evictable > 0) == (space in self._lru), (space, sp)
            evictable += sp.evictable
        assert evictable == self.evictable, (evictable, self.evictable)
        holders: dict[tuple[int, int], int] = {}
        for refs in self._refs.values():
            for space, end in refs:
                holders[space, end] = holders.get((space, end), 0) + 1
        assert holders == {(space, end): c for space, sp in self._spaces.items()
                           for end, c in sp.holders.items()}, "holders differ from requests' refs"
        if self.cpu is not None:
            self.cpu.check()

    def num_held(self) -> int:
        """Requests holding cached blocks (0 once the engine is drained)."""
        return len(self._refs)
