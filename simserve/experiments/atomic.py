"""Atomic output directories: a run, a report or a sweep point appears whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_dir_atomically"]


def write_dir_atomically(out: str | Path, write: Callable[[Path], object]) -> Path:
    """Fill a temporary sibling directory with `write`, then rename it to `out`.

    A crash (or Ctrl-C) leaves nothing half-written at `out`: the temporary directory is
    removed, and an existing `out` is replaced only once the new one is complete (renamed
    aside, the new one renamed in, the old one removed).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
