"""Parse and check the values of trace rows, a chunk of rows at a time, so that a bad value is
named by its file, line, data row and column (or JSON key)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from simserve.config import MAX_TOKENS
from simserve.errors import InputError
from simserve.formatting import fmt_number

__all__ = [
    "PRIORITY_COLUMN",
    "Where",
    "is_number",
    "parse_datetimes",
    "parse_lengths",
    "parse_priorities",
    "parse_times",
]

# An optional column of every layout: the request's priority (lower is served first).
PRIORITY_COLUMN = "priority"


@dataclass(frozen=True)
class Where:
    """Where a chunk's rows are in the file, for errors naming the line, row and column."""

    line_numbers: list[int]
    source: str
    first_row: int  # data rows before this chunk
    kind: str = "column"  # what names a value: a CSV column, a JSON key

    def error(self, message: str, column: str, position: int) -> InputError:
        return InputError(
            f"{self.kind} {column!r}, data row {self.first_row + position + 1}: {message}",
            source=self.source,
            line=self.line_numbers[position],
        )


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_numbers(values: list[str]) -> tuple[np.ndarray, int]:
    """Values as float64 and the index of the first one that is not a finite number (or -1)."""
    try:
        parsed = np.array(values, dtype=np.float64)
    except ValueError:
        # Slow path, only for files with a bad value (or spellings numpy rejects but float takes).
        numbers: list[float] = []
        for position, raw in enumerate(values):
            try:
                number = float(raw)
            except ValueError:
                return np.empty(0), position
            if not math.isfinite(number):
                return np.empty(0), position
            numbers.append(number)
        return np.array(numbers, dtype=np.float64), -1
    finite = np.isfinite(parsed)
    return parsed, (-1 if bool(np.all(finite)) else int(np.argmin(finite)))


def parse_lengths(values: list[str], column: str, what: str, where: Where) -> np.ndarray:
    """Token counts as int64: whole numbers in [0, MAX_TOKENS] (0 marks an unusable row)."""
    parsed, bad = _parse_numbers(values)
    if bad >= 0:
        raise where.error(f"expected a number, got {values[bad]!r}", column, bad)
    wrong = (parsed < 0) | (parsed != np.floor(parsed))
    if np.any(wrong):
        bad = int(np.argmax(wrong))
        raise where.error(f"{what} length must be a whole number >= 1, got "
                          f"{values[bad].strip()!r}", column, bad)
    huge = parsed > MAX_TOKENS
    if np.any(huge):
        bad = int(np.argmax(huge))
        raise where.error(f"{what} length {values[bad].strip()} is more than "
                          f"{fmt_number(MAX_TOKENS)} tokens (no model has such a context)",
                          column, bad)
    return parsed.astype(np.int64)


def parse_priorities(values: list[str], where: Where) -> np.ndarray:
    """Priorities as int64: whole numbers (negative ones too, as vLLM allows)."""
    parsed, bad = _parse_numbers(values)
    if bad < 0:
        wrong = (parsed != np.floor(parsed)) | (np.abs(parsed) > 2**53)
        bad = int(np.argmax(wrong)) if np.any(wrong) else -1
    if bad >= 0:
        raise where.error(f"priority must be a whole number, got {values[bad].strip()!r}",
                          PRIORITY_COLUMN, bad)
    return parsed.astype(np.int64)


def parse_times(values: list[str], column: str, where: Where) -> np.ndarray:
    """Arrival times in seconds, as given."""
    parsed, bad = _parse_numbers(values)
    if bad >= 0:
        raise where.error(f"expected a time in seconds, got {values[bad]!r}", column, bad)
    return parsed


_ZONE = re.compile(r"(?P<zone>Z|[+-]\d\d(?::?\d\d)?)$")


# The years datetime64[ns] holds.
_YEARS = (1678, 2261)
# UTC offsets in use run from -12:00 to +14:00.
_MOST_OFFSET_MINUTES = 14 * 60


def _split_zone(text: str) -> tuple[str, int | None]:
    """An ISO datetime without its time-zone suffix (`Z`, `+01:00`, `-0500`), and the suffix's
    offset in nanoseconds (a datetime without one counts as UTC; None: no such offset)."""
    date, sep, clock = text.partition("T")
    match = _ZONE.search(clock) if sep else None
    if match is None:
        return text, 0
    zone = match["zone"]
    offset_ns = 0
    if zone != "Z":
        digits = zone[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + (int(digits[2:]) if len(digits) > 2 else 0)
        if minutes > _MOST_OFFSET_MINUTES or (len(digits) > 2 and int(digits[2:]) >= 60):
            return text, None
        offset_ns = (1 if zone[0] == "+" else -1) * minutes * 60 * 10**9
    return f"{date}T{clock[: match.start()]}", offset_ns


def parse_datetimes(values: list[str], column: str, where: Where) -> np.ndarray:
    """Datetime strings (`YYYY-MM-DD HH:MM:SS.fffffff`, as in the Azure trace, optionally with
    a time zone) as UTC datetime64[ns]."""
    split = [_split_zone(raw.strip().replace(" ", "T", 1)) for raw in values]
    iso = [text for text, _offset in split]
    # A bare number in a datetime column would read as a year ("5": 0005-01-01), and a year
    # outside datetime64[ns]'s range wraps around.
    bad = next((position for position, (text, offset) in enumerate(split)
                if offset is None or text[4:5] != "-" or not text[:4].isdigit()
                or not _YEARS[0] <= int(text[:4]) <= _YEARS[1]), -1)
    if bad >= 0:
        raise where.error("expected a datetime like '2023-11-16 18:15:46.68+00:00', got "
                          f"{values[bad]!r}", column, bad)
    stamps = np.empty(0, dtype="datetime64[ns]")
    try:
        stamps = np.array(iso, dtype="datetime64[ns]")
        bad = -1 if not np.any(np.isnat(stamps)) else int(np.argmax(np.isnat(stamps)))
    except ValueError:
        bad = next((position for position, raw in enumerate(iso) if not _is_datetime(raw)), -1)
        stamps = np.array([np.datetime64(raw, "ns") for raw in iso]) if bad < 0 else stamps
    if bad >= 0:
        raise where.error("expected a time in seconds or a datetime like "
                          f"'2023-11-16 18:15:46.68', got {values[bad]!r}", column, bad)
    offsets = np.array([offset for _text, offset in split], dtype="timedelta64[ns]")
    return stamps - offsets


def _is_datetime(text: str) -> bool:
    """Whether numpy reads `text` as a (non-NaT) datetime."""
    try:
        return not np.isnat(np.datetime64(text, "ns"))
    except ValueError:
        return False
