"""How much memory a run needs, estimated before anything is allocated, so a run that cannot
fit is refused with one line saying how much it would need (instead of a MemoryError traceback
or a machine pushed into swap).

`estimate_run_bytes` is the one estimate: a fixed part, a part per request (its row of the
request table) and a part per engine step (its row of the step table). The constants are a
least-squares fit (of relative error) of the engine's peak RSS over its RSS after imports in 18
runs: 20,000-200,000 requests of 16-1,024 output tokens at 5 and 1,000 req/s (Llama-3-8B on one
H100), each within 27% of the fit. The number of steps is known only after the run; it is at
least the output tokens over the most tokens a step can decode, so `least_run_bytes` is what a
run needs at the very least, and `check_run_memory` refuses only runs that cannot fit whatever
their load. Re-measure with `pytest -m bench tests/test_memory.py -s` when the engine's records
change.
"""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path

from simserve.config import LengthsConfig
from simserve.errors import InputError
from simserve.formatting import fmt_number

__all__ = [
    "BASE_BYTES",
    "BYTES_PER_REQUEST",
    "BYTES_PER_STEP",
    "FIT_ERROR",
    "available_memory_bytes",
    "check_run_memory",
    "estimate_run_bytes",
    "least_run_bytes",
    "mean_output_tokens",
]

# NOTE: measured on the engine with array-backed request and step tables (see the docstring).
BASE_BYTES = 36 * 2**20
BYTES_PER_REQUEST = 474
BYTES_PER_STEP = 206
FIT_ERROR = 0.3  # the fit is within 27% of every measured run

_GIB = 2**30


def estimate_run_bytes(num_requests: int, num_steps: float) -> float:
    """Bytes one run of `num_requests` requests and `num_steps` engine steps needs, beyond
    simserve's imported modules."""
    return BASE_BYTES + BYTES_PER_REQUEST * num_requests + BYTES_PER_STEP * num_steps


def least_run_bytes(num_requests: int, mean_output: float, max_tokens_per_step: int) -> float:
    """The least memory a run can need: its output tokens (`mean_output` per request) decoded
    `max_tokens_per_step` at a time, less the fit's error."""
    fewest_steps = num_requests * mean_output / max(max_tokens_per_step, 1)
    return (1 - FIT_ERROR) * estimate_run_bytes(num_requests, fewest_steps)


def mean_output_tokens(lengths: LengthsConfig) -> float:
    """The mean output length a length distribution draws (1 for `trace`: the fewest a
    request can ask for, known before the trace is read)."""
    if lengths.dist == "trace":
        return 1.0
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
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
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


def check_run_memory(num_requests: int, mean_output: float, max_tokens_per_step: int,
                     available: int | None = None) -> None:
    """Refuse a run whose least memory (`least_run_bytes`) is more than is available
    (`available` bytes, by default `available_memory_bytes()`), saying how much it needs."""
    needed = least_run_bytes(num_requests, mean_output, max_tokens_per_step)
    free = available_memory_bytes() if available is None else available
    if free is None or needed <= free:
        return
    raise InputError(
        f"{fmt_number(num_requests)} requests of about {fmt_number(mean_output)} output tokens "
        f"need at least {fmt_number(needed / _GIB, 'GiB')} of memory; "
        f"{fmt_number(free / _GIB, 'GiB')} is available: use fewer requests",
        field="workload.num_requests",
    )
