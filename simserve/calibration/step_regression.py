"""The decode step of a served run, read from its per-request timings alone (no simulator).

Between its first and last token a request with `n` output tokens takes `n - 1` decode steps,
and under prefill-first scheduling it also sits out every prefill that starts meanwhile. So its
decode time is about

    (n - 1) x (fixed_ms + per_seq_ms x B) + prefills x per_prefill_ms + prompt tokens x per_token_ms

with B the mean number of requests decoding alongside it and `prefills` / `prompt tokens` the
first tokens (and their prompts) that other requests got in the meantime. A non-negative least
squares fit on relative error over a run's requests gives the step's fixed and per-sequence
cost as the served engine ran it, the yardstick for a profile measured offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from simserve.calibration.occupancy import read_run_timings
from simserve.errors import InputError

__all__ = ["DecodeStepFit", "fit_decode_step"]

# NOTE: requests with a handful of tokens carry more timing noise than decode time.
MIN_OUTPUT_TOKENS = 20
_GRID = 100  # samples of the concurrency over each request's decode interval


@dataclass(frozen=True)
class DecodeStepFit:
    """Per-run decode step cost (ms), and the fit's MAPE over the run's requests (%)."""

    fixed_ms: float
    per_seq_ms: float
    per_prefill_ms: float
    per_prompt_token_ms: float
    mean_batch: float
    mean_context_tokens: float  # KV tokens per decoding request, averaged like mean_batch
    num_requests: int
    mape_pct: float

    @property
    def mean_step_ms(self) -> float:
        """The fitted decode step at the run's mean batch."""
        return self.fixed_ms + self.per_seq_ms * self.mean_batch


def fit_decode_step(path: str | Path) -> DecodeStepFit:
    """Fit the decode step of the run in `path` (a ground-truth CSV with measured latencies)."""
    col = read_run_timings(path)
    first_s = col["arrival_s"] + col["ttft_ms"] / 1e3
    end_s = col["arrival_s"] + col["latency_ms"] / 1e3
    steps = col["output_len"] - 1
    x, y, batch, context = [], [], [], []
    span_s = np.maximum(end_s - first_s, 1e-9)
    for i in np.flatnonzero(col["output_len"] >= MIN_OUTPUT_TOKENS):
        grid = np.linspace(first_s[i], end_s[i], _GRID, endpoint=False)
        held = (first_s[None, :] <= grid[:, None]) & (grid[:, None] < end_s[None, :])
        progress = np.clip((grid[:, None] - first_s[None, :]) / span_s[None, :], 0.0, 1.0)
        tokens = col["prompt_len"][None, :] + col["output_len"][None, :] * progress
        b = float(np.mean(held.sum(axis=1)))
        context.append(float(np.sum(held * tokens)) / max(float(held.sum()), 1.0))
        during = (first_s > first_s[i]) & (first_s < end_s[i])
        x.append([steps[i], steps[i] * b, during.sum(), col["prompt_len"][during].sum()])
        y.append((end_s[i] - first_s[i]) * 1e3)
        batch.append(b)
    if len(y) < 8:
        raise InputError(f"fewer than 8 requests with >= {MIN_OUTPUT_TOKENS} output tokens",
                         source=str(path))
    xa, ya = np.array(x), np.array(y)
    coef, _ = nnls(xa / ya[:, None], np.ones_like(ya))
    mape = float(100 * np.mean(np.abs(xa @ coef / ya - 1)))
    return DecodeStepFit(float(coef[0]), float(coef[1]), float(coef[2]), float(coef[3]),
                         float(np.mean(batch)), float(np.mean(context)), len(ya), mape)
