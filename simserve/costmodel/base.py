"""The seam between the engine and any cost model: a batch shape in, seconds out."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "BatchShape",
    "CostModel",
    "DecodeRun",
    "decode_run_fn",
    "decode_run_s",
    "decode_step_fn",
    "envelope_report",
    "envelope_warnings",
    "stepwise_run",
]


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


def decode_run_s(cost_model: CostModel, num_seqs: int,
                 decode_kv_tokens: np.ndarray) -> np.ndarray:
    """Seconds of each of a run of plain decode steps: `num_seqs` sequences, one token each,
    reading `decode_kv_tokens[i]` KV tokens in step i (the engine's fast-forward).

    Cost models may implement `decode_run_s(num_seqs, decode_kv_tokens)` with numpy; it must
    give exactly the floats `step_time` gives step by step (the same operations in the same
    order), which tests check. Others are priced step by step here.
    """
    vectorised = getattr(cost_model, "decode_run_s", None)
    if vectorised is not None:
        return vectorised(num_seqs, decode_kv_tokens)
    step_time = cost_model.step_time
    return np.array([
        step_time(BatchShape(0, 0, 0.0, 0, num_seqs, num_seqs, kv))
        for kv in decode_kv_tokens.tolist()
    ])


def decode_step_fn(cost_model: CostModel, num_seqs: int) -> Callable[[int], float]:
    """Seconds of a plain decode step of `num_seqs` sequences as a function of its decode KV
    tokens (the engine's fast-forward prices runs of such steps one after another).

    Cost models may implement `decode_step_fn(num_seqs)` returning a closure with the terms
    that do not depend on the KV folded in; it must give exactly the float `step_time` gives
    (the same operations in the same order), which tests check.
    """
    specialised = getattr(cost_model, "decode_step_fn", None)
    if specialised is not None:
        return specialised(num_seqs)
    step_time = cost_model.step_time
    return lambda kv: step_time(BatchShape(0, 0, 0.0, 0, num_seqs, num_seqs, kv))


#: Prices a fast-forwarded run: `(now, first_decode_kv, max_steps, horizon)` -> the steps'
#: start times (one more than steps: the last is the run's end) and durations. The steps are
#: plain decodes of a fixed batch whose decode KV grows by the batch size each step; step i+1
#: starts when step i ends (summed in order, as SimPy would), at most `max_steps` steps, and
#: every step after the first starts before `horizon`.
DecodeRun = Callable[[float, int, int, float], tuple[list[float], list[float]]]

# Runs at least this long are priced by `decode_run_s` (numpy) when the model has it.
_VECTORISE_FROM = 48


def decode_run_fn(cost_model: CostModel, num_seqs: int) -> DecodeRun:
    """The engine's fast-forward pricer for runs of plain decode steps of `num_seqs` sequences.

    Cost models may implement `decode_run_fn(num_seqs)` (the whole loop in one frame: the
    fast-forward's hot path); it must give exactly the floats `step_time` gives step by step,
    which tests check. Others are priced by `decode_step_fn` one step at a time, or by
    `decode_run_s` in one numpy call for long runs.
    """
    specialised = getattr(cost_model, "decode_run_fn", None)
    if specialised is not None:
        return specialised(num_seqs)
    step_s = decode_step_fn(cost_model, num_seqs)
    stepwise = stepwise_run(step_s, num_seqs)
    if getattr(cost_model, "decode_run_s", None) is None:
        return stepwise
    m = num_seqs

    def run(now: float, first_kv: int, max_steps: int, horizon: float
            ) -> tuple[list[float], list[float]]:
        k = max_steps
        if horizon != float("inf"):
            # Steps only get longer as contexts grow, so at most this many start before the
            # horizon (min before int: a horizon 1e308 s away makes the quotient infinite).
            k = min(k, int(min((horizon - now) / step_s(first_kv), k)) + 2)
        if k <= _VECTORISE_FROM:
            return stepwise(now, first_kv, k, horizon)
        kv = np.arange(first_kv, first_kv + m * k, m, dtype=np.int64)[:k]
        run_s = decode_run_s(cost_model, m, kv)
        # The start of step i+1 is the end of step i, summed in order as SimPy would.
        ends = np.add.accumulate(np.concatenate(([now], run_s)))
        k = int(np.searchsorted(ends[1:k], horizon, side="left")) + 1
        return ends[: k + 1].tolist(), run_s[:k].tolist()

    return run


def stepwise_run(step_s: Callable[[int], float], num_seqs: int) -> DecodeRun:
    """A `DecodeRun` that prices each step with `step_s(decode_kv_tokens)` in turn."""

    def run(now: float, first_kv: int, max_steps: int, horizon: float
            ) -> tuple[list[float], list[float]]:
        starts, durations = [now], []
        t, kv = now, first_kv
        for _ in range(max_steps):
            if durations and t >= horizon:
                break
            d = step_s(kv)
            durations.append(d)
            t = t + d
            starts.append(t)
            kv += num_seqs
        return starts, durations

    return run


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
