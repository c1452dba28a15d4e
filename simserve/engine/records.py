"""What leaves a simulation: per-request, per-token and per-step records as numpy arrays.

Records, not plots or summaries, cross the engine/metrics boundary (DESIGN §9). Token times are
laid out in CSR form (`token_offsets`: the tokens of request i are `[off[i], off[i+1])`, in time
order), but the engine does not store one time per token: a request that decodes for 500 steps
is one run of 500 consecutive steps of its engine. `StepTokenTimes` keeps those runs and expands
them into times only for the requests a caller asks for (`chunk`), so memory stays proportional
to steps and requests, not to tokens; `FlatTokenTimes` holds explicit times (tests, figures).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np

__all__ = [
    "REJECT_REASONS",
    "FlatTokenTimes",
    "SimulationResult",
    "StepRecords",
    "StepTokenTimes",
    "TokenTimes",
]

# Codes stored in `SimulationResult.rejected`; 0 means the request was served.
REJECT_REASONS: dict[int, str] = {
    0: "",
    1: "exceeds_max_model_len",
    2: "exceeds_kv_capacity",
    3: "prompt_exceeds_max_num_batched_tokens",
}


@dataclass(frozen=True)
class StepRecords:
    """One row per engine step (all engines), ordered by end time, then engine."""

    replica: np.ndarray  # int32
    started_at: np.ndarray  # float64, s
    duration_s: np.ndarray  # float64, s
    num_prefill_tokens: np.ndarray  # int64: new prompt tokens computed (chunks)
    num_decode_tokens: np.ndarray  # int64: decode/verify query tokens
    prefill_kv_tokens: np.ndarray  # int64: sum over prefill chunks of cached + new tokens
    decode_kv_tokens: np.ndarray  # int64: sum over decode sequences of context length
    num_seqs: np.ndarray  # int64: sequences in the batch
    kv_blocks_used: np.ndarray  # int64: after the step
    kv_blocks_total: np.ndarray  # int64
    # int64: requests preempted (recompute: blocks freed, back to the queue) when this step was
    # planned, on this step's replica; sums to the per-request counts over the run
    num_preempted: np.ndarray

    def __len__(self) -> int:
        return int(self.started_at.size)


class TokenTimes(Protocol):
    """Emission times of every token, by request (CSR offsets), expanded on demand."""

    @property
    def offsets(self) -> np.ndarray:
        """int64, size n+1: the tokens of request i are `[offsets[i], offsets[i+1])`."""
        ...

    def chunk(self, r0: int, r1: int) -> np.ndarray:
        """Times (s) of the tokens of requests `[r0, r1)`, flat and in CSR order (a new array)."""
        ...

    def take(self, request_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Times of the tokens of the given requests (in that order), flat, and their CSR
        offsets (from 0)."""
        ...

    def first_and_last(self) -> tuple[np.ndarray, np.ndarray]:
        """Per request, the time of its first and of its last token (NaN without tokens)."""
        ...

    def gap_multiset(self, include: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The gaps between consecutive tokens of the `include`d requests, pooled, as values
        and how often each occurs (None: once each), in no particular order: each value is
        exactly the float `t_i - t_(i-1)` a per-token pass computes."""
        ...


@dataclass(frozen=True)
class FlatTokenTimes:
    """Explicit token times in CSR form."""

    offsets: np.ndarray
    times_s: np.ndarray

    def chunk(self, r0: int, r1: int) -> np.ndarray:
        return self.times_s[self.offsets[r0] : self.offsets[r1]].copy()

    def take(self, request_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        off = np.asarray(self.offsets, dtype=np.int64)
        counts = off[1:][request_ids] - off[:-1][request_ids]
        local = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=local[1:])
        index = np.repeat(off[:-1][request_ids] - local[:-1], counts)
        index += np.arange(int(local[-1]), dtype=np.int64)
        return self.times_s[index], local

    def first_and_last(self) -> tuple[np.ndarray, np.ndarray]:
        off = np.asarray(self.offsets, dtype=np.int64)
        n = off.size - 1
        has = off[1:] > off[:-1]
        first, last = np.full(n, np.nan), np.full(n, np.nan)
        first[has] = self.times_s[off[:-1][has]]
        last[has] = self.times_s[off[1:][has] - 1]
        return first, last

    def gap_multiset(self, include: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        off = np.asarray(self.offsets, dtype=np.int64)
        # Token j is pooled (with the gap to token j-1) when its request is included and it
        # is not the request's first token.
        pooled = np.repeat(np.asarray(include, dtype=bool), np.diff(off))
        pooled[off[:-1][off[:-1] < off[1:]]] = False
        index = np.flatnonzero(pooled)
        del pooled
        gaps = self.times_s[index]
        index -= 1
        gaps -= self.times_s[index]
        return gaps, None


@dataclass(frozen=True)
class StepTokenTimes:
    """Token times as pieces of step indices (see the module docstring).

    `source` lists global step indices; piece p gives `piece_len[p]` tokens whose steps are
    `source[piece_start[p] : piece_start[p] + piece_len[p]]` (a run of decode steps, or one
    step repeated for a burst). Pieces are sorted by request, then time; `piece_offsets` is
    their CSR index by request. A token's time is the end of its step, `step_end_s[step]`.
    """

    offsets: np.ndarray  # int64, n+1: tokens per request (CSR)
    step_end_s: np.ndarray  # float64 per global step
    source: np.ndarray  # int64 global step indices
    piece_start: np.ndarray  # int64 per piece, into `source`
    piece_len: np.ndarray  # int64 per piece
    piece_offsets: np.ndarray  # int64, n+1: pieces of request i

    @cached_property
    def _source_end_s(self) -> np.ndarray:
        """The end time of every entry of `source` (one gather per token instead of two)."""
        return self.step_end_s[self.source]

    def chunk(self, r0: int, r1: int) -> np.ndarray:
        p0, p1 = int(self.piece_offsets[r0]), int(self.piece_offsets[r1])
        return self._expand(self.piece_start[p0:p1], self.piece_len[p0:p1])

    def take(self, request_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = self.piece_offsets[:-1][request_ids]
        num_pieces = self.piece_offsets[1:][request_ids] - first
        # The pieces of the requests asked for, request after request.
        pieces = np.repeat(first - (np.cumsum(num_pieces) - num_pieces), num_pieces)
        pieces += np.arange(int(num_pieces.sum()), dtype=np.int64)
        counts = self.offsets[1:][request_ids] - self.offsets[:-1][request_ids]
        local = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=local[1:])
        return self._expand(self.piece_start[pieces], self.piece_len[pieces]), local

    def _expand(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Times of the tokens of these pieces, in order."""
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0)
        # Index of every token into `source`: its position in the output, shifted by its
        # piece's start minus the piece's first output position (one repeat, one add).
        first_slot = np.cumsum(lengths) - lengths
        index = np.repeat(starts - first_slot, lengths)
        index += np.arange(total, dtype=np.int64)
        return self._source_end_s[index]

    def first_and_last(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.offsets.size - 1
        first, last = np.full(n, np.nan), np.full(n, np.nan)
        has = self.piece_offsets[1:] > self.piece_offsets[:-1]
        p_first = self.piece_offsets[:-1][has]
        p_last = self.piece_offsets[1:][has] - 1
        first[has] = self.step_end_s[self.source[self.piece_start[p_first]]]
        end = self.piece_start[p_last] + self.piece_len[p_last] - 1
        last[has] = self.step_end_s[self.source[end]]
        return first, last

    def gap_multiset(self, include: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gaps inside a piece are between consecutive `source` entries, the same for every
        piece that covers both, so they are counted per source entry (no per-token work);
        each piece after a request's first adds the gap from the previous piece's last
        token."""
        ends = self._source_end_s
        num_pieces = self.piece_start.size
        # NOTE: per-piece flags by repeat, not gathers through a per-piece request id: this
        # runs once on arrays of every piece (millions), where fresh memory costs the most.
        kept = np.repeat(np.asarray(include, dtype=bool), np.diff(self.piece_offsets))
        start, length = self.piece_start[kept], self.piece_len[kept]
        size = ends.size
        # How many kept pieces contain both entry j-1 and entry j (j in [start+1, start+len)).
        count = np.bincount(start + 1, minlength=size + 1)
        count -= np.bincount(start + length, minlength=size + 1)
        np.cumsum(count, out=count)
        step_gaps = ends[1:] - ends[:-1]
        covered = count[1:size] > 0
        values = [step_gaps[covered]]
        weights = [count[1:size][covered]]
        # Pieces after the first of their request: the gap from the previous piece.
        later = kept.copy()
        firsts = self.piece_offsets[:-1]
        later[firsts[firsts < num_pieces]] = False
        p = np.flatnonzero(later)
        if p.size:
            prev_last = self.piece_start[p - 1] + self.piece_len[p - 1] - 1
            values.append(ends[self.piece_start[p]] - ends[prev_last])
            weights.append(np.ones(p.size, dtype=np.int64))
        return np.concatenate(values), np.concatenate(weights)


@dataclass(frozen=True)
class SimulationResult:
    """Everything a run produced. Arrays are indexed by request id (0..n-1, arrival order)."""

    arrived_at: np.ndarray  # float64, s
    prompt_len: np.ndarray  # int64, tokens
    output_len: np.ndarray  # int64, tokens asked for
    first_scheduled_at: np.ndarray  # float64, s (NaN if never scheduled)
    finished_at: np.ndarray  # float64, s (NaN if not finished)
    num_preemptions: np.ndarray  # int64
    replica: np.ndarray  # int32 (-1 if rejected before routing)
    rejected: np.ndarray  # int8 code, see REJECT_REASONS
    tokens: TokenTimes  # emission time of every token, by request
    steps: StepRecords
    kv_blocks_per_replica: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # Speculative decoding counters (vLLM's names): k drafted tokens per draft.
    num_speculative_tokens: int = 0
    spec_num_drafts: int = 0
    spec_accepted_per_position: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # Disaggregated serving (None on a co-located cluster), per request (NaN / -1 without a
    # transfer): when the KV transfer started, seconds the KV cache spent on the link, and the
    # decode instance.
    kv_transfer_started_at: np.ndarray | None = None
    kv_transfer_s: np.ndarray | None = None
    decode_replica: np.ndarray | None = None
    # SimPy events the engines waited for, one per step or per fast-forwarded run of steps.
    num_step_events: int = 0
    # Prefix caching (None when off): prompt tokens each request found cached at its first
    # admission, and the tokens looked up and found over every admission (recomputes too).
    cached_tokens: np.ndarray | None = None  # int64 per request
    # Client timeouts (None without): requests cancelled because their client gave up.
    timed_out: np.ndarray | None = None  # bool per request
    prefix_cache_queried_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    # KV memory tiers (None: recompute preemption, no offload): totals over every engine,
    # named as in `engine.simulation._swap_totals`.
    kv_tiers: dict[str, float] | None = None

    @property
    def num_requests(self) -> int:
        return int(self.arrived_at.size)

    @property
    def token_offsets(self) -> np.ndarray:
        """int64, size n+1: tokens of request i are [off[i], off[i+1])."""
        return self.tokens.offsets

    @cached_property
    def token_times_s(self) -> np.ndarray:
        """Emission time of every token, flat in CSR order (expanded once; for a large run
        prefer `tokens.chunk`, which expands a range of requests at a time)."""
        return self.tokens.chunk(0, self.num_requests)

    @cached_property
    def first_token_at(self) -> np.ndarray:
        """Time of every request's first token (NaN if it got none)."""
        return self.tokens.first_and_last()[0]

    @property
    def kv_transfer_wait_s(self) -> np.ndarray | None:
        """Seconds from the first token (the end of the prefill) to the start of the KV
        transfer: waiting for a decode slot and KV blocks, then for the link."""
        if self.kv_transfer_started_at is None:
            return None
        return self.kv_transfer_started_at - self.first_token_at

    def tokens_of(self, request_id: int) -> np.ndarray:
        """Emission times of one request's tokens."""
        return self.tokens.chunk(request_id, request_id + 1)
