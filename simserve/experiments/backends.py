"""Where sweep tasks run: a local process pool over all cores (default) or a Ray cluster.

Both take the same plain-mapping tasks and the same module-level task function and yield its
small results as they complete; which backend ran a task never changes its result. Workers write
their own run directories, so only summary rows cross process (or machine) boundaries.

Ray (`pip install 'simserve[ray]'`): `address=None` starts a local Ray instance with `jobs` CPUs;
an address (`HOST:PORT`, `ray://HOST:PORT` or `auto`) joins an existing cluster, whose nodes need
the same simserve installed and the sweep directory on a filesystem they all see.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from simserve.errors import InputError
from simserve.experiments.pool import available_cpus, init_worker

__all__ = ["LocalBackend", "RayBackend", "available_cpus", "check_ray_address", "make_backend"]

Task = Mapping[str, Any]
TaskFn = Callable[[Task], dict[str, Any]]

class LocalBackend:
    """A process pool on this machine; `jobs=1` runs tasks one by one in this process.

    Workers are spawned (not forked), so a script that uses this from the Python API needs the
    usual `if __name__ == "__main__":` guard around its entry point.
    """

    name = "local"

    def __init__(self, jobs: int | None = None) -> None:
        if jobs is not None and jobs < 1:
            raise InputError(f"must be >= 1, got {jobs}", field="--jobs")
        self.jobs = jobs or available_cpus()
        self._pool: Any = None

    def describe(self) -> str:
        """One line for the console."""
        return f"local, {self.jobs} worker{'s' if self.jobs != 1 else ''}"

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop(clean=exc_type is None)

    def _stop(self, clean: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if clean:
            pool.close()
        else:
            pool.terminate()
        pool.join()

    def imap_unordered(self, fn: TaskFn, tasks: Sequence[Task]) -> Iterator[dict[str, Any]]:
        """Run `fn` on each task, yielding results in completion order."""
        if not tasks:
            return
        if self.jobs == 1 or len(tasks) == 1:
            for task in tasks:
                yield fn(task)
            return
        if self._pool is None:
            # NOTE: spawn, not fork: workers start from a clean interpreter (no copied threads
            # or locks from the parent), as on macOS and Windows, and as Python 3.14's default.
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(
                min(self.jobs, len(tasks)), initializer=init_worker, initargs=(os.getpid(),)
            )
        yield from self._pool.imap_unordered(fn, tasks, chunksize=1)


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

    def __init__(self, address: str | None = None, jobs: int | None = None) -> None:
        if jobs is not None and jobs < 1:
            raise InputError(f"must be >= 1, got {jobs}", field="--jobs")
        self.address = address
        self.jobs = jobs
        self._ray: Any = None
        self._pending: list[Any] = []

    def describe(self) -> str:
        """One line for the console."""
        where = self.address or "local instance"
        cpus = self._cluster_cpus() if self._ray is not None else self.jobs
        return f"ray ({where}), {cpus} CPUs"

    def _cluster_cpus(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", 1))

    def __enter__(self) -> RayBackend:
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
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        ray, self._ray = self._ray, None
        if ray is None:
            return
        for ref in self._pending:
            with contextlib.suppress(Exception):  # already finished or gone
                ray.cancel(ref, force=True)
        self._pending = []
        ray.shutdown()

    def imap_unordered(self, fn: TaskFn, tasks: Sequence[Task]) -> Iterator[dict[str, Any]]:
        """Submit tasks (a bounded number in flight) and yield results as they complete."""
        if not tasks:
            return
        if self._ray is None:
            raise RuntimeError("RayBackend used outside its `with` block")
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=2)(fn)
        limit = self.jobs or self._cluster_cpus()
        # NOTE: a few tasks queued per CPU hide the scheduling round trip without flooding
        # the object store with thousands of pending tasks.
        in_flight = max(1, 2 * limit) if self.jobs is None else limit
        queue = iter(tasks)
        self._pending = []
        for task in queue:
            self._pending.append(remote.remote(task))
            if len(self._pending) >= in_flight:
                break
        while self._pending:
            done, self._pending = ray.wait(self._pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
            for task in queue:
                self._pending.append(remote.remote(task))
                break


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
