"""Mutable state of one replica: waiting queue, running requests, paged KV blocks.

Decoding requests live in fixed-capacity numpy arrays kept in admission order, so a decode
step is a few vectorised operations over the batch, never a loop over requests or tokens
(DESIGN §9: per-step work O(batch) with small constants). Partial prefills are few and live in
a short list. Token emissions are recorded as (step index, request ids) and turned into
per-token timestamps once, after the run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from simserve.costmodel.base import BatchShape
from simserve.engine.plan import StepPlan
from simserve.engine.speculative import AcceptanceSampler

__all__ = ["PrefillEntry", "ReplicaState", "RequestTable", "StepLog"]


@dataclass
class RequestTable:
    """Per-request data shared by all replicas (plain lists: scalar access is cheaper)."""

    prompt_len: list[int]
    output_len: list[int]
    arrived_at: list[float]
    emitted: list[int] = field(default_factory=list)  # tokens emitted so far (kept on preemption)
    first_scheduled_at: list[float] = field(default_factory=list)
    num_preemptions: list[int] = field(default_factory=list)
    replica: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.prompt_len)
        self.emitted = [0] * n
        self.first_scheduled_at = [float("nan")] * n
        self.num_preemptions = [0] * n
        self.replica = [-1] * n
        self.rejected = [0] * n


@dataclass
class StepLog:
    """Append-only per-step records and token emissions of every replica."""

    replica: list[int] = field(default_factory=list)
    started_at: list[float] = field(default_factory=list)
    duration_s: list[float] = field(default_factory=list)
    num_prefill_tokens: list[int] = field(default_factory=list)
    num_decode_tokens: list[int] = field(default_factory=list)
    prefill_kv_tokens: list[int] = field(default_factory=list)
    decode_kv_tokens: list[int] = field(default_factory=list)
    num_seqs: list[int] = field(default_factory=list)
    kv_blocks_used: list[int] = field(default_factory=list)
    kv_blocks_total: list[int] = field(default_factory=list)
    num_preempted: list[int] = field(default_factory=list)
    emit_ids: list[np.ndarray] = field(default_factory=list)  # request ids, one array per step
    emit_step: list[int] = field(default_factory=list)


@dataclass
class PrefillEntry:
    """A request whose known tokens are not all computed yet (prompt, or prompt + output
    after a recompute preemption)."""

    request_id: int
    num_computed: int
    num_target: int
    num_blocks: int = 0


class ReplicaState:
    """One replica's queues and KV cache; `begin` applies a plan, `finish` applies its outcome."""

    def __init__(
        self,
        index: int,
        requests: RequestTable,
        log: StepLog,
        *,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        reserve_full: bool = False,
        num_speculative_tokens: int = 0,
        speculate_max_batch: int | None = None,
        acceptance: AcceptanceSampler | None = None,
    ) -> None:
        self.index = index
        self.requests = requests
        self.log = log
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
        self.acceptance = acceptance
        k = num_speculative_tokens
        # vLLM's spec-decode counters: drafts, draft tokens, accepted tokens, accepted per position.
        self.spec_num_drafts = 0
        self.spec_accepted_per_position = np.zeros(k, dtype=np.int64)
        self.waiting: deque[int] = deque()
        self.prefilling: list[PrefillEntry] = []
        # One 2-D array so that compaction and the per-step update are single numpy calls.
        self._dec = np.zeros((3, max_num_seqs), dtype=np.int64)
        self.dec_ids = self._dec[0]
        self.dec_computed = self._dec[1]  # tokens whose KV is cached
        self.dec_remaining = self._dec[2]  # output tokens still to emit
        self._step_delta = np.array([[1], [-1]], dtype=np.int64)
        self._block_mask = block_size - 1 if block_size & (block_size - 1) == 0 else None
        self.num_decoding = 0
        self.decode_kv_sum = 0  # sum of dec_computed[:num_decoding], kept incrementally
        # Disaggregated serving. A prefill instance hands each finished prefill to
        # `handoff(state, request_id, num_computed, num_blocks)` and keeps its blocks
        # (`num_held_blocks`) until the KV transfer ends; a decode instance reserves blocks and a
        # sequence slot for each transfer in flight (`num_incoming`) before it starts.
        self.handoff: Callable[[ReplicaState, int, int, int], None] | None = None
        self.num_held_blocks = 0
        self.num_incoming = 0

    # ------------------------------------------------------------------ views for policies

    @property
    def num_running(self) -> int:
        """Sequences holding a slot: decoding, prefilling and KV transfers on their way in."""
        return self.num_decoding + len(self.prefilling) + self.num_incoming

    @property
    def num_outstanding(self) -> int:
        return self.num_running + len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.num_decoding or self.prefilling or self.waiting)

    def waits_on_transfers(self) -> bool:
        """Whether KV blocks are tied up by transfers in flight (a step may have to wait)."""
        return bool(self.num_held_blocks or self.num_incoming)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def target_tokens(self, request_id: int) -> int:
        """Tokens a newly admitted request must compute: prompt plus already emitted output."""
        return self.requests.prompt_len[request_id] + self.requests.emitted[request_id]

    def decode_width(self, num_decodes: int) -> int:
        """Query tokens per decoding request this step: k+1 when speculating, else 1."""
        k = self.num_speculative_tokens
        if k and (self.speculate_max_batch is None or num_decodes <= self.speculate_max_batch):
            return k + 1
        return 1

    def decode_block_need(self, num_decodes: int, width: int = 1) -> int:
        """New KV blocks the first `num_decodes` decoding requests need for `width` more tokens."""
        if self.reserve_full or num_decodes == 0:
            return 0
        computed = self.dec_computed[:num_decodes]
        if width > 1:
            bs = self.block_size
            return int((-(-(computed + width) // bs) + (-computed // bs)).sum())
        if self._block_mask is not None:  # power-of-two block size: a cheaper modulo
            return int(np.count_nonzero((computed & self._block_mask) == 0))
        return int(np.count_nonzero(computed % self.block_size == 0))

    def slot_block_need(self, slot: int, width: int) -> int:
        """New KV blocks the decoding request in `slot` needs for `width` more tokens."""
        if self.reserve_full:
            return 0
        c = int(self.dec_computed[slot])
        return self.blocks_for(c + width) - self.blocks_for(c)

    def decode_blocks_held(self, slot: int) -> int:
        """KV blocks held by the decoding request in `slot`."""
        if self.reserve_full:
            return self.reserve_blocks(int(self.dec_ids[slot]))
        return self.blocks_for(int(self.dec_computed[slot]))

    def reserve_blocks(self, request_id: int) -> int:
        """Blocks a request holds for its whole life under full reservation."""
        p = self.requests.prompt_len[request_id]
        n = self.requests.output_len[request_id]
        return self.blocks_for(p + n - 1)

    # ------------------------------------------------------------------ applying a plan

    def begin(self, plan: StepPlan, now: float) -> BatchShape:
        """Preempt, admit and allocate as planned; return the shape the cost model prices."""
        req = self.requests
        for _ in range(plan.num_preempt_partials):
            entry = self.prefilling.pop()
            self._preempt(entry.request_id, entry.num_blocks)
        for _ in range(plan.num_preempt_decodes):
            i = self.num_decoding - 1
            rid = int(self.dec_ids[i])
            req.emitted[rid] = req.output_len[rid] - int(self.dec_remaining[i])
            self.decode_kv_sum -= int(self.dec_computed[i])
            self._preempt(rid, self.decode_blocks_held(i))
            self.num_decoding = i
        for _ in range(plan.num_admitted):
            rid = self.waiting.popleft()
            if req.first_scheduled_at[rid] != req.first_scheduled_at[rid]:  # NaN: first time
                req.first_scheduled_at[rid] = now
            entry = PrefillEntry(rid, 0, self.target_tokens(rid))
            if self.reserve_full:
                entry.num_blocks = self.reserve_blocks(rid)
                self.free_blocks -= entry.num_blocks
            self.prefilling.append(entry)

        m = plan.num_decodes
        w = plan.decode_width
        self.free_blocks -= plan.decode_blocks
        prefill_tokens = 0
        prefill_seqs = 0
        attn_pairs = 0.0
        prefill_kv = 0
        for entry, q in zip(self.prefilling, plan.chunks, strict=True):
            if q == 0:
                continue
            c = entry.num_computed
            if not self.reserve_full:
                blocks = self.blocks_for(c + q)
                self.free_blocks -= blocks - entry.num_blocks
                entry.num_blocks = blocks
            prefill_tokens += q
            prefill_seqs += 1
            attn_pairs += q * (c + q / 2)
            prefill_kv += c + q
        if self.free_blocks < 0:
            raise AssertionError(f"replica {self.index}: KV over-allocated by the policy")
        return BatchShape(
            num_prefill_tokens=prefill_tokens,
            num_prefill_seqs=prefill_seqs,
            prefill_attn_pairs=attn_pairs,
            prefill_kv_tokens=prefill_kv,
            num_decode_seqs=m,
            num_decode_tokens=m * w,
            decode_kv_tokens=(
                self.decode_kv_sum + m * w
                if m == self.num_decoding
                else int(self.dec_computed[:m].sum()) + m * w
            ),
        )

    def _preempt(self, request_id: int, num_blocks: int) -> None:
        # NOTE: vLLM's default recompute preemption frees the blocks and puts the request back
        # at the front of the waiting queue; its emitted tokens stay emitted.
        self.free_blocks += num_blocks
        self.requests.num_preemptions[request_id] += 1
        self.waiting.appendleft(request_id)

    def finish(
        self, plan: StepPlan, shape: BatchShape, started_at: float, duration_s: float
    ) -> int:
        """Apply the step's outcome at its end: stamp tokens, complete requests, log the step.

        Returns the number of requests that finished (for closed-loop clients)."""
        log = self.log
        step = len(log.started_at)
        req = self.requests
        m = plan.num_decodes
        finished = 0
        if m and plan.decode_width > 1:
            self._finish_verify(m, plan.decode_width, step)
        elif m:
            log.emit_ids.append(self.dec_ids[:m].astype(np.int32))
            log.emit_step.append(step)
            self._dec[1:3, :m] += self._step_delta  # computed += 1, remaining -= 1
            self.decode_kv_sum += m
        if m:
            done = self.dec_remaining[:m] == 0
            num_done = int(np.count_nonzero(done))
            if num_done:
                finished += num_done
                self._drop_finished(done, m)

        completed: list[int] = []
        handoffs: list[tuple[int, int, int]] = []
        if plan.chunks:
            kept: list[PrefillEntry] = []
            for entry, q in zip(self.prefilling, plan.chunks, strict=True):
                entry.num_computed += q
                if entry.num_computed < entry.num_target:
                    kept.append(entry)
                    continue
                rid = entry.request_id
                completed.append(rid)
                emitted = req.emitted[rid] + 1
                remaining_out = req.output_len[rid] - emitted
                if remaining_out == 0:
                    req.emitted[rid] = emitted
                    self.free_blocks += entry.num_blocks
                    finished += 1
                    continue
                if self.handoff is not None:
                    req.emitted[rid] = emitted
                    self.num_held_blocks += entry.num_blocks
                    handoffs.append((rid, entry.num_computed, entry.num_blocks))
                    continue
                i = self.num_decoding
                self.dec_ids[i] = rid
                self.dec_computed[i] = entry.num_computed
                self.dec_remaining[i] = remaining_out
                self.num_decoding = i + 1
                self.decode_kv_sum += entry.num_computed
            self.prefilling = kept
        if completed:
            log.emit_ids.append(np.asarray(completed, dtype=np.int32))
            log.emit_step.append(step)

        log.replica.append(self.index)
        log.started_at.append(started_at)
        log.duration_s.append(duration_s)
        log.num_prefill_tokens.append(shape.num_prefill_tokens)
        log.num_decode_tokens.append(shape.num_decode_tokens)
        log.prefill_kv_tokens.append(shape.prefill_kv_tokens)
        log.decode_kv_tokens.append(shape.decode_kv_tokens)
        log.num_seqs.append(shape.num_prefill_seqs + shape.num_decode_seqs)
        log.kv_blocks_used.append(self.num_blocks - self.free_blocks)
        log.kv_blocks_total.append(self.num_blocks)
        log.num_preempted.append(plan.num_preempt_decodes + plan.num_preempt_partials)
        if self.handoff is not None:
            for rid, num_computed, num_blocks in handoffs:
                self.handoff(self, rid, num_computed, num_blocks)
        return finished

    # ------------------------------------------------------------------ KV handoff

    def release_held(self, num_blocks: int) -> None:
        """A prefill instance's KV transfer ended: its blocks are free again."""
        self.num_held_blocks -= num_blocks
        self.free_blocks += num_blocks

    def reserve_incoming(self, num_blocks: int) -> None:
        """A decode instance takes a slot and the blocks of a KV transfer before it starts."""
        self.free_blocks -= num_blocks
        self.num_incoming += 1
        if self.free_blocks < 0 or self.num_running > self.max_num_seqs:
            raise AssertionError(f"replica {self.index}: KV transfer over-admitted")

    def accept_decoding(self, request_id: int, num_computed: int, remaining: int) -> None:
        """A transferred request joins the decode batch (its blocks were reserved already).

        Appending is safe while a step is in flight: a step touches only its first
        `num_decodes` slots, and finished slots are compacted over the whole array.
        """
        i = self.num_decoding
        self.dec_ids[i] = request_id
        self.dec_computed[i] = num_computed
        self.dec_remaining[i] = remaining
        self.num_decoding = i + 1
        self.decode_kv_sum += num_computed
        self.num_incoming -= 1

    def _finish_verify(self, m: int, width: int, step: int) -> None:
        """Outcome of a speculative verify: accepted + 1 tokens each, truncated to the output
        length, all stamped at the step's end; KV of rejected positions is freed."""
        assert self.acceptance is not None
        k = width - 1
        ids = self.dec_ids[:m]
        accepted = self.acceptance.sample(ids)
        self.spec_num_drafts += m
        self.spec_accepted_per_position += np.bincount(accepted, minlength=k + 1)[1:][
            ::-1
        ].cumsum()[::-1]
        computed = self.dec_computed[:m]
        remaining = self.dec_remaining[:m]
        emitted = np.minimum(accepted + 1, remaining)
        bs = self.block_size
        if not self.reserve_full:
            allocated = -(-(computed + width) // bs)
            kept = -(-(computed + emitted) // bs)
            self.free_blocks += int((allocated - kept).sum())
        computed += emitted
        remaining -= emitted
        self.decode_kv_sum += int(emitted.sum())
        self.log.emit_ids.append(np.repeat(ids.astype(np.int32), emitted))
        self.log.emit_step.append(step)

    def _drop_finished(self, done: np.ndarray, m: int) -> None:
        """Free finished decoding requests and compact the arrays, keeping admission order."""
        n = self.num_decoding
        keep = np.ones(n, dtype=bool)
        keep[:m] = ~done
        computed = self.dec_computed[:m][done]
        if self.reserve_full:
            freed = sum(self.reserve_blocks(int(r)) for r in self.dec_ids[:m][done])
        else:
            freed = int((-(-computed // self.block_size)).sum())
        self.free_blocks += freed
        self.decode_kv_sum -= int(computed.sum())
        k = int(np.count_nonzero(keep))
        self._dec[:, :k] = self._dec[:, :n][:, keep]
        self.num_decoding = k
