"""Where simulations run: worker processes on this machine (default) or a Ray cluster.

A backend takes a module-level function and one plain argument and returns a future of its
(small) result; `experiments.pool.RunPool` is built on one and is the only way commands run
scenarios. Which backend ran a task never changes its result.

Local workers are spawned, ignore Ctrl-C (the parent stops them) and exit when the parent is
gone, so a killed command leaves no simulation running. Ray (`pip install 'simserve[ray]'`):
`address=None` starts a local Ray instance with `jobs` CPUs; an address (`HOST:PORT`,
`ray://HOST:PORT` or `auto`) joins an existing cluster, whose nodes need the same simserve
installed and, for sweeps, the sweep directory on a filesystem they all see.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol

from simserve.errors import InputError, InputNotice, show_warning

__all__ = [
    "Backend",
    "LocalBackend",
    "RayBackend",
    "available_cpus",
    "check_ray_address",
    "init_worker",
    "make_backend",
]

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
    NOTE: that signal fires when the *thread* that started the worker ends, so a backend starts
    its workers from the thread that creates it (`LocalBackend.start`), which outlives them. A
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


class Backend(Protocol):
    """What `RunPool` needs of a backend."""

    name: str
    in_process: bool  # tasks run in the caller's process, one by one (no parallelism)

    @property
    def slots(self) -> int:
        """How many tasks run at the same time."""
        ...

    def start(self) -> None: ...

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


class LocalBackend:
    """Spawned worker processes on this machine; `jobs=1` runs tasks one by one in this
    process.

    Workers are spawned (not forked), so a script that uses this from the Python API needs the
    usual `if __name__ == "__main__":` guard around its entry point.
    """

    name = "local"

    def __init__(self, jobs: int | None = None) -> None:
        if jobs is not None and jobs < 1:
            raise InputError(f"must be >= 1, got {jobs}", field="--jobs")
        self.jobs = jobs or available_cpus()
        self.in_process = self.jobs == 1
        self._executor: ProcessPoolExecutor | None = None

    @property
    def slots(self) -> int:
        """How many tasks run at the same time."""
        return self.jobs

    def describe(self) -> str:
        """One line for the console."""
        return f"local, {self.jobs} worker{'s' if self.jobs != 1 else ''}"

    def start(self) -> None:
        """Start every worker now, from this thread (see `init_worker`): the executor starts a
        worker per submission while none is idle, so `jobs` waiting tasks start them all."""
        if self.in_process or self._executor is not None:
            return
        # NOTE: spawn, not fork: workers start from a clean interpreter (no copied threads or
        # locks of the parent's driver threads), as on macOS and Windows.
        self._executor = ProcessPoolExecutor(
            max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker, initargs=(os.getpid(),))
        for future in [self._executor.submit(time.sleep, 0.05) for _ in range(self.jobs)]:
            future.result()

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future:
        """Run `fn(arg)` on a worker (with `jobs=1` there is none: the caller runs tasks
        itself, see `in_process`)."""
        if self._executor is None:
            raise RuntimeError("LocalBackend has no workers (jobs=1, or not started, or closed)")
        return self._executor.submit(fn, arg)

    def abort(self) -> None:
        """Kill the workers now: tasks in progress fail (`BrokenProcessPool`)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # NOTE: the executor offers no terminate; its worker processes are the only handle.
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            process.terminate()
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the workers once their current tasks end (pending tasks are cancelled)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def check_ray_address(address: str, timeout_s: float = 3.0) -> None:
    """Refuse an address that is malformed or where nothing listens (Ray itself would retry
    for minutes before giving up)."""
    if address in ("auto", "local"):
        return
    target = address
    for scheme in ("ray://", "http://", "https://"):
        if target.startswith(scheme):
            target = target[len(scheme):]
    host, sep, port = target.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise InputError(f"expected HOST:PORT, ray://HOST:PORT or auto, got {address!r}",
                         field="--address")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"cannot reach a Ray cluster at {address} ({reason})",
                         field="--address") from None


class RayBackend:
    """Ray tasks on a local instance (`address=None`) or an existing cluster."""

    name = "ray"
    in_process = False

    def __init__(self, address: str | None = None, jobs: int | None = None) -> None:
        if jobs is not None and jobs < 1:
            raise InputError(f"must be >= 1, got {jobs}", field="--jobs")
        self.address = address
        self.jobs = jobs
        self._ray: Any = None
        self._remote: dict[Callable[[Any], Any], Any] = {}
        self._pending: set[Any] = set()
        self._lock = threading.Lock()

    @property
    def slots(self) -> int:
        """How many tasks run at the same time: `jobs`, or the cluster's CPUs."""
        if self.jobs is not None:
            return self.jobs
        return self._cluster_cpus() if self._ray is not None else available_cpus()

    def describe(self) -> str:
        """One line for the console."""
        where = self.address or "local instance"
        cpus = self._cluster_cpus() if self._ray is not None else self.jobs
        return f"ray ({where}), {cpus} CPUs"

    def _cluster_cpus(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", 1))

    def start(self) -> None:
        """Start (or join) the Ray instance; a missing Ray or a bad address is one line."""
        if self._ray is not None:
            return
        try:
            import ray
        except ImportError:
            raise InputError("Ray is not installed: pip install 'simserve[ray]'",
                             field="--backend") from None
        if self.address is not None:
            check_ray_address(self.address)
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,
            "configure_logging": True,
        }
        if self.address is None:
            kwargs.update(address="local", num_cpus=self.jobs or available_cpus())
        else:
            kwargs.update(address=self.address)
        try:
            ray.init(**kwargs)
        except (Exception, SystemExit) as exc:  # Ray exits the process on some failures
            ray.shutdown()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"cannot connect to Ray at {self.address or 'local'}: {first}",
                             field="--address") from None
        self._ray = ray

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future:
        """Run `fn(arg)` as a Ray task (one CPU, retried twice if its worker dies)."""
        if self._ray is None:
            raise RuntimeError("RayBackend used before start() or after close()")
        with self._lock:
            remote = self._remote.get(fn)
            if remote is None:
                remote = self._remote[fn] = self._ray.remote(num_cpus=1, max_retries=2)(fn)
            ref = remote.remote(arg)
            self._pending.add(ref)
        future = ref.future()
        future.add_done_callback(lambda _done, ref=ref: self._forget(ref))
        return future

    def _forget(self, ref: Any) -> None:
        with self._lock:
            self._pending.discard(ref)

    def abort(self) -> None:
        """Cancel every task not yet finished and leave Ray."""
        self.close()

    def close(self) -> None:
        """Cancel the tasks still pending (none after a complete run) and leave Ray."""
        ray, self._ray = self._ray, None
        if ray is None:
            return
        with self._lock:
            pending, self._pending = list(self._pending), set()
            self._remote = {}
        for ref in pending:
            with contextlib.suppress(Exception):  # already finished or gone
                ray.cancel(ref, force=True)
        ray.shutdown()


def make_backend(name: str, *, jobs: int | None = None,
                 address: str | None = None) -> LocalBackend | RayBackend:
    """The backend named on the command line."""
    if name == "local":
        if address is not None:
            raise InputError("only used with --backend ray", field="--address")
        return LocalBackend(jobs)
    if name == "ray":
        return RayBackend(address, jobs)
    raise InputError(f"must be local or ray, got {name!r}", field="--backend")
