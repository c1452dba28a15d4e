"""Load request traces (arrival times and prompt/output lengths) from CSV files.

Three layouts are recognised from the header row, so a user can point `workload.trace` at the
file as published without converting it:

- simserve: `arrival_s,prompt_len,output_len` (extra columns ignored, e.g. the `ttft_ms`... of
  DistServe ground-truth files);
- Vidur processed traces: `arrived_at,num_prefill_tokens,num_decode_tokens`;
- Azure LLM inference trace 2023: `TIMESTAMP,ContextTokens,GeneratedTokens`.

The arrival column is optional in every layout (the arXiv summarization file holds only lengths),
and so is a `priority` column (whole numbers, lower is served first under `engine.queue:
priority`, as in vLLM).
Arrival values are seconds, or datetime strings such as `2023-11-16 18:15:46.6805900` (Azure),
which become seconds after the earliest timestamp.
"""

from __future__ import annotations

import contextlib
import csv
import math
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simserve.errors import InputError, InputWarning

__all__ = ["CHUNK_ROWS", "MAX_TOKENS", "TRACE_FORMATS", "Trace", "TraceFormat", "load_trace"]

# An optional column of every layout: the request's priority (lower is served first).
PRIORITY_COLUMN = "priority"
# Rows parsed at a time: the text of one chunk is in memory, never the whole file's.
CHUNK_ROWS = 16_384
# NOTE: no model's context comes near a billion tokens: larger lengths are garbage (and from
# 2**63 on they would overflow int64).
MAX_TOKENS = 10**9


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
    num_skipped: int = 0  # rows with zero prompt or output tokens, left out
    priority: np.ndarray | None = None  # int64; None if the file has no priority column

    def __len__(self) -> int:
        return int(self.prompt_len.size)


def load_trace(path: str | Path, max_rows: int | None = None) -> Trace:
    """Read a trace CSV in any of `TRACE_FORMATS`, validating every value so a bad row is named.

    The file is read as a stream, `CHUNK_ROWS` rows at a time (memory: the arrays, not the
    text), and only until `max_rows` usable rows are read when that is given (a replay of the
    first N requests reads the first N rows of the file, not the whole file). Rows with zero
    prompt or output tokens cannot be requests: they are skipped and counted (`num_skipped`,
    and an `InputWarning`), as unfit requests are. Rows whose timestamps decrease are sorted by
    arrival time with a stable sort (ties keep file order), and each row keeps its own lengths;
    datetime timestamps become seconds after the earliest one, numeric timestamps are kept as
    given. Reading a large file shows a progress bar on a terminal. Raises
    `InputError` naming the file and, for a bad value, its line (1-based, header = line 1),
    data row and column.
    """
    path = Path(path)
    source = str(path)
    reader = _TraceReader(path, max_rows)
    arrival_s, prompt_len, output_len, priority = reader.read()
    if reader.num_skipped:
        warnings.warn(InputWarning(
            f"{source}: skipped {reader.num_skipped} row(s) with zero prompt or output tokens "
            f"(the first at line {reader.first_skipped_line}); they cannot be requests"),
            stacklevel=2)
    if arrival_s is not None:
        if np.any(np.diff(arrival_s) < 0):
            order = np.argsort(arrival_s, kind="stable")
            arrival_s = arrival_s[order]
            prompt_len = prompt_len[order]
            output_len = output_len[order]
            priority = priority[order] if priority is not None else None
        arrival_s.setflags(write=False)
    prompt_len.setflags(write=False)
    output_len.setflags(write=False)
    if priority is not None:
        priority.setflags(write=False)
    return Trace(
        arrival_s=arrival_s,
        prompt_len=prompt_len,
        output_len=output_len,
        source=path,
        format=reader.format.name,
        num_skipped=reader.num_skipped,
        priority=priority,
    )


