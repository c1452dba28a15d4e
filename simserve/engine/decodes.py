"""The decoding requests of one engine, in the order they joined, with O(1) work per step.

A plain decode step gives every participating request one token. Instead of touching each
request, a tick counter `tick` counts the decode steps applied so far, and each request keeps
`base_computed = computed - tick` and `base_remaining = remaining + tick`, so its progress is
read off the counter. What a step needs to know follows from counters too:

- which requests finish: a heap of (tick of the last token, request), checked lazily against
  the member's counters (an entry is stale once its request left or its finish moved);
- how many new KV blocks the step needs: a request starts a new block every `block_size`
  ticks, at the ticks congruent to `-base_computed` modulo `block_size`, so the need of a
  step is one entry of `_residues`;
- when each request emitted its tokens: one run of consecutive ticks per stay in the decode
  set (`runs`), turned into per-token times after the simulation.

Speculative verify steps emit a random number of tokens per request, so an engine that
speculates keeps its decodes in arrays instead (`VerifyDecodes`), updated by vectorised numpy.
Both expose the same operations to `ReplicaState`.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterator

import numpy as np

from simserve.engine.speculative import AcceptanceSampler

__all__ = ["CounterDecodes", "Runs", "VerifyDecodes"]


class Runs:
    """Token emissions of one engine, appended as they happen.

    `rid`, `first_tick`, `end_tick`: request `rid` emitted one token at each decode tick in
    `[first_tick, end_tick)`. `single_*`: request `single_rid` emitted one token at engine
    step `single_step` (a prefill's first token). `burst_*`: the requests `burst_rid` emitted
    `burst_count` tokens each at engine step `burst_step` (speculative decoding's steps).
    """

    def __init__(self) -> None:
        # `array.array` columns: 8 bytes an entry, at least one run and one first token per
        # request.
        self.rid = array("q")
        self.first_tick = array("q")
        self.end_tick = array("q")
        self.single_rid = array("q")
        self.single_step = array("q")
        self.burst_rid: list[np.ndarray] = []
        self.burst_count: list[np.ndarray] = []
        self.burst_step: list[int] = []

    def add_run(self, rid: int, first_tick: int, end_tick: int) -> None:
        if end_tick > first_tick:
            self.rid.append(rid)
            self.first_tick.append(first_tick)
            self.end_tick.append(end_tick)

    def add_burst(self, step: int, rids: np.ndarray, counts: np.ndarray) -> None:
        self.burst_rid.append(rids)
        self.burst_count.append(counts)
        self.burst_step.append(step)


class CounterDecodes:
    """Plain decoding by tick counters (see the module docstring).

    Each member's record is `[base_computed, base_remaining, run_start]`; the dict keeps join
    order (Python dicts are insertion-ordered), so the newest member, the preemption victim, is
    the last key.
    """

    def __init__(self, block_size: int, reserve_full: bool, reserve_blocks) -> None:
        self.block_size = block_size
        self.reserve_full = reserve_full
        self._reserve_blocks = reserve_blocks
        self.tick = 0
        self.kv_sum = 0  # sum of computed tokens over members
        self._rec: dict[int, list[int]] = {}
        self._residues = [0] * block_size
        self._finishing: list[tuple[int, int]] = []  # heap of (finish tick, request id)
        self.runs = Runs()
        # Engine step of every tick, stored where (step - tick) changes: (tick, step) pairs.
        self.tick_breaks: list[tuple[int, int]] = []
        self._tick_offset = -1

    def __len__(self) -> int:
        return len(self._rec)

    def __contains__(self, rid: int) -> bool:
        return rid in self._rec

    def tick_steps(self) -> np.ndarray:
        """The engine step index of every tick so far."""
        num_ticks = self.tick
        if not self.tick_breaks:
            return np.zeros(0, dtype=np.int64)
        ticks, steps = (np.asarray(a, dtype=np.int64) for a in zip(*self.tick_breaks, strict=True))
        lengths = np.diff(np.append(ticks, num_ticks))
        return np.repeat(steps - ticks, lengths) + np.arange(num_ticks, dtype=np.int64)

    # ------------------------------------------------------------------ reading

    def computed(self, rid: int) -> int:
        return self._rec[rid][0] + self.tick

    def block_need(self, m: int, width: int = 1) -> int:
        """New KV blocks the first `m` members need for their next token (width is always 1)."""
        if self.reserve_full or m == 0:
            return 0
        if m == len(self._rec):
            return self._residues[self.tick % self.block_size]
        bs, tick = self.block_size, self.tick
        need = 0
        for i, rec in enumerate(self._rec.values()):
            if i == m:
                break
            if (rec[0] + tick) % bs == 0:
                need += 1
        return need

    def ticks_to_first_finish(self) -> int:
        """Ticks from the next one up to and including the first tick at which a member
        finishes (a very large number without members)."""
        heap, rec = self._finishing, self._rec
        while heap:
            t, rid = heap[0]
            member = rec.get(rid)
            if member is not None and member[1] - 1 == t:
                return t - self.tick + 1
            heapq.heappop(heap)  # stale: the request left, or its finish moved
        return 1 << 62

    def block_need_run(self, num_ticks: int) -> list[int]:
        """Blocks needed by each of the next `num_ticks` full-batch ticks."""
        if self.reserve_full:
            return [0] * num_ticks
        bs, res, t0 = self.block_size, self._residues, self.tick
        return [res[(t0 + i) % bs] for i in range(num_ticks)]

    def run_block_need(self, num_ticks: int) -> int:
        """Blocks needed by the next `num_ticks` full-batch ticks together: each member needs
        one every `block_size` ticks, plus the part of a period the residues give."""
        if self.reserve_full:
            return 0
        bs, res = self.block_size, self._residues
        full, rest = divmod(num_ticks, bs)
        start = self.tick % bs
        end = start + rest
        part = sum(res[start:end]) if end <= bs else sum(res[start:]) + sum(res[: end - bs])
        return full * len(self._rec) + part

    def residues(self) -> tuple[int, ...] | None:
        """Members per block-boundary residue (None under full reservation): with the tick,
        what a run's per-step block needs follow from."""
        return None if self.reserve_full else tuple(self._residues)

    # ------------------------------------------------------------------ membership

    def join(self, rid: int, computed: int, remaining: int) -> None:
        tick = self.tick
        base_c = computed - tick
        base_r = remaining + tick
        self._rec[rid] = [base_c, base_r, tick]
        self._residues[-base_c % self.block_size] += 1
        heapq.heappush(self._finishing, (base_r - 1, rid))
        self.kv_sum += computed

    def _leave(self, rid: int) -> tuple[int, int]:
        """Remove a member; returns its (computed, remaining)."""
        base_c, base_r, run_start = self._rec.pop(rid)
        tick = self.tick
        self._residues[-base_c % self.block_size] -= 1
        self.runs.add_run(rid, run_start, tick)
        computed = base_c + tick
        self.kv_sum -= computed
        return computed, base_r - tick

    def remove(self, rid: int) -> tuple[int, int]:
        """Take a member out (preempted): its (computed, remaining)."""
        return self._leave(rid)

    def newest_first_ids(self) -> Iterator[tuple[int, int]]:
        """(request id, computed tokens) of each member, newest first."""
        tick = self.tick
        for rid, rec in reversed(self._rec.items()):
            yield rid, rec[0] + tick

    def members(self) -> Iterator[tuple[int, int, int]]:
        """(request id, computed, remaining) of each member in running order."""
        tick = self.tick
        for rid, rec in self._rec.items():
            yield rid, rec[0] + tick, rec[1] - tick

    # ------------------------------------------------------------------ steps

    def begin_ticks(self, m: int, step: int, num_ticks: int = 1) -> None:
        """Apply `num_ticks` decode steps to the first `m` members (all members when
        `num_ticks` > 1); the steps are engine steps `step`, `step + 1`, ..."""
        n = len(self._rec)
        if m < n:
            # NOTE: a token budget smaller than the decode batch leaves the newest members out
            # of this step (vLLM v1 schedules running requests in order until the budget ends):
            # their counters shift so that they stand still, and their runs split.
            assert num_ticks == 1
            tick, bs = self.tick, self.block_size
            res = self._residues
            for rid, rec in _last(self._rec, n - m):
                res[-rec[0] % bs] -= 1
                rec[0] -= 1
                rec[1] += 1
                res[-rec[0] % bs] += 1
                heapq.heappush(self._finishing, (rec[1] - 1, rid))
                self.runs.add_run(rid, rec[2], tick)
                rec[2] = tick + 1
        offset = step - self.tick
        if offset != self._tick_offset:
            self.tick_breaks.append((self.tick, step))
            self._tick_offset = offset
        self.tick += num_ticks
        self.kv_sum += m * num_ticks

    def end_tick(self) -> list[tuple[int, int]]:
        """Finish the tick in flight: the members whose last token it was leave, as
        (request id, computed tokens)."""
        t = self.tick - 1
        heap, rec = self._finishing, self._rec
        done = []
        # Entries at or before this tick: valid ones finish now, the rest are stale.
        while heap and heap[0][0] <= t:
            t_finish, rid = heapq.heappop(heap)
            member = rec.get(rid)
            if member is not None and member[1] - 1 == t_finish:
                computed, _ = self._leave(rid)
                done.append((rid, computed))
        return done


def _last(rec: dict[int, list[int]], k: int) -> list[tuple[int, list[int]]]:
    """The last `k` items of an insertion-ordered dict, oldest first."""
    out = []
    for item in reversed(rec.items()):
        if len(out) == k:
            break
        out.append(item)
    out.reverse()
    return out


class VerifyDecodes:
    """Decoding with speculation: members in join-ordered arrays, advanced by vectorised numpy
    (a verify step emits accepted + 1 tokens per request, all at the step's end)."""

    def __init__(self, block_size: int, reserve_full: bool, reserve_blocks, capacity: int,
                 acceptance: AcceptanceSampler, k: int) -> None:
        self.block_size = block_size
        self.reserve_full = reserve_full
        self._reserve_blocks = reserve_blocks
        self.acceptance = acceptance
        self.k = k
        # One 2-D array so that compaction and the per-step update are single numpy calls.
        self._dec = np.zeros((3, capacity), dtype=np.int64)
        self.ids = self._dec[0]
        self.computed_arr = self._dec[1]  # tokens whose KV is cached
        self.remaining_arr = self._dec[2]  # output tokens still to emit
        self._step_delta = np.array([[1], [-1]], dtype=np.int64)
        self._n = 0
        self.kv_sum = 0
        self.runs = Runs()
        # vLLM's spec-decode counters: drafts, and how many verifies accepted 0..k tokens.
        self.num_drafts = 0
        self._accepted_hist = np.zeros(k + 1, dtype=np.int64)
        # Accepted counts of the verifies not yet in `_accepted_hist` (folded in blocks: one
        # bincount per block instead of two numpy calls per step).
        self._unfolded: list[np.ndarray] = []

    def __len__(self) -> int:
        return self._n

    def __contains__(self, rid: int) -> bool:
        return bool(np.any(self.ids[: self._n] == rid))

    @property
    def accepted_per_position(self) -> np.ndarray:
        """Verifies that accepted draft position j (1..k): those accepting at least j."""
        self._fold()
        return self._accepted_hist[1:][::-1].cumsum()[::-1]

    def _fold(self) -> None:
        if self._unfolded:
            self._accepted_hist += np.bincount(np.concatenate(self._unfolded),
                                               minlength=self.k + 1)
            self._unfolded.clear()

    def block_need(self, m: int, width: int = 1) -> int:
        if self.reserve_full or m == 0:
            return 0
        bs = self.block_size
        # Blocks crossed by `width` more tokens: ceil((c + w) / bs) - ceil(c / bs), which for
        # whole numbers is ((c - 1) mod bs + w) // bs (fewer numpy calls per step than the two
        # ceilings).
        offset = self.computed_arr[:m] - 1
        offset %= bs
        offset += width
        offset //= bs
        return int(offset.sum())

    def join(self, rid: int, computed: int, remaining: int) -> None:
        # NOTE: appending is safe while a step is in flight: a step touches only its first
        # `m` members, and finished members are compacted over the whole array.
        i = self._n
        self.ids[i] = rid
        self.computed_arr[i] = computed
        self.remaining_arr[i] = remaining
        self._n = i + 1
        self.kv_sum += computed

    def remove(self, rid: int) -> tuple[int, int]:
        """Take a member out (preempted): its (computed, remaining)."""
        n = self._n
        i = int(np.flatnonzero(self.ids[:n] == rid)[0])
        computed, remaining = int(self.computed_arr[i]), int(self.remaining_arr[i])
        self._dec[:, i : n - 1] = self._dec[:, i + 1 : n]
        self._n = n - 1
        self.kv_sum -= computed
        return computed, remaining

    def newest_first_ids(self) -> Iterator[tuple[int, int]]:
        for i in range(self._n - 1, -1, -1):
            yield int(self.ids[i]), int(self.computed_arr[i])

    def members(self) -> Iterator[tuple[int, int, int]]:
        for i in range(self._n):
            yield int(self.ids[i]), int(self.computed_arr[i]), int(self.remaining_arr[i])

    def end_step(self, m: int, width: int, step: int) -> tuple[list[tuple[int, int]], int]:
        """Apply the outcome of a decode (width 1) or verify step to the first `m` members:
        returns the finished (request id, computed) and the KV blocks freed by rejected
        draft positions."""
        freed = 0
        if width > 1:
            freed = self._verify(m, width, step)
        else:
            self.runs.add_burst(step, self.ids[:m].copy(), np.ones(m, np.int64))
            self._dec[1:3, :m] += self._step_delta  # computed += 1, remaining -= 1
            self.kv_sum += m
        done = np.flatnonzero(self.remaining_arr[:m] == 0)
        if not done.size:
            return [], freed
        n = self._n
        done_computed = self.computed_arr[done]
        finished = list(zip(self.ids[done].tolist(), done_computed.tolist(), strict=True))
        keep = np.ones(n, dtype=bool)
        keep[done] = False
        self.kv_sum -= int(done_computed.sum())
        k = n - done.size
        self._dec[:, :k] = self._dec[:, :n][:, keep]
        self._n = k
        return finished, freed

    def _verify(self, m: int, width: int, step: int) -> int:
        """Accepted + 1 tokens each, truncated to the output length, all stamped at the step's
        end; returns the KV blocks of rejected positions, which are freed."""
        ids = self.ids[:m]
        accepted = self.acceptance.sample(ids)
        self.num_drafts += m
        self._unfolded.append(accepted)
        if len(self._unfolded) >= 256:
            self._fold()
        computed = self.computed_arr[:m]
        remaining = self.remaining_arr[:m]
        emitted = accepted + 1
        np.minimum(emitted, remaining, out=emitted)
        bs = self.block_size
        freed = 0
        if not self.reserve_full:
            # Blocks allocated for all `width` positions less those the emitted tokens keep
            # (ceilings of non-negative counts: (x + bs - 1) // bs).
            allocated = (computed + (width + bs - 1)) // bs
            kept = computed + emitted
            computed += emitted
            kept += bs - 1
            kept //= bs
            allocated -= kept
            freed = int(allocated.sum())
        else:
            computed += emitted
        remaining -= emitted
        self.kv_sum += int(emitted.sum())
        self.runs.add_burst(step, ids.copy(), emitted)
        return freed
