"""Reading a real served run's per-request CSV (one row per request, named numeric columns)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simserve.errors import InputError

__all__ = ["read_run_columns"]


def read_run_columns(path: str | Path, columns: Sequence[str],
                     needed_for: str) -> dict[str, np.ndarray]:
    """The named columns of a served run's CSV as float arrays (extra columns are ignored).

    Every value must be a finite number >= 0; `needed_for` completes the missing-column error
    ("missing column 'ttft_ms' (needed_for)").
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise InputError("ground-truth file not found", source=str(path)) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a CSV file", source=str(path)) from None
    except UnicodeDecodeError:
        raise InputError("is not UTF-8 text (expected a CSV file)", source=str(path)) from None
    except csv.Error as exc:
        raise InputError(f"malformed CSV ({exc})", source=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read it ({exc.strerror})", source=str(path)) from None
    if not rows:
        raise InputError("no data rows", source=str(path))
    for col in columns:
        if col not in rows[0]:
            raise InputError(f"missing column {col!r} ({needed_for})", source=str(path), line=1)
    out = {}
    for col in columns:
        try:
            out[col] = np.array([float(r[col]) for r in rows])
        except (TypeError, ValueError):
            bad = next(i for i, r in enumerate(rows) if not _is_number(r[col]))
            raise InputError(f"column {col!r}: every value must be a number, got "
                             f"{rows[bad][col]!r}", source=str(path), line=bad + 2) from None
        if not np.all(np.isfinite(out[col])) or np.any(out[col] < 0):
            raise InputError(f"column {col!r}: values must be finite and >= 0", source=str(path))
    return out


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True