class _TraceReader:
    """One streaming pass over a trace file: header, then chunks of rows parsed into arrays."""

    def __init__(self, path: Path, max_rows: int | None) -> None:
        self.path = path
        self.source = str(path)
        self.max_rows = max_rows
        self.format = TRACE_FORMATS[0]
        self.columns: dict[str, int] = {}
        self.num_rows = 0  # usable rows kept
        self.num_skipped = 0
        self.first_skipped_line: int | None = None
        self._parts: dict[str, list[np.ndarray]] = {
            "arrival": [], "prompt": [], "output": [], "priority": []}
        self._datetimes = False
        self._data_rows = 0  # data rows parsed so far (rows are numbered in messages)

    def read(self) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray | None]:
        """The arrival times (or None), prompt and output lengths and priorities (or None) of
        the usable rows."""
        try:
            size = self.path.stat().st_size
            with self.path.open(newline="", encoding="utf-8-sig") as handle, _progress(
                size, self.path.name
            ) as bar:
                self._read_stream(handle, bar)
        except FileNotFoundError:
            raise InputError("trace file not found", source=self.source) from None
        except IsADirectoryError:
            raise InputError("trace path is a directory, not a CSV file",
                             source=self.source) from None
        except UnicodeDecodeError:
            raise InputError("trace file is not UTF-8 text (expected CSV)",
                             source=self.source) from None
        except csv.Error as exc:
            raise InputError(f"malformed CSV ({exc})", source=self.source) from None
        except OSError as exc:
            raise InputError(f"cannot read trace file ({exc.strerror})",
                             source=self.source) from None
        if self.num_rows == 0:
            if self.num_skipped:
                raise InputError(f"every row has zero prompt or output tokens ({self.num_skipped}"
                                 " skipped): no requests", source=self.source)
            raise InputError("trace file has a header but no data rows", source=self.source,
                             line=1)
        prompt = np.concatenate(self._parts["prompt"])
        output = np.concatenate(self._parts["output"])
        arrival = None
        if self._parts["arrival"]:
            arrival = np.concatenate(self._parts["arrival"])
            if self._datetimes:
                arrival = (arrival - arrival.min()).astype(np.int64).astype(np.float64) / 1e9
        priority = np.concatenate(self._parts["priority"]) if self._parts["priority"] else None
        return arrival, prompt, output, priority

    def _read_stream(self, handle: Any, bar: Any) -> None:
        def lines() -> Iterator[str]:
            for line in handle:
                bar.update(len(line))
                yield line

        reader = csv.reader(lines())
        header = next(reader, None)
        if header is None:
            raise InputError("trace file is empty (expected a CSV header)", source=self.source)
        self.format, self.columns = _detect_format([name.strip() for name in header],
                                                   self.source)
        width = max(self.columns.values()) + 1
        rows: list[list[str]] = []
        line_numbers: list[int] = []
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) < width:
                raise InputError(f"expected at least {width} columns, got {len(row)}",
                                 source=self.source, line=reader.line_num)
            rows.append(row)
            line_numbers.append(reader.line_num)
            if len(rows) >= CHUNK_ROWS or self._enough(len(rows)):
                self._parse_chunk(rows, line_numbers)
                rows, line_numbers = [], []
                if self._enough(0):
                    return
        if rows:
            self._parse_chunk(rows, line_numbers)

    def _enough(self, pending: int) -> bool:
        """Whether `max_rows` usable rows are in, counting `pending` unparsed rows as usable
        (a chunk is parsed as soon as it could complete the read)."""
        return self.max_rows is not None and self.num_rows + pending >= self.max_rows

    def _parse_chunk(self, rows: list[list[str]], line_numbers: list[int]) -> None:
        """Parse and check one chunk of rows; keep the usable ones (up to `max_rows`)."""
        fmt, first_row = self.format, self._data_rows
        self._data_rows += len(rows)

        def column(name: str) -> list[str]:
            index = self.columns[name]
            return [row[index] for row in rows]

        where = _Where(line_numbers, self.source, first_row)
        prompt = _parse_lengths(column(fmt.prompt_column), fmt.prompt_column, "prompt", where)
        output = _parse_lengths(column(fmt.output_column), fmt.output_column, "output", where)
        arrival = None
        if fmt.arrival_column in self.columns:
            values = column(fmt.arrival_column)
            if first_row == 0:
                self._datetimes = not _is_number(values[0])
            if self._datetimes:
                arrival = _parse_datetimes(values, fmt.arrival_column, where)
            else:
                arrival = _parse_times(values, fmt.arrival_column, where)
        priority = None
        if PRIORITY_COLUMN in self.columns:
            priority = _parse_priorities(column(PRIORITY_COLUMN), where)
        usable = (prompt > 0) & (output > 0)
        if not bool(np.all(usable)):
            skipped = np.flatnonzero(~usable)
            if self.first_skipped_line is None:
                self.first_skipped_line = line_numbers[int(skipped[0])]
            self.num_skipped += int(skipped.size)
            prompt, output = prompt[usable], output[usable]
            arrival = arrival[usable] if arrival is not None else None
            priority = priority[usable] if priority is not None else None
        if self.max_rows is not None:
            keep = max(self.max_rows - self.num_rows, 0)
            prompt, output = prompt[:keep], output[:keep]
            arrival = arrival[:keep] if arrival is not None else None
            priority = priority[:keep] if priority is not None else None
        self.num_rows += int(prompt.size)
        self._parts["prompt"].append(prompt)
        self._parts["output"].append(output)
        if arrival is not None:
            self._parts["arrival"].append(arrival)
        if priority is not None:
            self._parts["priority"].append(priority)


