"""Real vLLM V1 serving runs (LLMServingSim's RTX PRO 6000 runs): per-request timings and the
running / waiting counts over time, measured and simulated.

Each run folder (`calibration/data/llmservingsim/RTXPRO6000/<model>/`) holds the server's
`requests.jsonl` (queue, schedule, first- and last-token times on the server's monotonic clock).
`v1_run_csv` turns it into the per-request CSV the replay reads (`arrival_s, prompt_len,
output_len, ttft_ms, tpot_ms, latency_ms`, arrivals relative to the first request), shipped
beside it as `requests.csv` (a test checks it is exactly what `v1_run_csv` writes).
`occupancy_series` counts, on a 1 s grid, the requests running
(scheduled, not finished) and waiting (arrived, not yet scheduled), from either side's timings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simserve.calibration.paths import DATA_DIR
from simserve.errors import InputError

__all__ = [
    "V1_RUNS",
    "V1Run",
    "occupancy_series",
    "v1_run_csv",
    "v1_runs",
]

V1_DIR = DATA_DIR / "llmservingsim" / "RTXPRO6000"
# run folder -> validation scenario
V1_RUNS: dict[str, str] = {
    "Llama-3.1-8B": "llama31-8b-rtxpro6000-vllm-v1.yaml",
    "Qwen3-32B": "qwen3-32b-tp2-rtxpro6000-vllm-v1.yaml",
}
CSV_COLUMNS = ("arrival_s", "prompt_len", "output_len", "ttft_ms", "tpot_ms", "latency_ms")


@dataclass(frozen=True)
class V1Run:
    """One measured V1 run: its folder, per-request CSV and per-request timeline (s), in
    arrival order."""

    name: str
    folder: Path
    csv_path: Path
    queued_s: np.ndarray
    scheduled_s: np.ndarray
    finished_s: np.ndarray
    first_token_s: np.ndarray
    prompt_len: np.ndarray
    output_len: np.ndarray


def _read_requests(folder: Path) -> list[dict]:
    path = folder / "requests.jsonl"
    try:
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        raise InputError("requests.jsonl not found", source=str(path)) from None


def v1_run_csv(folder: Path) -> str:
    """The per-request replay CSV of one run folder (text)."""
    rows = _read_requests(folder)
    t0 = min(r["queued_ts"] for r in rows)
    lines = [",".join(CSV_COLUMNS)]
    for r in sorted(rows, key=lambda r: r["queued_ts"]):
        ttft = r["first_token_ts"] - r["queued_ts"]
        out = int(r["output_toks"])
        tpot = (r["last_token_ts"] - r["first_token_ts"]) / (out - 1) if out > 1 else 0.0
        latency = r["last_token_ts"] - r["queued_ts"]
        lines.append(f"{r['queued_ts'] - t0:.6f},{int(r['input_toks'])},{out},"
                     f"{ttft * 1e3:.3f},{tpot * 1e3:.3f},{latency * 1e3:.3f}")
    return "\n".join(lines) + "\n"


def v1_runs() -> list[V1Run]:
    """The shipped V1 runs."""
    out = []
    for name in V1_RUNS:
        folder = V1_DIR / name
        csv_path = folder / "requests.csv"
        rows = _read_requests(folder)
        t0 = min(r["queued_ts"] for r in rows)
        rows.sort(key=lambda r: r["queued_ts"])
        out.append(V1Run(
            name, folder, csv_path,
            np.array([r["queued_ts"] - t0 for r in rows]),
            np.array([r["scheduled_ts"] - t0 for r in rows]),
            np.array([r["last_token_ts"] - t0 for r in rows]),
            np.array([r["first_token_ts"] - t0 for r in rows]),
            np.array([int(r["input_toks"]) for r in rows]),
            np.array([int(r["output_toks"]) for r in rows]),
        ))
    return out


def occupancy_series(arrived_s: np.ndarray, scheduled_s: np.ndarray, finished_s: np.ndarray,
                     step_s: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time s, running, waiting) sampled every `step_s` until the last request finishes."""
    end = float(np.nanmax(finished_s))
    t = np.arange(0.0, end + step_s, step_s)
    running = ((scheduled_s[None, :] <= t[:, None]) & (finished_s[None, :] > t[:, None])).sum(1)
    waiting = ((arrived_s[None, :] <= t[:, None]) & (scheduled_s[None, :] > t[:, None])).sum(1)
    return t, running, waiting
