"""The KV cache a real serving run used, read back from its per-request timings.

A served run's log rarely states the engine's KV capacity (vLLM prints `# GPU blocks` at start-up,
which benchmark files do not keep). Its per-request timings bound it from below: from its first
token to its last, a request holds the blocks of its prompt plus the tokens generated so far.
Once the cache fills, vLLM stops admitting prefills and the occupancy stays flat at the
capacity; the flat top of the measured occupancy is therefore the capacity the real engine had.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simserve.calibration.served_run import read_run_columns
from simserve.errors import InputError

__all__ = ["TIMING_COLUMNS", "KvOccupancy", "measured_kv_occupancy", "read_run_timings"]

TIMING_COLUMNS = ("arrival_s", "prompt_len", "output_len", "ttft_ms", "latency_ms")
# NOTE: 20 samples per second of a run resolve every decode step of these engines (20-100 ms)
# closely enough for a peak: the occupancy moves by at most one block per request per step.
_SAMPLES_PER_S = 20.0


@dataclass(frozen=True)
class KvOccupancy:
    """KV blocks held over a run (sampled on an even time grid), and its peak."""

    times_s: np.ndarray
    blocks: np.ndarray
    block_size: int

    @property
    def peak_blocks(self) -> int:
        return int(self.blocks.max()) if self.blocks.size else 0

    def share_of_time_above(self, blocks: float) -> float:
        """Fraction of the run during which more than `blocks` blocks were held."""
        return float(np.mean(self.blocks > blocks)) if self.blocks.size else 0.0


def read_run_timings(path: str | Path) -> dict[str, np.ndarray]:
    """The per-request timing columns of a served run's CSV (extra columns are ignored)."""
    return read_run_columns(path, TIMING_COLUMNS,
                            f"a served run's per-request timings: {', '.join(TIMING_COLUMNS)}")


def measured_kv_occupancy(path: str | Path, block_size: int) -> KvOccupancy:
    """KV blocks held over a measured run, rebuilt from its per-request timings.

    A request holds ceil((prompt + generated) / block_size) blocks from its first token to its
    end; its tokens are spread evenly over that interval (exact when its decode steps take equal
    time, which they nearly do within a second). The prefill step itself is left out: it lasts
    tens of milliseconds against seconds of decoding.
    """
    if block_size < 1:
        raise InputError(f"block_size must be >= 1, got {block_size}", field="block_size")
    col = read_run_timings(path)
    first_s = col["arrival_s"] + col["ttft_ms"] / 1e3
    end_s = col["arrival_s"] + col["latency_ms"] / 1e3
    span_s = np.maximum(end_s - first_s, 1e-9)
    times_s = np.arange(0.0, float(end_s.max()), 1.0 / _SAMPLES_PER_S)
    held = (first_s[None, :] <= times_s[:, None]) & (times_s[:, None] < end_s[None, :])
    progress = np.clip((times_s[:, None] - first_s[None, :]) / span_s[None, :], 0.0, 1.0)
    tokens = col["prompt_len"][None, :] + 1 + (col["output_len"][None, :] - 1) * progress
    blocks = np.where(held, np.ceil(tokens / block_size), 0.0).sum(axis=1)
    return KvOccupancy(times_s, blocks, block_size)
