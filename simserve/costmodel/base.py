"""The seam between the engine and any cost model: a batch shape in, seconds out."""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["BatchShape", "CostModel", "envelope_report", "envelope_warnings"]


class BatchShape(NamedTuple):
    """Aggregate shape of one step; aggregates (not per-sequence lists) keep costing O(1).

    Prefill chunk i computes q_i new tokens over c_i cached ones; decode/verify sequence j has
    query width w_j over a context of l_j tokens (its KV read, including the new tokens).
    """

    num_prefill_tokens: int = 0  # sum q_i
    num_prefill_seqs: int = 0  # number of chunks
    prefill_attn_pairs: float = 0.0  # sum q_i * (c_i + q_i / 2): causal query-key pairs
    prefill_kv_tokens: int = 0  # sum (c_i + q_i): KV written/read by prefill attention
    num_decode_seqs: int = 0  # sequences in the decode/verify part
    num_decode_tokens: int = 0  # sum w_j (1 per plain decode, k+1 per verify)
    decode_kv_tokens: int = 0  # sum l_j: KV tokens read by decode attention

    @property
    def num_tokens(self) -> int:
        """Total query tokens N through the linear layers."""
        return self.num_prefill_tokens + self.num_decode_tokens


@runtime_checkable
class CostModel(Protocol):
    """Anything that prices a step; `describe()` goes into the run metadata."""

    def step_time(self, shape: BatchShape) -> float:
        """Seconds one engine step of this shape takes."""
        ...

    def describe(self) -> dict[str, object]:
        """What model this is and where its numbers come from."""
        ...


def envelope_warnings(cost_model: CostModel, steps: object) -> list[str]:
    """Warnings for steps outside the data a fitted model was calibrated on.

    Cost models fitted to measurements implement `envelope_warnings(steps: StepRecords)`;
    analytical ones have no envelope and return nothing.
    """
    check = getattr(cost_model, "envelope_warnings", None)
    return list(check(steps)) if check is not None else []


def envelope_report(cost_model: CostModel, steps: object) -> dict[str, object] | None:
    """Structured counts of steps outside a fitted model's envelope (None without one)."""
    report = getattr(cost_model, "envelope_report", None)
    return report(steps) if report is not None else None
