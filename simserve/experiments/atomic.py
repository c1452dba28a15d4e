"""Output that appears whole or not at all, and never at the expense of someone else's files.

Every command that writes a directory (a run, a report, a case study, a capacity search, sweep
points, figures) goes through `claim_output_dir`, before its long work starts:

- the parent folder is created and must be writable, so a read-only or immutable folder, a
  file in the way or `--out .` is a one-line error before anything is simulated;
- a lock beside the directory keeps a second simserve process out (it is refused with the pid
  of the writer), so two commands with one `--out` never lose a result silently;
- an existing directory is replaced only when simserve can prove it wrote it: its marker file
  (`MARKER`) lists exactly the files and sizes it holds (or it is empty, or an older simserve's
  directory holding only the files that command wrote). Anything else is refused, and nothing
  in it is touched.

The new content is written into a temporary sibling (`.NAME.tmp-HOST-PID-TOKEN`, created with
the user's umask), listed in the marker, and swapped in with two renames during which SIGINT
and SIGTERM wait. Temporaries and replaced directories left by processes that died (SIGKILL,
a crash) are cleared by pid on the next write in the same folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from simserve import __version__
from simserve.errors import InputError

__all__ = [
    "GENERIC_OUTPUT",
    "MARKER",
    "OutputClaim",
    "OutputKind",
    "check_replaceable",
    "check_writable_dir",
    "claim_output_dir",
    "is_environment_error",
    "sweep_stale_temporaries",
    "temporary_sibling",
    "unwritable_error",
    "write_dir_atomically",
    "write_file_atomically",
]

MARKER = ".simserve-dir.json"

# OS errors that say the place cannot take the output (not a bug): reported as one line.
_ENVIRONMENT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
    errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG, errno.EMLINK,
})
# `temporary_sibling` names: only these are ever removed as stale (a user's file is not).
_TEMPORARY = re.compile(
    r"^\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<host>[A-Za-z0-9.-]+)-(?P<pid>\d+)-[0-9a-f]{8}$"
)
_LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class OutputKind:
    """What a command's directory is: `what` names it in messages and in the marker.

    `legacy_files` (patterns; folders end in "/") and `legacy_required` recognise the same
    directory written by a simserve that wrote no marker: it holds every required file and
    nothing that matches no pattern. An empty `legacy_files` accepts no such directory.
    """

    what: str
    legacy_files: tuple[str, ...] = ()
    legacy_required: tuple[str, ...] = ()


GENERIC_OUTPUT = OutputKind("output directory")


def _host() -> str:
    """This machine's name as it appears in temporary names (a sweep on a shared folder may
    write from several machines; only this machine's dead processes are cleared)."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def _temporary_name(name: str, what: str, token: str) -> str:
    return f".{name}.{what}-{_host()}-{os.getpid()}-{token}"


def temporary_sibling(path: str | Path) -> Path:
    """A hidden name beside `path` for writing it through a rename; if this process dies
    before the rename, the next write in that folder removes it (`sweep_stale_temporaries`)."""
    path = Path(path)
    return path.with_name(_temporary_name(path.name, "tmp", secrets.token_hex(4)))


def unwritable_error(target: Path | str, exc: OSError, field: str = "--out") -> InputError:
    """The one-line error for an OS refusal to write `target` (permissions, read-only or full
    file system, a file in the way)."""
    reason = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(target) else ""
    return InputError(f"cannot write here: {reason}{where}", field=field, source=str(target))


def is_environment_error(exc: BaseException) -> bool:
    """Whether `exc` is the file system refusing a write (not a bug in simserve)."""
    return isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS


