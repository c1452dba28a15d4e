"""How much memory a run needs, estimated before anything is allocated, so a run that cannot
fit is refused with one line saying how much it would need (instead of a MemoryError traceback
or a machine pushed into swap).

The estimate is `estimate_run_bytes`: a fixed part plus a part per request plus a part per
output token. The constants are measured on the engine (peak RSS of `run_scenario` over its
RSS after imports; fixed lengths, 10,000-80,000 requests of 16-1,024 output tokens, Llama-3-8B
on one H100): a least-squares fit of those eight runs is within 12% of each of them. Rerun
the fit when the engine's records change (`tests/test_memory.py` says how).
"""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path

from simserve.config import LengthsConfig
from simserve.errors import InputError

__all__ = [
    "BASE_BYTES",
    "BYTES_PER_OUTPUT_TOKEN",
    "BYTES_PER_REQUEST",
    "available_memory_bytes",
    "check_run_memory",
    "estimate_run_bytes",
    "mean_output_tokens",
]

# NOTE: measured 2025-12 on this engine: 39 MiB of modules and buffers a run adds, 2,086 bytes a
# request (its records and per-request metric arrays), 25 bytes an output token (token
# timestamps and per-token metrics: three 8-byte values each).
BASE_BYTES = 40 * 2**20
BYTES_PER_REQUEST = 2100
BYTES_PER_OUTPUT_TOKEN = 25

_GIB = 2**30


def estimate_run_bytes(num_requests: int, mean_output_tokens: float) -> float:
    """Bytes one run of `num_requests` requests of `mean_output_tokens` output tokens on
    average needs, beyond simserve's imported modules."""
    return BASE_BYTES + num_requests * (BYTES_PER_REQUEST
                                        + BYTES_PER_OUTPUT_TOKEN * mean_output_tokens)


def mean_output_tokens(lengths: LengthsConfig) -> float | None:
    """The mean output length a synthetic length distribution draws (None for `trace`: the
    trace decides)."""
    if lengths.dist == "trace":
        return None
    if lengths.dist == "uniform":
        from simserve.workload.lengths import uniform_bounds

        low, high = uniform_bounds(lengths.output_len, lengths.range_ratio)
        return (low + high) / 2
    return float(lengths.output_len)  # fixed, and the lognormal's mean by construction


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory_bytes() -> int | None:
    """Memory this process can still use: the system's available memory, the container's
    (cgroup v2) limit less its use, and the address-space limit, whichever is smallest (None
    when none of them is known)."""
    limits: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup_max = _read_int("/sys/fs/cgroup/memory.max")
    cgroup_used = _read_int("/sys/fs/cgroup/memory.current")
    if cgroup_max is not None and cgroup_used is not None:
        limits.append(max(cgroup_max - cgroup_used, 0))
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    if not limits and hasattr(os, "sysconf"):
        with contextlib.suppress(OSError, ValueError):
            limits.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(limits) if limits else None


def check_run_memory(num_requests: int, mean_output: float,
                     available: int | None = None) -> None:
    """Refuse a run that needs more memory than is available (`available` bytes, by default
    `available_memory_bytes()`), saying how much it would need."""
    needed = estimate_run_bytes(num_requests, mean_output)
    free = available_memory_bytes() if available is None else available
    if free is None or needed <= free:
        return
    raise InputError(
        f"{num_requests:,} requests of about {mean_output:,.0f} output tokens would need about "
        f"{needed / _GIB:,.1f} GiB of memory; {free / _GIB:,.1f} GiB is available: use fewer "
        "requests (or shorter outputs)",
        field="workload.num_requests",
    )
