"""What leaves a simulation: per-request, per-token and per-step records as numpy arrays.

Records, not plots or summaries, cross the engine/metrics boundary (DESIGN §9). Token times are
stored flat in CSR form (`token_offsets`), ordered by request then time, so metrics are computed
with vectorised numpy and never by looping over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["REJECT_REASONS", "SimulationResult", "StepRecords"]

# Codes stored in `SimulationResult.rejected`; 0 means the request was served.
REJECT_REASONS: dict[int, str] = {
    0: "",
    1: "exceeds_max_model_len",
    2: "exceeds_kv_capacity",
    3: "prompt_exceeds_max_num_batched_tokens",
}


@dataclass(frozen=True)
class StepRecords:
    """One row per engine step (all replicas, in order of completion)."""

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
    token_offsets: np.ndarray  # int64, size n+1: tokens of request i are [off[i], off[i+1])
    token_times_s: np.ndarray  # float64, emission time of every token
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

    @property
    def num_requests(self) -> int:
        return int(self.arrived_at.size)

    @property
    def first_token_at(self) -> np.ndarray:
        """Time of every request's first token (NaN if it got none)."""
        offsets = self.token_offsets
        has_token = offsets[1:] > offsets[:-1]
        first = np.full(self.num_requests, np.nan)
        first[has_token] = self.token_times_s[offsets[:-1][has_token]]
        return first

    @property
    def kv_transfer_wait_s(self) -> np.ndarray | None:
        """Seconds from the first token (the end of the prefill) to the start of the KV
        transfer: waiting for a decode slot and KV blocks, then for the link."""
        if self.kv_transfer_started_at is None:
            return None
        return self.kv_transfer_started_at - self.first_token_at

    def tokens_of(self, request_id: int) -> np.ndarray:
        """Emission times of one request's tokens (a view)."""
        lo, hi = self.token_offsets[request_id], self.token_offsets[request_id + 1]
        return self.token_times_s[lo:hi]