# --------------------------------------------------------------------------- stale temporaries


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def sweep_stale_temporaries(folder: Path) -> list[Path]:
    """Remove what dead processes of this machine left in `folder`: temporary directories and
    files (`.NAME.tmp-...`), replaced directories (`.NAME.old-...`; put back as NAME if the
    process died before the new one took its place) and lock files. Returns what it removed."""
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return removed
    host = _host()
    for entry in entries:
        path = Path(entry.path)
        if entry.name.endswith(_LOCK_SUFFIX):
            if _remove_stale_lock(path):
                removed.append(path)
            continue
        match = _TEMPORARY.match(entry.name)
        if match is None or match["host"] != host:
            continue
        if _pid_alive(int(match["pid"])):
            continue
        original = folder / match["name"]
        try:
            if match["what"] == "old" and entry.is_dir() and not original.exists():
                path.rename(original)  # killed between the two renames: restore the old one
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def _remove_stale_lock(path: Path) -> bool:
    """Remove a lock file nobody holds (its holder was killed)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                path.unlink()
                return True
        except OSError:
            pass
        return False
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- ownership


def _listing(directory: Path) -> tuple[dict[str, int], list[str]]:
    """Files (relative POSIX path -> size) and folders under `directory`, without the marker."""
    files: dict[str, int] = {}
    folders: list[str] = []
    for root, dirnames, filenames in os.walk(directory):
        base = Path(root)
        for name in dirnames:
            folders.append((base / name).relative_to(directory).as_posix())
        for name in filenames:
            path = base / name
            relative = path.relative_to(directory).as_posix()
            if relative != MARKER:
                files[relative] = path.lstat().st_size
    return dict(sorted(files.items())), sorted(folders)


def _marker_document(directory: Path, kind: OutputKind) -> dict[str, object]:
    files, folders = _listing(directory)
    return {"written_by": f"simserve {__version__}", "kind": kind.what, "files": files,
            "folders": folders}


def _refusal(target: Path, kind: OutputKind, reason: str) -> InputError:
    return InputError(f"{reason}; refusing to overwrite it (simserve replaces only what it "
                      f"wrote itself, here a {kind.what}): choose another --out or move it away",
                      field="--out", source=str(target))


def check_replaceable(target: Path, kind: OutputKind) -> None:
    """Refuse an existing `target` that simserve cannot prove it wrote as a `kind`."""
    if target.is_symlink():
        raise _refusal(target, kind, "is a symbolic link")
    if not target.exists():
        return
    if not target.is_dir():
        raise _refusal(target, kind, "exists and is not a directory")
    try:
        files, folders = _listing(target)
    except OSError as exc:
        raise unwritable_error(target, exc) from None
    marker = target / MARKER
    if not files and not folders and not marker.exists():
        return  # an empty directory
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
            written_files = dict(recorded["files"])
            written_folders = list(recorded.get("folders", []))
            written_kind = str(recorded["kind"])
        except (OSError, ValueError, KeyError, TypeError):
            raise _refusal(target, kind, f"has an unreadable {MARKER}") from None
        if written_kind != kind.what:
            raise _refusal(target, kind, f"is a simserve {written_kind}, not a {kind.what}")
        extra = sorted(set(files) - set(written_files)) + sorted(
            set(folders) - set(written_folders))
        if extra:
            raise _refusal(target, kind, f"holds files simserve did not write ({extra[0]})")
        changed = sorted(k for k, size in files.items() if written_files.get(k) != size)
        if changed:
            raise _refusal(target, kind, f"has files changed since simserve wrote them "
                           f"({changed[0]})")
        return
    if kind.legacy_files and files and set(kind.legacy_required) <= set(files):
        entries = [*files, *(f"{folder}/" for folder in folders)]
        strangers = [e for e in entries
                     if not any(fnmatch.fnmatch(e, p) for p in kind.legacy_files)]
        if not strangers:
            return
        raise _refusal(target, kind, f"holds files simserve did not write ({strangers[0]})")
    raise _refusal(target, kind, f"exists and has no {MARKER} (the list of files simserve "
                   "wrote there)")


# --------------------------------------------------------------------------- claiming


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait while the block runs (the main thread's handlers run after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _lock(lock_path: Path, target: Path) -> int:
    """An exclusive lock on `lock_path` (created), or the error naming its holder."""
    for _attempt in range(20):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise unwritable_error(target, exc) from None
        locked = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise InputError(f"another simserve process{who} is writing this directory; "
                                 "wait for it to finish or choose another --out",
                                 field="--out", source=str(target)) from None
            locked = True
            try:
                current = os.stat(lock_path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except BaseException:
            if locked:  # interrupted holding it: remove it as an unlock would
                with contextlib.suppress(OSError):
                    lock_path.unlink()
            os.close(fd)
            raise
        os.close(fd)  # the previous holder removed the file between our open and lock
    raise InputError("could not lock the output directory", field="--out", source=str(target))


def _unlock(fd: int, lock_path: Path) -> None:
    with contextlib.suppress(OSError):
        lock_path.unlink()
    os.close(fd)


def _target_path(out: str | Path) -> Path:
    """`out` as an absolute path, refusing the working directory and its ancestors."""
    if str(out).strip() == "":
        raise InputError("is empty", field="--out")
    target = Path(os.path.abspath(out))
    if target.name in ("", ".", ".."):
        raise InputError("is not a usable output directory", field="--out", source=str(out))
    cwd = Path.cwd().resolve()
    resolved = target.resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise InputError("is the working directory (or holds it); simserve writes a new "
                         "directory and renames it into place: give a subdirectory",
                         field="--out", source=str(out))
    return target


class OutputClaim:
    """A locked, checked output directory: `write` fills and swaps it in (any number of times
    while the claim is held)."""

    def __init__(self, target: Path, kind: OutputKind) -> None:
        self.path = target
        self.kind = kind

    def write(self, fill: Callable[[Path], object]) -> Path:
        """Run `fill(tmp)` on a fresh temporary sibling, record its files in the marker, and
        put it in place of the directory. A failure leaves the directory as it was."""
        target = self.path
        token = secrets.token_hex(4)
        tmp = target.with_name(_temporary_name(target.name, "tmp", token))
        try:
            os.mkdir(tmp, 0o777)  # the user's umask decides the permissions
        except OSError as exc:
            raise unwritable_error(target, exc) from None
        try:
            fill(tmp)
            document = _marker_document(tmp, self.kind)
            (tmp / MARKER).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
            check_replaceable(target, self.kind)  # the user may have added files meanwhile
            old = _swap_in(tmp, target, token)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_environment_error(exc):
                assert isinstance(exc, OSError)
                raise unwritable_error(target, exc) from None
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target


def _swap_in(tmp: Path, target: Path, token: str) -> Path | None:
    """Rename `tmp` to `target`; an existing `target` is renamed aside first (returned)."""
    with _signals_deferred():
        if not target.exists():
            tmp.rename(target)
            return None
        old = target.with_name(_temporary_name(target.name, "old", token))
        target.rename(old)
        try:
            tmp.rename(target)
        except BaseException:
            old.rename(target)
            raise
        return old


@contextlib.contextmanager
def claim_output_dir(out: str | Path, kind: OutputKind = GENERIC_OUTPUT) -> Iterator[OutputClaim]:
    """Check and lock the output directory `out` for `kind` before the work that fills it.

    Raises a one-line `InputError` when the folder cannot be written, another simserve process
    holds it, or an existing directory there is not one simserve can prove it wrote.
    """
    target = _target_path(out)
    parent = target.parent
    created = _make_folders(parent, target)
    lock_path = parent / f".{target.name}{_LOCK_SUFFIX}"
    fd = None
    try:
        sweep_stale_temporaries(parent)
        fd = _lock(lock_path, target)
        check_replaceable(target, kind)
        yield OutputClaim(target, kind)
    finally:
        if fd is not None:
            _unlock(fd, lock_path)
        else:  # interrupted while locking: the lock file may be ours, and held by nobody
            _remove_stale_lock(lock_path)
        if not target.exists():
            _remove_empty(created)  # a failure before the write leaves no folders behind


def _make_folders(folder: Path, target: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        _remove_empty(missing)
        raise unwritable_error(target, OSError(errno.ENOTDIR, "a file is in the way",
                                               exc.filename)) from None
    except OSError as exc:
        _remove_empty(missing)
        raise unwritable_error(target, exc) from None
    if not folder.is_dir():
        raise unwritable_error(target, OSError(errno.ENOTDIR, "a file is in the way",
                                               str(folder)))
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders simserve created (innermost first) while they are empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def write_dir_atomically(
    out: str | Path, write: Callable[[Path], object], kind: OutputKind = GENERIC_OUTPUT
) -> Path:
    """Claim `out`, fill a temporary sibling with `write` and rename it into place (see the
    module docstring); returns the absolute path written."""
    with claim_output_dir(out, kind) as claim:
        return claim.write(write)


# --------------------------------------------------------------------------- single files


def check_writable_dir(path: str | Path, field: str = "--out") -> Path:
    """Prove that the folder `path` can be created or written, before a command spends
    minutes on what it will write there, without creating anything: the nearest existing
    folder on its path takes a probe file (removed at once). A one-line `InputError` if not."""
    if str(path).strip() == "":
        raise InputError("is empty", field=field)
    folder = Path(os.path.abspath(path))
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    try:
        if existing is None or not existing.is_dir():
            raise OSError(errno.ENOTDIR, "a file is in the way", str(existing))
        sweep_stale_temporaries(existing)
        probe = existing / _temporary_name("simserve-probe", "tmp", secrets.token_hex(4))
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise unwritable_error(path, exc, field) from None
    return folder


def write_file_atomically(path: str | Path, data: str | bytes) -> Path:
    """Write one file through a temporary sibling and a rename, so readers never see half of
    it and a failed write leaves the old file."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
