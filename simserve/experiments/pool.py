"""One pool of workers for all the simulations of a command, and one way to run them.

Every command that runs many scenarios submits them here: the anti-pattern catalog, the case
study and capacity searches (many independent runs driven by a few sequential procedures: a
bisection, a sweep, a tuning choice) ask for summaries, each distinct scenario (by its resolved
mapping) simulated once, with drivers side by side in threads (`concurrently`) so every worker
stays busy until the command's last run; sweeps hand over their tasks (`imap_unordered`), each
writing its own run directory. The workers are a backend's (`experiments.backends`: local
processes or Ray). What a run returns depends on its scenario alone, so results are the same
with any number of workers and on either backend.
"""

from __future__ import annotations

import contextvars
import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numpy as np

from simserve.config import Scenario, scenario_from_mapping, scenario_to_mapping
from simserve.experiments.backends import Backend, LocalBackend

__all__ = [
    "MEAN_BATCH_KEY",
    "STEADY_COUNT_KEY",
    "STEADY_KEY",
    "RunPool",
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
    """Runs tasks on a backend's workers (default: `jobs` local processes; `jobs=1`: in this
    process): scenarios by `summaries` (each distinct one once), any task function by
    `imap_unordered`; thread-safe, so several drivers can feed it at the same time."""

    def __init__(self, jobs: int | None = None,
                 progress: Callable[[str], None] | None = None, *,
                 backend: Backend | None = None) -> None:
        self.backend: Backend = backend if backend is not None else LocalBackend(jobs)
        # Started here, from the creating thread (see `backends.init_worker`).
        self.backend.start()
        self.jobs = self.backend.slots
        self._progress = progress
        self._cache: dict[str, Summary] = {}
        self._inflight: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._say_lock = threading.Lock()
        self.num_runs = 0  # distinct scenarios simulated

    def __enter__(self) -> RunPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            self.abort()  # Ctrl-C or a failure: do not wait for the runs in progress
        self.close()

    def describe(self) -> str:
        """Where the runs go, in one line for the console."""
        return self.backend.describe()

    def close(self) -> None:
        """Stop the workers (pending runs are cancelled)."""
        self.backend.close()

    def abort(self) -> None:
        """Stop the workers now: runs in progress fail."""
        self.backend.abort()

    def say(self, message: str) -> None:
        """One progress line, never interleaved with another thread's."""
        if self._progress is not None:
            with self._say_lock:
                self._progress(message)

    # ----------------------------------------------------------------- runs

    def summaries(self, scenarios: Sequence[Scenario]) -> list[Summary]:
        """Summaries of these scenarios, simulating (in parallel) only those not yet run."""
        keys = [scenario_key(s) for s in scenarios]
        if self.backend.in_process:
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
                    self._inflight[key] = self.backend.submit(run_summary_task, json.loads(key))
                    self.num_runs += 1
                waits[key] = self._inflight[key]
        for key, future in waits.items():
            summary = future.result()
            with self._lock:
                self._cache[key] = summary
                self._inflight.pop(key, None)
        return [self._cache[k] for k in keys]

    def imap_unordered(self, fn: Callable[[Any], T], tasks: Sequence[Any]) -> Iterator[T]:
        """`fn(task)` for every task, on the workers, yielded as they complete (one by one in
        this process with `jobs=1`). `fn` must be a module-level function (workers import it)."""
        if self.backend.in_process:
            for task in tasks:
                yield fn(task)
            return
        # NOTE: a few tasks queued per worker hide the round trip to it without handing the
        # backend thousands of pending tasks (Ray keeps each in its object store).
        limit = 2 * self.jobs
        queue = iter(tasks)
        running: set[Future] = set()
        for task in queue:
            running.add(self.backend.submit(fn, task))
            if len(running) >= limit:
                break
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                for task in queue:
                    running.add(self.backend.submit(fn, task))
                    break
                yield future.result()

    def concurrently(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Call each function, side by side in threads when there are several workers (each
        call feeds the pool); results in the order of `calls`. Context variables of the
        caller are visible in each call."""
        if self.backend.in_process or len(calls) < 2:
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
