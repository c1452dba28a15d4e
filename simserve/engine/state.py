"""Mutable state of one engine: waiting queue, partial prefills, decodes, paged KV blocks.

Per-step work is O(1) for plain decoding: decoding requests advance by a tick counter
(`engine.decodes.CounterDecodes`), finishing requests are found in per-tick buckets and KV block
boundaries by residue counts, so a step costs the same whatever the batch size (DESIGN §9).
Speculative verify steps, whose outcome differs per request, use vectorised numpy instead
(`VerifyDecodes`). Partial prefills are few and live in a short list. Steps are logged per
engine (`EngineLog`) and token emissions as runs of ticks (`Runs`); both become records once,
after the run.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from simserve.costmodel.base import BatchShape
from simserve.engine.decodes import CounterDecodes, Runs, VerifyDecodes
from simserve.engine.plan import StepPlan
from simserve.engine.prefix_cache import PrefixCache
from simserve.engine.queues import FCFSQueue
from simserve.engine.speculative import AcceptanceSampler
from simserve.engine.swap import SwapSpace

__all__ = [
    "STEP_COLUMNS",
    "EngineLog",
    "PrefillEntry",
    "ReplicaState",
    "RequestTable",
    "RunStart",
]


class RequestTable:
    """Per-request data shared by all engines, in `array.array` columns: scalar access gives
    Python numbers (cheaper than numpy's), at 8 bytes a value (a list of ints takes ~36)."""

    def __init__(self, prompt_len: np.ndarray, output_len: np.ndarray,
                 arrived_at: np.ndarray, priority: np.ndarray | None = None,
                 ttft_budget_s: np.ndarray | None = None) -> None:
        n = len(prompt_len)
        # Queue-order inputs: a priority (lower first) and a TTFT budget per request.
        self.priority = array("q", (np.zeros(n, dtype=np.int64) if priority is None
                                    else np.asarray(priority, dtype=np.int64)).tobytes())
        self.ttft_budget_s = array("d", (np.full(n, np.inf) if ttft_budget_s is None
                                         else np.asarray(ttft_budget_s,
                                                         dtype=np.float64)).tobytes())
        self.prompt_len = array("q", np.asarray(prompt_len, dtype=np.int64).tobytes())
        self.output_len = array("q", np.asarray(output_len, dtype=np.int64).tobytes())
        self.arrived_at = array("d", np.asarray(arrived_at, dtype=np.float64).tobytes())
        self.emitted = array("q", bytes(8 * n))  # tokens emitted so far (kept on preemption)
        self.first_scheduled_at = array("d", [float("nan")]) * n
        self.num_preemptions = array("q", bytes(8 * n))
        self.replica = array("q", [-1]) * n
        self.rejected = array("q", bytes(8 * n))
        # Prompt tokens found in the prefix cache at first admission (vLLM's
        # num_cached_tokens); 0 without prefix caching.
        self.cached_tokens = array("q", bytes(8 * n))
        self.timed_out = array("q", bytes(8 * n))  # 1: its client gave up before the end


# One row per step, in this order (see `StepRecords` for their meaning).
STEP_COLUMNS: tuple[str, ...] = (
    "started_at",
    "duration_s",
    "num_prefill_tokens",
    "num_decode_tokens",
    "prefill_kv_tokens",
    "decode_kv_tokens",
    "num_seqs",
    "kv_blocks_used",
    "num_preempted",
)


class RunStart(NamedTuple):
    """What a fast-forwarded run's per-step KV block use follows from: the blocks in use and
    the tick before it, and the decoding requests per block-boundary residue (None: no block
    is allocated per step, as under full reservation)."""

    blocks_used: int
    tick: int
    residues: tuple[int, ...] | None


class EngineLog:
    """The steps of one engine in the order they ran: single steps as row tuples (one append
    per step), fast-forwarded runs as a few numbers each (their other columns follow from the
    run's batch size and KV), assembled into columns once, after the run."""

    # Rows kept as tuples before they are packed into an array (bounds their memory).
    ROWS_PER_TABLE = 1 << 15

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.num_steps = 0
        self._rows: list[tuple] = []
        self._tables: list[np.ndarray] = []  # packed rows, float64 (exact for these values)
        self._row_at = array("q")  # engine step index of every row
        # Fast-forwarded runs: first step index, steps, batch size, first step's decode KV,
        # how their block use grows, the block use after the last step; and their steps' start
        # times and durations, flat.
        self._run_at = array("q")
        self._run_len = array("q")
        self._run_seqs = array("q")
        self._run_kv = array("q")
        self._run_start: list[RunStart] = []
        self._run_used_last = array("q")
        self._run_started = array("d")
        self._run_duration = array("d")

    def add_row(self, row: tuple) -> None:
        rows = self._rows
        rows.append(row)
        self._row_at.append(self.num_steps)
        self.num_steps += 1
        if len(rows) == self.ROWS_PER_TABLE:
            self._tables.append(np.array(rows, dtype=np.float64))
            rows.clear()

    def add_run(self, num_seqs: int, started_at: list[float], duration_s: list[float],
                first_decode_kv: int, start: RunStart, blocks_used_last: int) -> None:
        """A run of plain decode steps of `num_seqs` sequences (no prefill, no preemption)."""
        k = len(duration_s)
        self._run_at.append(self.num_steps)
        self._run_len.append(k)
        self._run_seqs.append(num_seqs)
        self._run_kv.append(first_decode_kv)
        self._run_start.append(start)
        self._run_used_last.append(blocks_used_last)
        self._run_started.extend(started_at)
        self._run_duration.extend(duration_s)
        self.num_steps += k

    def columns(self) -> dict[str, np.ndarray]:
        """Every step as numpy columns named by `STEP_COLUMNS`."""
        total = self.num_steps
        out = {
            name: np.zeros(total, dtype=np.float64 if name in ("started_at", "duration_s")
                           else np.int64)
            for name in STEP_COLUMNS
        }
        tables = [*self._tables, np.array(self._rows, dtype=np.float64)]
        table = np.concatenate([t.reshape(-1, len(STEP_COLUMNS)) for t in tables])
        if not self._run_at:
            # Only single steps, in order.
            for i, name in enumerate(STEP_COLUMNS):
                out[name] = table[:, i].astype(out[name].dtype)
            return out
        if table.size:
            at = np.frombuffer(self._row_at, dtype=np.int64)
            for i, name in enumerate(STEP_COLUMNS):
                out[name][at] = table[:, i]
        self._run_columns(out)
        return out

    def _run_columns(self, out: dict[str, np.ndarray]) -> None:
        sizes = np.asarray(self._run_len, dtype=np.int64)
        first = np.cumsum(sizes) - sizes
        # Place of every fast-forwarded step in its run, and its engine step index.
        within = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(first, sizes)
        at = np.repeat(np.asarray(self._run_at, dtype=np.int64), sizes) + within
        seqs = np.repeat(np.asarray(self._run_seqs, dtype=np.int64), sizes)
        out["started_at"][at] = np.frombuffer(self._run_started, dtype=np.float64)
        out["duration_s"][at] = np.frombuffer(self._run_duration, dtype=np.float64)
        out["decode_kv_tokens"][at] = (
            np.repeat(np.asarray(self._run_kv, dtype=np.int64), sizes) + seqs * within
        )
        out["num_decode_tokens"][at] = seqs
        out["num_seqs"][at] = seqs
        # Blocks in use after step i of a run: before the run, plus the blocks of the members
        # whose residue comes up at each tick up to i (none under full reservation); the last
        # step's count is the one logged live (after its finishes).
        bs = self.block_size
        starts = self._run_start
        residues = np.asarray([r.residues or (0,) * bs for r in starts], dtype=np.int64)
        ticks = np.asarray([r.tick for r in starts], dtype=np.int64)
        run_of = np.repeat(np.arange(sizes.size), sizes)
        need = residues[run_of, (ticks[run_of] + within) % bs]
        grown = np.cumsum(need)
        grown -= np.repeat(grown[first] - need[first], sizes)
        used = np.repeat(np.asarray([r.blocks_used for r in starts], dtype=np.int64), sizes)
        used += grown
        used[first + sizes - 1] = self._run_used_last
        out["kv_blocks_used"][at] = used


@dataclass
class PrefillEntry:
    """A request whose known tokens are not all computed yet (prompt, or prompt + output
    after a recompute preemption)."""

    request_id: int
    num_computed: int
    num_target: int
    num_blocks: int = 0


class ReplicaState:
    """One engine's queues and KV cache; `begin` applies a plan, `finish` applies its outcome.

    `index` is the instance (what requests report as their replica); `engine_id` is unique
    per engine, also among the virtual engines of a pipeline-parallel instance.
    """

    def __init__(
        self,
        index: int,
        requests: RequestTable,
        *,
        engine_id: int,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        reserve_full: bool = False,
        num_speculative_tokens: int = 0,
        speculate_max_batch: int | None = None,
        acceptance: AcceptanceSampler | None = None,
        queue: type[FCFSQueue] = FCFSQueue,
        prefix_cache: PrefixCache | None = None,
        swap: SwapSpace | None = None,
        load_s: Callable[[int], float] | None = None,
    ) -> None:
        self.index = index
        self.engine_id = engine_id
        self.requests = requests
        self.log = EngineLog(block_size)
        self.num_blocks = num_blocks
        self.free_blocks = num_blocks
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # NOTE: request-level batching (FasterTransformer) reserves KV for the whole sequence
        # at admission, so it never preempts.
        self.reserve_full = reserve_full
        self.num_speculative_tokens = num_speculative_tokens
        self.speculate_max_batch = speculate_max_batch
        self.decodes: CounterDecodes | VerifyDecodes
        if num_speculative_tokens:
            assert acceptance is not None
            self.decodes = VerifyDecodes(block_size, reserve_full, self.reserve_blocks,
                                         max_num_seqs, acceptance, num_speculative_tokens)
        else:
            self.decodes = CounterDecodes(block_size, reserve_full, self.reserve_blocks)
        self.runs: Runs = self.decodes.runs
        # Waiting requests in the queue order's order (iterable, sized).
        self.waiting: FCFSQueue = queue(requests)
        self.prefilling: list[PrefillEntry] = []
        # Disaggregated serving. A prefill instance hands each finished prefill to
        # `handoff(state, request_id, num_computed, num_blocks)` and keeps its blocks
        # (`num_held_blocks`) until the KV transfer ends; a decode instance reserves blocks and a
        # sequence slot for each transfer in flight (`num_incoming`) before it starts.
        self.handoff: Callable[[ReplicaState, int, int, int], None] | None = None
        self.num_held_blocks = 0
        self.num_incoming = 0
        # Automatic prefix caching (None: off); lookups are memoised per cache version, since
        # a policy asks about the same waiting request step after step.
        self.prefix_cache = prefix_cache
        # Requests that finished here since the cluster last looked (None: nobody asks).
        self.ended: list[int] | None = None
        # Client timeouts: (deadline, request id) of the requests sent here, earliest first.
        self.deadlines: list[tuple[float, int]] = []
        self._lookups: dict[int, tuple[int, int]] = {}
        self._lookups_version = -1
        # Swap preemption (None: recompute): the CPU blocks of swapped-out requests, which
        # wait in the queue like recomputed ones; `copy_s` is the GPU-host copy time of the
        # step `begin` last planned (swap-outs and swap-ins), which adds to that step.
        self.swap = swap
        self.copy_s = 0.0
        # CPU offload (the prefix cache's `cpu` tier): `load_s(num_blocks)` is a load's time.
        # A request admitted with blocks to load holds them and its slot in `loading` (with
        # when the load ends) and computes nothing until then; `new_loads` are the ends of the
        # loads `begin` last started, for the engine to wake up at. `step_chunks` are the
        # chunks of the step `begin` last planned, of the entries in `prefilling`.
        self.load_s = load_s
        self.loading: list[tuple[float, PrefillEntry]] = []
        self.new_loads: list[float] = []
        self.step_chunks: tuple[int, ...] = ()

    # ------------------------------------------------------------------ views for policies

    @property
    def num_decoding(self) -> int:
        return len(self.decodes)

    @property
    def num_running(self) -> int:
        """Sequences holding a slot: decoding, prefilling, KV transfers on their way in and
        KV loads from the CPU tier."""
        return len(self.decodes) + len(self.prefilling) + self.num_incoming + len(self.loading)

    @property
    def num_outstanding(self) -> int:
        return self.num_running + len(self.waiting)

    def has_work(self) -> bool:
        return bool(len(self.decodes) or self.prefilling or self.waiting)

    def waits_on_transfers(self) -> bool:
        """Whether KV blocks are tied up by transfers or loads in flight (a step may have to
        wait)."""
        return bool(self.num_held_blocks or self.num_incoming or self.loading)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def target_tokens(self, request_id: int) -> int:
        """Tokens a newly admitted request's KV must cover: prompt plus already emitted
        output (of them, `cached_tokens` are found in the prefix cache)."""
        return self.requests.prompt_len[request_id] + self.requests.emitted[request_id]

    def _lookup(self, request_id: int) -> tuple[int, int, int]:
        """(cached leading blocks on the GPU, of them evictable, blocks after them in the CPU
        tier) of a waiting request."""
        cache = self.prefix_cache
        assert cache is not None
        if cache.surely_misses(request_id):
            return 0, 0, 0
        if cache.version != self._lookups_version:
            self._lookups.clear()
            self._lookups_version = cache.version
        found = self._lookups.get(request_id)
        if found is None:
            target = self.target_tokens(request_id)
            hit, taken = cache.lookup(request_id, target)
            loaded = cache.lookup_cpu(request_id, target, hit)[0]
            found = self._lookups[request_id] = (hit, taken, loaded)
        return found

    def cached_tokens(self, request_id: int) -> int:
        """Leading tokens of a waiting request the prefix cache holds, or a swapped-out one's
        swap space: admitted, it computes only `target_tokens - cached_tokens` (0 without
        prefix caching or swap)."""
        swap = self.swap
        if swap is not None and request_id in swap:
            return swap.computed(request_id)
        if self.prefix_cache is None:
            return 0
        hit, _taken, loaded = self._lookup(request_id)
        return (hit + loaded) * self.block_size

    def admit_blocks(self, request_id: int, num_new_tokens: int) -> int:
        """Free KV blocks admitting a waiting request takes to compute `num_new_tokens` tokens
        after its cached prefix: new blocks, plus cached blocks it revives from the evictable
        pool (a policy's upper bound: requests admitted together may share them). A swapped-out
        request takes blocks for all its tokens: its swapped ones come back as its own, as do
        blocks loaded from the CPU tier."""
        swap = self.swap
        if swap is not None and request_id in swap:
            return -(-(swap.computed(request_id) + num_new_tokens) // self.block_size)
        if self.prefix_cache is None:
            return -(-num_new_tokens // self.block_size)
        hit, taken, loaded = self._lookup(request_id)
        cached = (hit + loaded) * self.block_size
        return -(-(cached + num_new_tokens) // self.block_size) - hit + taken

    def decode_width(self, num_decodes: int) -> int:
        """Query tokens per decoding request this step: k+1 when speculating, else 1."""
        k = self.num_speculative_tokens
        if k and (self.speculate_max_batch is None or num_decodes <= self.speculate_max_batch):
            return k + 1
        return 1

    def decode_block_need(self, num_decodes: int, width: int = 1) -> int:
        """New KV blocks the first `num_decodes` decoding requests need for `width` more tokens."""
        return self.decodes.block_need(num_decodes, width)

    def preemption_order(self) -> Iterator[tuple[int, int]]:
        """(request id, KV blocks preempting it frees) of every running request, in the order
        the queue order preempts them: FCFS the most recently admitted first (partial prefills, then
        decoding requests, newest first: vLLM's running list popped from its end), keyed
        orders the largest key first."""
        decodes = self.decodes
        freed = self.blocks_freed_by
        if self.waiting.preempts_newest:
            for entry in reversed(self.prefilling):
                yield entry.request_id, freed(entry.request_id, entry.num_blocks)
            for rid, computed in decodes.newest_first_ids():
                yield rid, freed(rid, self._held_by_decode(rid, computed))
            return
        queue = self.waiting
        ranked = [(queue.running_key(e.request_id, self._remaining_output(e.request_id)),
                   e.request_id, e.num_blocks) for e in self.prefilling]
        ranked += [(queue.running_key(rid, remaining), rid,
                    self._held_by_decode(rid, computed))
                   for rid, computed, remaining in decodes.members()]
        ranked.sort(reverse=True)
        for _key, rid, held in ranked:
            yield rid, freed(rid, held)

    def blocks_freed_by(self, request_id: int, held_blocks: int) -> int:
        """Blocks that preempting a running request holding `held_blocks` frees (its share
        of cached blocks other requests hold stays in use)."""
        if self.prefix_cache is None:
            return held_blocks
        return self.prefix_cache.would_free(request_id, held_blocks)

    def decode_block_need_without(self, left: set[int], num_decodes: int, width: int) -> int:
        """`decode_block_need` of the first `num_decodes` decoding requests not in `left`."""
        if self.reserve_full or num_decodes == 0:
            return 0
        bs = self.block_size
        need = 0
        counted = 0
        for rid, computed, _remaining in self.decodes.members():
            if counted == num_decodes:
                break
            if rid in left:
                continue
            counted += 1
            need += -(-(computed + width) // bs) - (-(-computed // bs))
        return need

    def _held_by_decode(self, request_id: int, computed: int) -> int:
        if self.reserve_full:
            return self.reserve_blocks(request_id)
        return -(-computed // self.block_size)

    def _remaining_output(self, request_id: int) -> int:
        return self.requests.output_len[request_id] - self.requests.emitted[request_id]

    def reserve_blocks(self, request_id: int) -> int:
        """Blocks a request holds for its whole life under full reservation."""
        p = self.requests.prompt_len[request_id]
        n = self.requests.output_len[request_id]
        return self.blocks_for(p + n - 1)

    # ------------------------------------------------------------------ client timeouts

    def next_deadline(self) -> float:
        """When the earliest client here gives up (inf: none waits)."""
        return self.deadlines[0][0] if self.deadlines else float("inf")

    def cancel_expired(self, now: float) -> int:
        """Cancel the requests whose clients gave up by `now` (vLLM aborts a request between
        steps): wherever it is, it leaves, its KV is freed and its tokens so far stay counted.
        Returns how many were cancelled."""
        req = self.requests
        cancelled = 0
        while self.deadlines and self.deadlines[0][0] <= now:
            _deadline, rid = heapq.heappop(self.deadlines)
            if req.emitted[rid] == req.output_len[rid] or req.rejected[rid]:
                continue  # finished in time (or never admitted)
            entry = next((e for e in self.prefilling if e.request_id == rid), None)
            loading = next((item for item in self.loading if item[1].request_id == rid), None)
            if loading is not None:
                self.loading.remove(loading)
                entry = loading[1]
                self._release(rid, entry.num_blocks, entry.num_computed)
            elif entry is not None:
                self.prefilling.remove(entry)
                self._release(rid, entry.num_blocks, entry.num_computed)
            elif rid in self.decodes:
                computed, remaining = self.decodes.remove(rid)
                req.emitted[rid] = req.output_len[rid] - remaining
                self._release(rid, self._held_by_decode(rid, computed), computed)
            else:
                self.waiting.take((rid,))
                if self.swap is not None and rid in self.swap:
                    self.swap.discard(rid, now)
            req.timed_out[rid] = 1
            cancelled += 1
            if self.ended is not None:
                self.ended.append(rid)
        return cancelled

    # ------------------------------------------------------------------ applying a plan

    def begin(self, plan: StepPlan, now: float) -> BatchShape:
        """Preempt, admit and allocate as planned; return the shape the cost model prices."""
        req = self.requests
        decodes = self.decodes
        cache = self.prefix_cache
        swap = self.swap
        self.copy_s = 0.0
        # Cache hits as the policy saw them, before this plan's preemptions add blocks (a
        # swapped-out request brings its own blocks back instead).
        hits = [(0, 0, 0) if swap is not None and rid in swap else self._lookup(rid)
                for rid in plan.admit] if cache is not None else None
        loads: list[PrefillEntry] | None = None
        if plan.preempt:
            partial = {e.request_id: e for e in self.prefilling}
            for rid in plan.preempt:
                entry = partial.pop(rid, None)
                if entry is not None:
                    self.prefilling.remove(entry)
                    self._preempt(rid, entry.num_blocks, entry.num_computed, now)
                    continue
                computed, remaining = decodes.remove(rid)
                req.emitted[rid] = req.output_len[rid] - remaining
                self._preempt(rid, self._held_by_decode(rid, computed), computed, now)
        if plan.admit:
            self.waiting.take(plan.admit)
            for i, rid in enumerate(plan.admit):
                first = req.first_scheduled_at[rid] != req.first_scheduled_at[rid]  # NaN
                if first:
                    req.first_scheduled_at[rid] = now
                entry = PrefillEntry(rid, 0, self.target_tokens(rid))
                if swap is not None and rid in swap:
                    entry.num_computed, entry.num_blocks, copy_s = swap.swap_in(rid, now)
                    self.free_blocks -= entry.num_blocks
                    self.copy_s += copy_s
                elif self.reserve_full:
                    entry.num_blocks = self.reserve_blocks(rid)
                    self.free_blocks -= entry.num_blocks
                elif hits is not None:
                    assert cache is not None
                    hit, _taken, loaded = hits[i]
                    self.free_blocks -= cache.acquire(rid, entry.num_target, hit)
                    entry.num_computed = (hit + loaded) * self.block_size
                    entry.num_blocks = hit + loaded
                    if loaded:
                        self.free_blocks -= loaded
                        if loads is None:
                            loads = []
                        loads.append(entry)
                        self._start_load(rid, entry, hit, loaded, now)
                    if first:
                        req.cached_tokens[rid] = entry.num_computed
                self.prefilling.append(entry)

        chunks = plan.chunks
        if loads is not None:
            # NOTE: a request loading KV from the CPU tier computes nothing until the load
            # ends (vLLM V1's WAITING_FOR_REMOTE_KVS); the others step meanwhile.
            waits = {id(e) for e in loads}
            kept = [(e, q) for e, q in zip(self.prefilling, chunks, strict=True)
                    if id(e) not in waits]
            self.prefilling = [e for e, _q in kept]
            chunks = tuple(q for _e, q in kept)
        self.step_chunks = chunks
        m = plan.num_decodes
        w = plan.decode_width
        self.free_blocks -= plan.decode_blocks
        prefill_tokens = 0
        prefill_seqs = 0
        attn_pairs = 0.0
        prefill_kv = 0
        if chunks:
            reserve_full = self.reserve_full
            for entry, q in zip(self.prefilling, chunks, strict=True):
                if q == 0:
                    continue
                c = entry.num_computed
                if not reserve_full:
                    blocks = -(-(c + q) // self.block_size)
                    self.free_blocks -= blocks - entry.num_blocks
                    entry.num_blocks = blocks
                prefill_tokens += q
                prefill_seqs += 1
                attn_pairs += q * (c + q / 2)
                prefill_kv += c + q
        if self.free_blocks < 0:
            raise AssertionError(f"replica {self.index}: KV over-allocated by the policy")
        if cache is not None and cache.evictable > self.free_blocks:
            cache.evict(self.free_blocks)
        decode_kv = decodes.kv_sum if m == len(decodes) else _first_kv_sum(decodes, m)
        if m and isinstance(decodes, CounterDecodes):
            decodes.begin_ticks(m, self.log.num_steps)
        return BatchShape(
            prefill_tokens, prefill_seqs, attn_pairs, prefill_kv, m, m * w, decode_kv + m * w
        )

    def _start_load(self, request_id: int, entry: PrefillEntry, hit: int, loaded: int,
                    now: float) -> None:
        """Start loading `loaded` blocks after the `hit` cached ones from the CPU tier."""
        cache = self.prefix_cache
        assert cache is not None and cache.cpu is not None and self.load_s is not None
        spaces = cache.lookup_cpu(request_id, entry.num_target, hit)[1]
        load_s = self.load_s(loaded)
        cache.cpu.load(spaces, loaded, load_s)
        self.loading.append((now + load_s, entry))
        self.new_loads.append(now + load_s)

    def land_loads(self, now: float) -> None:
        """Requests whose CPU-tier loads ended by `now` go on as partial prefills."""
        ready = [item for item in self.loading if item[0] <= now]
        if ready:
            self.loading = [item for item in self.loading if item[0] > now]
            self.prefilling.extend(entry for _at, entry in ready)

    def _preempt(self, request_id: int, num_blocks: int, num_computed: int, now: float) -> None:
        # NOTE: vLLM's recompute preemption frees the blocks and puts the request back in the
        # waiting queue (FCFS: at its front); its emitted tokens stay emitted, and its full
        # blocks stay in the prefix cache, where its recompute may find them. Swap preemption
        # (vLLM v0) first copies its blocks to the swap space; when that is full, vLLM v0
        # aborts the engine ("lack of CPU swap space"), simserve recomputes instead.
        swap = self.swap
        if swap is not None and num_computed:
            copy_s = swap.swap_out(request_id, num_computed, self.blocks_for(num_computed), now)
            if copy_s is not None:
                self.copy_s += copy_s
        self._release(request_id, num_blocks, num_computed)
        self.requests.num_preemptions[request_id] += 1
        self.waiting.push_preempted(request_id)

    def finish(
        self, plan: StepPlan, shape: BatchShape, started_at: float, duration_s: float
    ) -> int:
        """Apply the step's outcome at its end: complete requests, log the step and the tokens.

        Returns the number of requests that finished (for closed-loop clients)."""
        step = self.log.num_steps
        req = self.requests
        m = plan.num_decodes
        finished = 0
        if m:
            decodes = self.decodes
            if isinstance(decodes, CounterDecodes):
                done = decodes.end_tick()
            else:
                done, freed = decodes.end_step(m, plan.decode_width, step)
                self.free_blocks += freed
            if done:
                finished += len(done)
                self._free_finished(done)

        handoffs: list[tuple[int, int, int]] | None = None
        chunks = self.step_chunks
        if chunks:
            kept: list[PrefillEntry] = []
            runs = self.runs
            cache = self.prefix_cache
            if cache is not None and not cache.registers_chunks:
                cache = None
            for entry, q in zip(self.prefilling, chunks, strict=True):
                entry.num_computed += q
                if cache is not None and q:
                    cache.register(entry.request_id, entry.num_computed)
                if entry.num_computed < entry.num_target:
                    kept.append(entry)
                    continue
                rid = entry.request_id
                runs.single_rid.append(rid)
                runs.single_step.append(step)
                emitted = req.emitted[rid] + 1
                remaining_out = req.output_len[rid] - emitted
                if remaining_out == 0:
                    req.emitted[rid] = emitted
                    self._release(rid, entry.num_blocks, entry.num_computed)
                    finished += 1
                    if self.ended is not None:
                        self.ended.append(rid)
                    continue
                if self.handoff is not None:
                    req.emitted[rid] = emitted
                    self.num_held_blocks += entry.num_blocks
                    if handoffs is None:
                        handoffs = []
                    handoffs.append((rid, entry.num_computed, entry.num_blocks))
                    continue
                self.decodes.join(rid, entry.num_computed, remaining_out)
            self.prefilling = kept

        self.log.add_row((
            started_at, duration_s, shape.num_prefill_tokens, shape.num_decode_tokens,
            shape.prefill_kv_tokens, shape.decode_kv_tokens,
            shape.num_prefill_seqs + shape.num_decode_seqs, self.num_blocks - self.free_blocks,
            len(plan.preempt),
        ))
        if handoffs is not None:
            assert self.handoff is not None
            for rid, num_computed, num_blocks in handoffs:
                self.handoff(self, rid, num_computed, num_blocks)
        return finished

    def _free_finished(self, done: list[tuple[int, int]]) -> None:
        req = self.requests
        bs = self.block_size
        if self.ended is not None:
            self.ended.extend(rid for rid, _computed in done)
        for rid, computed in done:
            req.emitted[rid] = req.output_len[rid]
            if self.reserve_full:
                self.free_blocks += self.reserve_blocks(rid)
            elif self.prefix_cache is not None:
                self._release(rid, -(-computed // bs), computed)
            else:
                self.free_blocks += -(-computed // bs)

    def _release(self, request_id: int, num_blocks: int, num_computed: int) -> None:
        """A request gives back the `num_blocks` blocks it holds, `num_computed` tokens'
        worth (with prefix caching its full ones stay cached; vLLM V1 caches generated blocks
        too, which is what lets a conversation's next turn find the whole history)."""
        cache = self.prefix_cache
        if cache is None:
            self.free_blocks += num_blocks
            return
        self.free_blocks += cache.leave(request_id, num_blocks, num_computed)

    # ------------------------------------------------------------------ fast-forward

    def plain_decode_run(self, plan: StepPlan) -> bool:
        """Whether `plan` is a decode step that, repeated, needs nothing but the tick counter:
        every decoding request gets one plain token, nothing else happens."""
        return (
            plan.num_decodes == len(self.decodes)
            and plan.decode_width == 1
            and not plan.chunks
            and not plan.preempt
            and isinstance(self.decodes, CounterDecodes)
        )

    def max_run_ticks(self, limit: int) -> int:
        """How many full-batch plain decode steps from now (at most `limit`) run without a
        finish before the last of them and without running out of KV blocks: the first `k`
        steps of which only the last may see a request finish."""
        decodes = self.decodes
        assert isinstance(decodes, CounterDecodes)
        k = min(limit, decodes.ticks_to_first_finish())
        if k <= 1:
            return k
        m = len(decodes)
        bs = self.block_size
        free = self.free_blocks
        cache = self.prefix_cache
        if cache is not None and cache.evictable and len(self.waiting):
            # NOTE: evicting a cached block can shorten a waiting request's cached prefix and
            # so change what admitting it takes (a broken chain of blocks leaves fewer to
            # revive): the run stops before its first eviction, which is then stepped.
            free -= cache.evictable
        # Each member needs one block every `block_size` ticks; only check tick by tick when
        # that bound could exhaust the free blocks.
        if self.reserve_full or m * (-(-k // bs) + 1) <= free:
            return k
        for i, need in enumerate(decodes.block_need_run(k)):
            if need > free:
                return i
            free -= need
        return k

    def begin_run(self, num_ticks: int) -> RunStart:
        """Allocate and tick `num_ticks` full-batch plain decode steps at once (the first was
        planned as usual, the others would be planned identically)."""
        decodes = self.decodes
        assert isinstance(decodes, CounterDecodes)
        start = RunStart(self.num_blocks - self.free_blocks, decodes.tick, decodes.residues())
        self.free_blocks -= decodes.run_block_need(num_ticks)
        cache = self.prefix_cache
        if cache is not None and cache.evictable > self.free_blocks:
            cache.evict(self.free_blocks)
        decodes.begin_ticks(len(decodes), self.log.num_steps, num_ticks)
        return start

    def finish_run(self, num_seqs: int, started_at: list[float], duration_s: list[float],
                   first_decode_kv: int, start: RunStart) -> int:
        """Log a fast-forwarded run of plain decode steps of `num_seqs` sequences and apply its
        last step's finishes (only the last step can have any); returns the number finished."""
        decodes = self.decodes
        assert isinstance(decodes, CounterDecodes)
        done = decodes.end_tick()
        if done:
            self._free_finished(done)
        self.log.add_run(num_seqs, started_at, duration_s, first_decode_kv, start,
                         self.num_blocks - self.free_blocks)
        return len(done)

    # ------------------------------------------------------------------ KV handoff

    def release_held(self, request_id: int, num_blocks: int, num_computed: int) -> None:
        """A prefill instance's KV transfer of a request ended: its blocks are free again
        (with prefix caching, its full ones stay cached)."""
        self.num_held_blocks -= num_blocks
        self._release(request_id, num_blocks, num_computed)

    def reserve_incoming(self, num_blocks: int) -> None:
        """A decode instance takes a slot and the blocks of a KV transfer before it starts."""
        self.free_blocks -= num_blocks
        self.num_incoming += 1
        if self.free_blocks < 0 or self.num_running > self.max_num_seqs:
            raise AssertionError(f"replica {self.index}: KV transfer over-admitted")
        cache = self.prefix_cache
        if cache is not None and cache.evictable > self.free_blocks:
            cache.evict(self.free_blocks)

    def accept_decoding(self, request_id: int, num_computed: int, remaining: int) -> None:
        """A transferred request joins the decode batch (its blocks were reserved already);
        safe while a step is in flight, which never touches members that joined after it
        began."""
        self.decodes.join(request_id, num_computed, remaining)
        self.num_incoming -= 1


def _first_kv_sum(decodes: CounterDecodes | VerifyDecodes, m: int) -> int:
    """Sum of computed tokens of the first `m` decoding requests (a token budget smaller than
    the decode batch; rare)."""
    if m == 0:
        return 0
    if isinstance(decodes, VerifyDecodes):
        return int(decodes.computed_arr[:m].sum())
    total = 0
    tick = decodes.tick
    for i, rec in enumerate(decodes._rec.values()):
        if i == m:
            break
        total += rec[0] + tick
    return total
