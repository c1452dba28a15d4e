"""Load request traces (arrival times and prompt/output lengths) from CSV files.

Three layouts are recognised from the header row, so a user can point `workload.trace` at the
file as published without converting it:

- simserve: `arrival_s,prompt_len,output_len` (extra columns ignored, e.g. the `ttft_ms`... of
  DistServe ground-truth files);
- Vidur processed traces: `arrived_at,num_prefill_tokens,num_decode_tokens`;
- Azure LLM inference trace 2023: `TIMESTAMP,ContextTokens,GeneratedTokens`.

The arrival column is optional in every layout (the arXiv summarization file holds only lengths).
Arrival values are seconds, or datetime strings such as `2023-11-16 18:15:46.6805900` (Azure),
which become seconds after the earliest timestamp.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simserve.errors import InputError

__all__ = ["TRACE_FORMATS", "Trace", "TraceFormat", "load_trace"]


@dataclass(frozen=True)
class TraceFormat:
    """One recognised CSV layout: its name and the column names it uses."""

    name: str
    arrival_column: str
    prompt_column: str
    output_column: str

    def describe(self) -> str:
        """The header this layout expects, for error messages."""
        return f"{self.name} ({self.arrival_column},{self.prompt_column},{self.output_column})"


TRACE_FORMATS: tuple[TraceFormat, ...] = (
    TraceFormat("simserve", "arrival_s", "prompt_len", "output_len"),
    TraceFormat("vidur", "arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    TraceFormat("azure", "TIMESTAMP", "ContextTokens", "GeneratedTokens"),
)


@dataclass(frozen=True, eq=False)
class Trace:
    """A loaded trace, rows sorted by arrival (stably), arrays read-only."""

    arrival_s: np.ndarray | None  # float64 seconds, non-decreasing; None if the file has none
    prompt_len: np.ndarray  # int64 >= 1
    output_len: np.ndarray  # int64 >= 1
    source: Path
    format: str

    def __len__(self) -> int:
        return int(self.prompt_len.size)


def load_trace(path: str | Path) -> Trace:
    """Read a trace CSV in any of `TRACE_FORMATS`, validating every value so a bad row is named.

    Rows whose timestamps decrease are sorted by arrival time with a stable sort (ties keep file
    order), and each row keeps its own lengths; datetime timestamps become seconds after the
    earliest one, numeric timestamps are kept as given. Raises `InputError` naming the file and,
    for a bad value, its line (1-based, header = line 1), data row and column.
    """
    path = Path(path)
    source = str(path)
    header, rows, line_numbers = _read_rows(path)
    trace_format, columns = _detect_format(header, source)

    width = max(columns.values()) + 1
    for row, line in zip(rows, line_numbers, strict=True):
        if len(row) < width:
            raise InputError(
                f"expected at least {width} columns, got {len(row)}", source=source, line=line
            )

    def column(name: str) -> list[str]:
        index = columns[name]
        return [row[index] for row in rows]

    prompt_len = _parse_lengths(
        column(trace_format.prompt_column),
        trace_format.prompt_column,
        "prompt",
        line_numbers,
        source,
    )
    output_len = _parse_lengths(
        column(trace_format.output_column),
        trace_format.output_column,
        "output",
        line_numbers,
        source,
    )
    arrival_s = None
    if trace_format.arrival_column in columns:
        arrival_s = _parse_times(
            column(trace_format.arrival_column), trace_format.arrival_column, line_numbers, source
        )
        if np.any(np.diff(arrival_s) < 0):
            order = np.argsort(arrival_s, kind="stable")
            arrival_s = arrival_s[order]
            prompt_len = prompt_len[order]
            output_len = output_len[order]
        arrival_s.setflags(write=False)
    prompt_len.setflags(write=False)
    output_len.setflags(write=False)
    return Trace(
        arrival_s=arrival_s,
        prompt_len=prompt_len,
        output_len=output_len,
        source=path,
        format=trace_format.name,
    )


def _read_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, non-blank data rows and their 1-based file line numbers."""
    source = str(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows: list[list[str]] = []
            line_numbers: list[int] = []
            for row in reader:
                if not row or not any(cell.strip() for cell in row):
                    continue
                rows.append(row)
                line_numbers.append(reader.line_num)
    except FileNotFoundError:
        raise InputError("trace file not found", source=source) from None
    except IsADirectoryError:
        raise InputError("trace path is a directory, not a CSV file", source=source) from None
    except UnicodeDecodeError:
        raise InputError("trace file is not UTF-8 text (expected CSV)", source=source) from None
    except csv.Error as exc:
        raise InputError(f"malformed CSV ({exc})", source=source) from None
    except OSError as exc:
        raise InputError(f"cannot read trace file ({exc.strerror})", source=source) from None
    if header is None:
        raise InputError("trace file is empty (expected a CSV header)", source=source)
    if not rows:
        raise InputError("trace file has a header but no data rows", source=source, line=1)
    return [name.strip() for name in header], rows, line_numbers


def _detect_format(header: list[str], source: str) -> tuple[TraceFormat, dict[str, int]]:
    """The first layout whose length columns are all in the header, and their column indices."""
    index = {}
    for position, name in enumerate(header):
        index.setdefault(name, position)
    for trace_format in TRACE_FORMATS:
        if trace_format.prompt_column in index and trace_format.output_column in index:
            wanted = (
                trace_format.arrival_column,
                trace_format.prompt_column,
                trace_format.output_column,
            )
            return trace_format, {name: index[name] for name in wanted if name in index}
    accepted = "; ".join(f.describe() for f in TRACE_FORMATS)
    raise InputError(
        f"unrecognised trace header {','.join(header)!r}; accepted formats (arrival column "
        f"optional): {accepted}",
        source=source,
        line=1,
    )


def _bad_value(
    message: str, column: str, position: int, line_numbers: list[int], source: str
) -> InputError:
    """An error naming the file line, the data row (1-based) and the column of a bad value."""
    return InputError(
        f"column {column!r}, data row {position + 1}: {message}",
        source=source,
        line=line_numbers[position],
    )


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


def _parse_lengths(
    values: list[str], column: str, what: str, line_numbers: list[int], source: str
) -> np.ndarray:
    """Token counts as int64, each a whole number >= 1."""
    parsed, bad = _parse_numbers(values)
    if bad >= 0:
        raise _bad_value(
            f"expected a number, got {values[bad]!r}", column, bad, line_numbers, source
        )
    wrong = (parsed < 1) | (parsed != np.floor(parsed))
    if np.any(wrong):
        bad = int(np.argmax(wrong))
        raise _bad_value(
            f"{what} length must be a whole number >= 1, got {values[bad].strip()!r}",
            column,
            bad,
            line_numbers,
            source,
        )
    return parsed.astype(np.int64)


def _parse_times(
    values: list[str], column: str, line_numbers: list[int], source: str
) -> np.ndarray:
    """Arrival times in seconds: numbers as given, datetimes relative to the earliest one."""
    try:
        float(values[0])
    except ValueError:
        return _parse_datetimes(values, column, line_numbers, source)
    parsed, bad = _parse_numbers(values)
    if bad >= 0:
        raise _bad_value(
            f"expected a time in seconds, got {values[bad]!r}", column, bad, line_numbers, source
        )
    return parsed


def _parse_datetimes(
    values: list[str], column: str, line_numbers: list[int], source: str
) -> np.ndarray:
    """Datetime strings (`YYYY-MM-DD HH:MM:SS.fffffff`, as in the Azure trace) to seconds."""
    iso = [raw.strip().replace(" ", "T", 1) for raw in values]
    stamps = np.empty(0, dtype="datetime64[ns]")
    try:
        stamps = np.array(iso, dtype="datetime64[ns]")
        bad = -1 if not np.any(np.isnat(stamps)) else int(np.argmax(np.isnat(stamps)))
    except ValueError:
        bad = next((position for position, raw in enumerate(iso) if not _is_datetime(raw)), -1)
        stamps = np.array([np.datetime64(raw, "ns") for raw in iso]) if bad < 0 else stamps
    if bad >= 0:
        raise _bad_value(
            "expected a time in seconds or a datetime like '2023-11-16 18:15:46.68', "
            f"got {values[bad]!r}",
            column,
            bad,
            line_numbers,
            source,
        )
    nanoseconds = (stamps - stamps.min()).astype(np.int64)
    return nanoseconds.astype(np.float64) / 1e9


def _is_datetime(text: str) -> bool:
    """Whether numpy reads `text` as a (non-NaT) datetime."""
    try:
        return not np.isnat(np.datetime64(text, "ns"))
    except ValueError:
        return False