# Files smaller than this read in about a second: no bar (and no tqdm import for them).
PROGRESS_MIN_BYTES = 16 * 2**20


@contextlib.contextmanager
def _progress(total_bytes: int, name: str) -> Iterator[Any]:
    """A progress bar over the bytes read of a large file, on a terminal only, shown once the
    read has taken two seconds."""
    if total_bytes < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        yield _NoBar()
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield _NoBar()
        return
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"reading {name}",
               file=sys.stderr, delay=2.0, disable=None, leave=False)
    try:
        yield bar
    finally:
        bar.close()


class _NoBar:
    """Stands in for a progress bar when tqdm is not installed."""

    def update(self, n: int = 1) -> None:
        """Do nothing."""


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
                PRIORITY_COLUMN,
            )
            return trace_format, {name: index[name] for name in wanted if name in index}
    accepted = "; ".join(f.describe() for f in TRACE_FORMATS)
    raise InputError(
        f"unrecognised trace header {','.join(header)!r}; accepted formats (arrival column "
        f"optional): {accepted}",
        source=source,
        line=1,
    )


@dataclass(frozen=True)
class _Where:
    """Where a chunk's rows are in the file, for errors naming the line, row and column."""

    line_numbers: list[int]
    source: str
    first_row: int  # data rows before this chunk

    def error(self, message: str, column: str, position: int) -> InputError:
        return InputError(
            f"column {column!r}, data row {self.first_row + position + 1}: {message}",
            source=self.source,
            line=self.line_numbers[position],
        )


def _is_number(text: str) -> bool:
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


def _parse_lengths(values: list[str], column: str, what: str, where: _Where) -> np.ndarray:
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
        raise where.error(f"{what} length {values[bad].strip()} is more than {MAX_TOKENS:,} "
                          "tokens (no model has such a context)", column, bad)
    return parsed.astype(np.int64)


def _parse_priorities(values: list[str], where: _Where) -> np.ndarray:
    """Priorities as int64: whole numbers (negative ones too, as vLLM allows)."""
    parsed, bad = _parse_numbers(values)
    if bad < 0:
        wrong = (parsed != np.floor(parsed)) | (np.abs(parsed) > 2**53)
        bad = int(np.argmax(wrong)) if np.any(wrong) else -1
    if bad >= 0:
        raise where.error(f"priority must be a whole number, got {values[bad].strip()!r}",
                          PRIORITY_COLUMN, bad)
    return parsed.astype(np.int64)


def _parse_times(values: list[str], column: str, where: _Where) -> np.ndarray:
    """Arrival times in seconds, as given."""
    parsed, bad = _parse_numbers(values)
    if bad >= 0:
        raise where.error(f"expected a time in seconds, got {values[bad]!r}", column, bad)
    return parsed


_ZONE = re.compile(r"(?P<zone>Z|[+-]\d\d(?::?\d\d)?)$")


def _split_zone(text: str) -> tuple[str, int]:
    """An ISO datetime without its time-zone suffix (`Z`, `+01:00`, `-0500`), and the suffix's
    offset in nanoseconds (a datetime without one counts as UTC)."""
    date, sep, clock = text.partition("T")
    match = _ZONE.search(clock) if sep else None
    if match is None:
        return text, 0
    zone = match["zone"]
    offset_ns = 0
    if zone != "Z":
        digits = zone[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + (int(digits[2:]) if len(digits) > 2 else 0)
        offset_ns = (1 if zone[0] == "+" else -1) * minutes * 60 * 10**9
    return f"{date}T{clock[: match.start()]}", offset_ns


def _parse_datetimes(values: list[str], column: str, where: _Where) -> np.ndarray:
    """Datetime strings (`YYYY-MM-DD HH:MM:SS.fffffff`, as in the Azure trace, optionally with
    a time zone) as UTC datetime64[ns]."""
    split = [_split_zone(raw.strip().replace(" ", "T", 1)) for raw in values]
    iso = [text for text, _offset in split]
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
