"""One pool of worker processes for all the simulations of a command, and one way to run them.

The anti-pattern catalog, the case study and capacity searches are each many independent runs
driven by a few sequential procedures (a bisection, a sweep, a tuning choice). They all submit
scenarios here: each distinct scenario (by its resolved mapping) is simulated once, in a worker
process, and its summary comes back; drivers run side by side in threads (`concurrently`), so
every worker stays busy until the last run of the command, not of one entry. What a run returns
depends on its scenario alone, so results are the same with any number of workers.

Workers are spawned, ignore Ctrl-C (the parent stops them) and exit when the parent is gone,
so a killed command leaves no simulation running.
"""

from __future__ import annotations

import contextvars
import ctypes
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from simserve.config import Scenario, scenario_from_mapping, scenario_to_mapping
from simserve.errors import InputNotice, show_warning

__all__ = [
    "MEAN_BATCH_KEY",
    "STEADY_COUNT_KEY",
    "STEADY_KEY",
    "RunPool",
    "available_cpus",
    "init_worker",
    "run_summary_task",
    "scenario_key",
    "steady_throughput",
]

Summary = dict[str, Any]
T = TypeVar("T")

# Keys a pool run adds to its summary (with the Etalon miss-rate keys of `capacity`).
STEADY_KEY = "steady_throughput_rps"
STEADY_COUNT_KEY = "steady_window_completions"
MEAN_BATCH_KEY = "mean_batch_size"

_PR_SET_PDEATHSIG = 1
# How often a worker's watchdog checks that its parent is alive.
PARENT_CHECK_S = 0.5


