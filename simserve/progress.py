"""The one progress bar of simserve's long jobs: tqdm on a terminal, a no-op otherwise.

tqdm is a declared dependency, but simserve still runs without it (a minimal install, a
vendored copy): every bar then quietly does nothing.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar"]


class _NoBar:
    """Stands in for a tqdm bar when it is disabled or tqdm is not installed."""

    def update(self, n: int = 1) -> None:
        """Do nothing."""

    def set_postfix(self, **kwargs: Any) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


def progress_bar(total: int, *, desc: str, unit: str, enabled: bool | None = None,
                 initial: int = 0, delay_s: float = 0.0, unit_scale: bool = False,
                 leave: bool = True) -> Any:
    """A tqdm bar with rate and ETA on stderr. `enabled=None`: only when stderr is a terminal;
    `delay_s`: shown only once the job has run that long (quick jobs stay quiet)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr,
                delay=delay_s, unit_scale=unit_scale, leave=leave, dynamic_ncols=True,
                smoothing=0.05)