def available_cpus() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def init_worker(parent_pid: int) -> None:
    """Worker setup: leave Ctrl-C to the parent (which stops the pool), print simserve's
    warnings as the CLI does (one line each), and die with the parent, so a killed command
    leaves no orphan simulating or writing.

    On Linux the kernel kills the worker the moment its parent goes (PR_SET_PDEATHSIG).
    NOTE: that signal fires when the *thread* that started the worker ends, so pools must start
    their workers from a thread that outlives them (`RunPool` does so when it is created). A
    watchdog thread covers other systems: an orphan is re-parented, which it sees.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A spawned worker starts with Python's warning printer (file, line and source line).
    warnings.showwarning = show_warning
    # What simserve made of an input (e.g. a trace's detected format) is said once by a
    # command; from every worker of a catalog or a study it would be the same line many times.
    warnings.simplefilter("ignore", InputNotice)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died while this worker started
        os._exit(1)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid: int, every_s: float = PARENT_CHECK_S) -> None:
    while True:
        time.sleep(every_s)
        if os.getppid() != parent_pid:
            os._exit(1)


def steady_throughput(finished_at: np.ndarray, first_scheduled_at: np.ndarray,
                      start_quantile: float = 0.1) -> tuple[float, int]:
    """Completions per second while requests wait to be admitted, and how many completions
    that window holds: from the `start_quantile` quantile of finish times (after the start-up)
    to the last request's first admission (before the drain).

    NOTE: this is the rate a system sustains under a backlog that never empties, the most any
    arrival process can get through it: a higher rate builds a queue that never drains. Every
    finish of the window has a waiting request ready to take its place; after the last
    admission nobody does, and the drain runs at another pace (chunked prefill's emptying
    batches are slower, prefill-first's decode-only steps faster), so a window that includes it
    (e.g. finishes between the 10% and 90% quantiles) under- or overestimates the sustainable
    rate by 4-10%. Open-loop runs at 3-8x the rate, whose backlog never empties, give the same
    number (within 2%, tested in `tests/test_capacity.py`, with the instability just above it).
    """
    finished = np.asarray(finished_at, dtype=np.float64)
    admitted = np.asarray(first_scheduled_at, dtype=np.float64)
    done = np.sort(finished[np.isfinite(finished)])
    if done.size == 0 or not np.any(np.isfinite(admitted)):
        return math.nan, 0
    start = done[int(start_quantile * done.size)]
    end = float(np.nanmax(admitted))
    count = int(np.count_nonzero((done > start) & (done <= end)))
    if end <= start or count == 0:
        return math.nan, 0
    return count / (end - start), count


def run_summary_task(mapping: Mapping[str, Any]) -> Summary:
    """Worker task: simulate one scenario mapping and return its summary with the keys the
    experiments read (Etalon miss rates, steady throughput under a backlog, mean batch size)."""
    # Imported here: the pool module itself stays light for the commands that import it.
    from simserve.experiments.capacity import summary_with_extras
    from simserve.experiments.run import run_scenario

    output = run_scenario(scenario_from_mapping(mapping))
    summary = summary_with_extras(output)
    result = output.result
    steady_rps, count = steady_throughput(result.finished_at, result.first_scheduled_at)
    summary[STEADY_KEY] = steady_rps if math.isfinite(steady_rps) else None
    summary[STEADY_COUNT_KEY] = count
    steps = output.result.steps
    busy_s = float(np.sum(steps.duration_s))
    summary[MEAN_BATCH_KEY] = (
        float(np.sum(steps.num_seqs * steps.duration_s) / busy_s) if busy_s > 0 else 0.0
    )
    return summary


def scenario_key(scenario: Scenario) -> str:
    """What identifies a run: its scenario's full mapping, canonically serialised."""
    return json.dumps(scenario_to_mapping(scenario), sort_keys=True)


class RunPool:
    """Runs scenarios on `jobs` worker processes (`jobs=1`: in this process), each distinct
    scenario once; thread-safe, so several drivers can feed it at the same time."""

    def __init__(self, jobs: int | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.jobs = jobs or available_cpus()
        self._progress = progress
        self._cache: dict[str, Summary] = {}
        self._inflight: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._say_lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self.num_runs = 0  # distinct scenarios simulated
        if self.jobs > 1:
            self._start_workers()

    def _start_workers(self) -> None:
        """Start every worker now, from this thread (see `init_worker`): the pool starts a
        worker per submission while none is idle, so `jobs` waiting tasks start them all."""
        # NOTE: spawn, not fork: workers start from a clean interpreter (no copied threads or
        # locks of the parent's driver threads).
        self._executor = ProcessPoolExecutor(
            max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker, initargs=(os.getpid(),))
        for future in [self._executor.submit(time.sleep, 0.05) for _ in range(self.jobs)]:
            future.result()

    def __enter__(self) -> RunPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (pending runs are cancelled)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Kill the worker processes now: runs in progress fail (`BrokenProcessPool`)."""
        executor = self._executor
        if executor is None:
            return
        # NOTE: the executor offers no terminate; its worker processes are the only handle.
        for process in list(getattr(executor, "_processes", {}).values()):
            process.terminate()
        executor.shutdown(wait=False, cancel_futures=True)

    def say(self, message: str) -> None:
        """One progress line, never interleaved with another thread's."""
        if self._progress is not None:
            with self._say_lock:
                self._progress(message)

    # ----------------------------------------------------------------- runs

    def summaries(self, scenarios: Sequence[Scenario]) -> list[Summary]:
        """Summaries of these scenarios, simulating (in parallel) only those not yet run."""
        keys = [scenario_key(s) for s in scenarios]
        if self.jobs == 1:
            for key in keys:
                if key not in self._cache:
                    self._cache[key] = run_summary_task(json.loads(key))
                    self.num_runs += 1
            return [self._cache[k] for k in keys]
        waits: dict[str, Future] = {}
        with self._lock:
            for key in keys:
                if key in self._cache or key in waits:
                    continue
                if key not in self._inflight:
                    assert self._executor is not None
                    self._inflight[key] = self._executor.submit(run_summary_task,
                                                                json.loads(key))
                    self.num_runs += 1
                waits[key] = self._inflight[key]
        for key, future in waits.items():
            summary = future.result()
            with self._lock:
                self._cache[key] = summary
                self._inflight.pop(key, None)
        return [self._cache[k] for k in keys]

    def concurrently(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Call each function, side by side in threads when there are several workers (each
        call feeds the pool); results in the order of `calls`. Context variables of the
        caller are visible in each call."""
        if self.jobs == 1 or len(calls) < 2:
            return [call() for call in calls]
        threads = ThreadPoolExecutor(max_workers=len(calls))
        try:
            futures = [threads.submit(contextvars.copy_context().run, call) for call in calls]
            return [f.result() for f in futures]
        except BaseException:
            # Ctrl-C, SIGTERM or a failed call: stop the workers first, so that the driver
            # threads, which wait on their runs, fail at once instead of finishing the work.
            self.abort()
            raise
        finally:
            threads.shutdown(wait=True, cancel_futures=True)
