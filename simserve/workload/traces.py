"""Load request traces (arrival times, prompt/output lengths, and what prompts share) from CSV
and JSON-lines files.

The layout is recognised from the file itself, so a user can point `workload.trace` at the file
as published without converting it. CSV layouts, from the header row:

- simserve: `arrival_s,prompt_len,output_len` (extra columns ignored, e.g. the `ttft_ms`... of
  DistServe ground-truth files);
- Vidur processed traces: `arrived_at,num_prefill_tokens,num_decode_tokens`;
- Azure LLM inference traces, 2023 and 2024 files alike: `TIMESTAMP,ContextTokens,
  GeneratedTokens` (2023 timestamps are naive, 2024 ones end in a UTC offset `+00:00`);
- BurstGPT: `Timestamp` (s), `Model`, `Request tokens`, `Response tokens`, `Total tokens`,
  `Log Type`, and in newer releases `Session ID` and `Elapsed time`. Rows with zero response
  tokens are its failed requests: skipped and counted like any zero-token row. Rows that share
  a `Session ID` are taken as turns of one conversation (their prompts one token stream);
  `Model`, `Log Type`, `Total tokens` and `Elapsed time` are not read.

JSON lines (the first non-blank line starts with `{`): Mooncake traces (`simserve.workload.
mooncake`), whose prompt block ids say exactly which prompt blocks repeat.

The arrival column is optional in every CSV layout (the arXiv summarization file holds only
lengths), and so is a `priority` column (whole numbers, lower is served first under
`engine.queue: priority`, as in vLLM).
Arrival values are seconds, or datetime strings such as `2023-11-16 18:15:46.6805900` (Azure),
which become seconds after the earliest timestamp.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simserve.config import MAX_TOKENS
from simserve.errors import InputError, InputWarning
from simserve.formatting import fmt_number
from simserve.progress import progress_bar
from simserve.workload import mooncake
from simserve.workload.content import SharedContent
from simserve.workload.trace_values import (
    PRIORITY_COLUMN,
    Where,
    is_number,
    parse_datetimes,
    parse_lengths,
    parse_priorities,
    parse_times,
)

__all__ = ["CHUNK_ROWS", "MAX_TOKENS", "TRACE_FORMATS", "Trace", "TraceFormat", "load_trace"]

# Rows parsed at a time: the text of one chunk is in memory, never the whole file's.
CHUNK_ROWS = 16_384


@dataclass(frozen=True)
class TraceFormat:
    """One recognised layout: its name, the columns (or JSON keys) it uses, the optional
    columns naming a row's conversation, and the kind of file."""

    name: str
    arrival_column: str
    prompt_column: str
    output_column: str
    session_columns: tuple[str, ...] = ()
    kind: str = "CSV"

    def describe(self) -> str:
        """The header this layout expects, for error messages."""
        return f"{self.name} ({self.arrival_column},{self.prompt_column},{self.output_column})"


#: The CSV layouts, tried in this order on a header.
TRACE_FORMATS: tuple[TraceFormat, ...] = (
    TraceFormat("simserve", "arrival_s", "prompt_len", "output_len"),
    TraceFormat("vidur", "arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    TraceFormat("azure", "TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    # NOTE: BurstGPT's README announces the new column as `SessionID`; descriptions of its
    # later files (BurstGPT_3.csv) show `Session ID`. Both are read.
    TraceFormat("burstgpt", "Timestamp", "Request tokens", "Response tokens",
                session_columns=("Session ID", "SessionID")),
)
MOONCAKE = TraceFormat("mooncake", *mooncake.KEYS[:3], kind="JSONL")


@dataclass(frozen=True, eq=False)
class Trace:
    """A loaded trace, rows sorted by arrival (stably), arrays read-only.

    `hash_offsets`/`hash_ids`: each row's prompt block ids (row i's are
    hash_ids[hash_offsets[i]:hash_offsets[i + 1]], one per `hash_block_tokens` tokens), when
    the file gives them. `session`: each row's conversation stream, the index of its session's
    first row (a row without a session: its own index), when the file has a session column.
    """

    arrival_s: np.ndarray | None  # float64 seconds, non-decreasing; None if the file has none
    prompt_len: np.ndarray  # int64 >= 1
    output_len: np.ndarray  # int64 >= 1
    source: Path
    format: str
    num_skipped: int = 0  # rows with zero prompt or output tokens, left out
    priority: np.ndarray | None = None  # int64; None if the file has no priority column
    kind: str = "CSV"
    hash_offsets: np.ndarray | None = None  # int64, len + 1
    hash_ids: np.ndarray | None = None  # int64 >= 0
    hash_block_tokens: int = mooncake.HASH_BLOCK_TOKENS
    session: np.ndarray | None = None  # int64

    def __len__(self) -> int:
        return int(self.prompt_len.size)

    def describe(self) -> str:
        """One line saying what was read: the layout, the number of requests, the file."""
        what = f"{self.format} {self.kind}"
        if self.hash_ids is not None:
            what += f" (prompt block ids, {self.hash_block_tokens} tokens a block)"
        if self.session is not None:
            what += " (conversation sessions)"
        skipped = f", {self.num_skipped} skipped" if self.num_skipped else ""
        return f"trace: {what}, {len(self)} requests{skipped} ({self.source.name})"

    def content(self, rows: slice | np.ndarray) -> SharedContent | None:
        """What the requests made of trace `rows` (in order) share: their block ids and
        conversation streams, or None when the file says nothing about it."""
        if self.hash_ids is None and self.session is None:
            return None
        index = np.arange(len(self))[rows]
        offsets = ids = None
        if self.hash_ids is not None:
            assert self.hash_offsets is not None
            offsets, ids = gather_ragged(self.hash_offsets, self.hash_ids, index)
        stream = self.session[index] if self.session is not None else None
        return SharedContent(stream=stream, hash_offsets=offsets, hash_ids=ids,
                             hash_block_tokens=self.hash_block_tokens)


def gather_ragged(offsets: np.ndarray, values: np.ndarray,
                  rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ragged rows `rows` (row i is values[offsets[i]:offsets[i + 1]]), in that order, as
    new (offsets, values)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = offsets[rows]
    counts = offsets[rows + 1] - starts
    new_offsets = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    # Position k of the output is value starts[row] + (k - new_offsets[row]) of its row.
    shift = np.repeat(starts - new_offsets[:-1], counts)
    return new_offsets, values[shift + np.arange(int(new_offsets[-1]), dtype=np.int64)]


def load_trace(path: str | Path, max_rows: int | None = None) -> Trace:
    """Read a trace in any of `TRACE_FORMATS` or Mooncake's JSON lines, validating every value
    so a bad row is named.

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
    try:
        stat = path.stat()
    except OSError:
        trace, skipped = _read_trace(path, max_rows)  # names the problem
    else:
        # NOTE: experiments run hundreds of simulations of one trace per process; the parsed
        # arrays are immutable, so a file unchanged since (same size and mtime) is not parsed
        # again.
        trace, skipped = _cached_trace(str(path), path.resolve(), stat.st_mtime_ns,
                                       stat.st_size, max_rows)
    if skipped is not None:
        warnings.warn(InputWarning(skipped), stacklevel=2)
    return trace


@functools.lru_cache(maxsize=8)
def _cached_trace(source: str, resolved: Path, mtime_ns: int, size: int,
                  max_rows: int | None) -> tuple[Trace, str | None]:
    return _read_trace(Path(source), max_rows)


def _read_trace(path: Path, max_rows: int | None) -> tuple[Trace, str | None]:
    """`load_trace`'s parse, with the skipped-rows warning's text (None: none skipped)."""
    source = str(path)
    reader = _TraceReader(path, max_rows)
    rows = reader.read()
    skipped = None
    if reader.num_skipped:
        skipped = (
            f"{source}: skipped {reader.num_skipped} row(s) with zero prompt or output tokens "
            f"(the first at line {reader.first_skipped_line}); they cannot be requests")
    arrival_s = rows.get("arrival")
    if arrival_s is not None and np.any(np.diff(arrival_s) < 0):
        order = np.argsort(arrival_s, kind="stable")
        if "hash_ids" in rows:
            rows["hash_offsets"], rows["hash_ids"] = gather_ragged(
                rows["hash_offsets"], rows["hash_ids"], order)
        for key in ("arrival", "prompt", "output", "priority", "session"):
            if key in rows:
                rows[key] = rows[key][order]
    if "session" in rows:
        rows["session"] = _session_streams(rows["session"])
    for array in rows.values():
        array.setflags(write=False)
    trace = Trace(
        arrival_s=rows.get("arrival"),
        prompt_len=rows["prompt"],
        output_len=rows["output"],
        source=path,
        format=reader.format.name,
        num_skipped=reader.num_skipped,
        priority=rows.get("priority"),
        kind=reader.format.kind,
        hash_offsets=rows.get("hash_offsets"),
        hash_ids=rows.get("hash_ids"),
        session=rows.get("session"),
    )
    return trace, skipped


def _session_streams(codes: np.ndarray) -> np.ndarray:
    """Per row, the index of the first row of its session (`codes`: a session number per row,
    -1 for none), or its own index without one: one stream id per conversation."""
    stream = np.arange(codes.size, dtype=np.int64)
    has = np.flatnonzero(codes >= 0)
    if has.size:
        _, first, inverse = np.unique(codes[has], return_index=True, return_inverse=True)
        stream[has] = has[first][inverse]
    return stream


class _TraceReader:
    """One streaming pass over a trace file: the layout (CSV header or JSON lines), then
    chunks of rows parsed into arrays; the usable rows are kept."""

    def __init__(self, path: Path, max_rows: int | None) -> None:
        self.path = path
        self.source = str(path)
        self.max_rows = max_rows
        self.format = TRACE_FORMATS[0]
        self.columns: dict[str, int] = {}
        self.num_rows = 0  # usable rows kept
        self.num_skipped = 0
        self.first_skipped_line: int | None = None
        self._parts: dict[str, list[np.ndarray]] = {}
        self._datetimes = False
        self._data_rows = 0  # data rows parsed so far (rows are numbered in messages)
        self._sessions: dict[str, int] = {}  # session column value -> session number

    def read(self) -> dict[str, np.ndarray]:
        """The usable rows' arrays: `prompt`, `output`, and where the file has them
        `arrival`, `priority`, `session` (session numbers, -1 for none), `hash_offsets` and
        `hash_ids`."""
        try:
            size = self.path.stat().st_size
            with self.path.open(newline="", encoding="utf-8-sig") as handle, _progress(
                size, self.path.name
            ) as bar:
                self._read_stream(handle, bar)
        except FileNotFoundError:
            raise InputError("trace file not found", source=self.source) from None
        except IsADirectoryError:
            raise InputError("trace path is a directory, not a CSV or JSONL file",
                             source=self.source) from None
        except UnicodeDecodeError:
            raise InputError("trace file is not UTF-8 text (expected CSV or JSON lines)",
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
            if self.format.kind == "JSONL":
                raise InputError("trace file has no requests", source=self.source)
            raise InputError("trace file has a header but no data rows", source=self.source,
                             line=1)
        rows = {key: np.concatenate(parts) for key, parts in self._parts.items()}
        if "hash_count" in rows:
            offsets = np.zeros(rows["prompt"].size + 1, dtype=np.int64)
            np.cumsum(rows.pop("hash_count"), out=offsets[1:])
            rows["hash_offsets"] = offsets
        if "arrival" in rows and self._datetimes:
            arrival = rows["arrival"]
            # Nanoseconds since the first one must fit int64: a span over 292 years wrapped
            # around to negative arrival times.
            first, last = (int(t) for t in arrival[[arrival.argmin(), arrival.argmax()]]
                           .astype(np.int64))
            if last - first >= 2**63:
                raise InputError(f"timestamps span {fmt_number((last - first) / 3.15576e16)} years "
                                 "(at most 292: arrivals are kept in nanoseconds)",
                                 source=self.source)
            rows["arrival"] = (arrival - arrival.min()).astype(np.int64).astype(np.float64) / 1e9
        return rows

    def _read_stream(self, handle: Any, bar: Any) -> None:
        def lines() -> Iterator[str]:
            for line in handle:
                bar.update(len(line))
                yield line

        # The first non-blank line tells JSON lines (an object) from a CSV header.
        stream = lines()
        head: list[str] = []
        for line in stream:
            head.append(line)
            if line.strip():
                break
        rest = itertools.chain(head, stream)
        if head and head[-1].lstrip().startswith("{"):
            self.format = MOONCAKE
            self._read_jsonl(rest)
        else:
            self._read_csv(rest)

    def _read_jsonl(self, lines: Iterator[str]) -> None:
        def records() -> Iterator[tuple[mooncake.Record, int]]:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield mooncake.parse_line(line, number, self.source), number

        self._in_chunks(records(), self._parse_records)

    def _parse_records(self, records: list[mooncake.Record], line_numbers: list[int]) -> None:
        where = Where(line_numbers, self.source, self._data_rows, kind="key")
        self._data_rows += len(records)
        self._keep(mooncake.parse_records(records, where), line_numbers)

    def _read_csv(self, lines: Iterator[str]) -> None:
        reader = csv.reader(lines)
        header = next(reader, None)
        if header is None:
            raise InputError("trace file is empty (expected a CSV header or JSON lines)",
                             source=self.source)
        self.format, self.columns = _detect_format([name.strip() for name in header],
                                                   self.source)
        width = max(self.columns.values()) + 1

        def rows() -> Iterator[tuple[list[str], int]]:
            for row in reader:
                if not row or not any(cell.strip() for cell in row):
                    continue
                if len(row) < width:
                    raise InputError(f"expected at least {width} columns, got {len(row)}",
                                     source=self.source, line=reader.line_num)
                yield row, reader.line_num

        self._in_chunks(rows(), self._parse_chunk)

    def _in_chunks(self, rows: Iterator[tuple[Any, int]],
                   parse: Callable[[list[Any], list[int]], None]) -> None:
        """Hand (row, line number) pairs to `parse` `CHUNK_ROWS` at a time, and stop reading
        once `max_rows` usable rows are in."""
        chunk: list[Any] = []
        line_numbers: list[int] = []
        for row, line in rows:
            chunk.append(row)
            line_numbers.append(line)
            if len(chunk) >= CHUNK_ROWS or self._enough(len(chunk)):
                parse(chunk, line_numbers)
                chunk, line_numbers = [], []
                if self._enough(0):
                    return
        if chunk:
            parse(chunk, line_numbers)

    def _enough(self, pending: int) -> bool:
        """Whether `max_rows` usable rows are in, counting `pending` unparsed rows as usable
        (a chunk is parsed as soon as it could complete the read)."""
        return self.max_rows is not None and self.num_rows + pending >= self.max_rows

    def _parse_chunk(self, rows: list[list[str]], line_numbers: list[int]) -> None:
        """Parse and check one chunk of CSV rows; keep the usable ones (up to `max_rows`)."""
        fmt, first_row = self.format, self._data_rows
        self._data_rows += len(rows)

        def column(name: str) -> list[str]:
            index = self.columns[name]
            return [row[index] for row in rows]

        where = Where(line_numbers, self.source, first_row)
        parsed = {
            "prompt": parse_lengths(column(fmt.prompt_column), fmt.prompt_column, "prompt",
                                    where),
            "output": parse_lengths(column(fmt.output_column), fmt.output_column, "output",
                                    where),
        }
        if fmt.arrival_column in self.columns:
            values = column(fmt.arrival_column)
            if first_row == 0:
                self._datetimes = not is_number(values[0])
            if self._datetimes:
                parsed["arrival"] = parse_datetimes(values, fmt.arrival_column, where)
            else:
                parsed["arrival"] = parse_times(values, fmt.arrival_column, where)
        if PRIORITY_COLUMN in self.columns:
            parsed["priority"] = parse_priorities(column(PRIORITY_COLUMN), where)
        session_column = next((c for c in fmt.session_columns if c in self.columns), None)
        if session_column is not None:
            parsed["session"] = self._session_numbers(column(session_column))
        self._keep(parsed, line_numbers)

    def _session_numbers(self, values: list[str]) -> np.ndarray:
        """A number per distinct session value (in order of first appearance in the file), -1
        for an empty cell."""
        sessions = self._sessions
        numbers = [sessions.setdefault(v, len(sessions)) if v.strip() else -1
                   for v in (value.strip() for value in values)]
        return np.array(numbers, dtype=np.int64)

    def _keep(self, parsed: dict[str, np.ndarray], line_numbers: list[int]) -> None:
        """Keep the usable rows of one parsed chunk (up to `max_rows` in all), counting the
        skipped ones. `parsed` has an array per row, except `hash_ids`: the rows' block ids
        one after another, `hash_count` of them per row."""
        usable = (parsed["prompt"] > 0) & (parsed["output"] > 0)
        keep = usable.size
        if self.max_rows is not None:
            keep = max(self.max_rows - self.num_rows, 0)
        if not bool(np.all(usable)):
            skipped = np.flatnonzero(~usable)
            if self.first_skipped_line is None:
                self.first_skipped_line = line_numbers[int(skipped[0])]
            self.num_skipped += int(skipped.size)
        rows = np.flatnonzero(usable)[:keep]
        for key, values in parsed.items():
            if key == "hash_ids":
                counts = parsed["hash_count"]
                offsets = np.zeros(counts.size + 1, dtype=np.int64)
                np.cumsum(counts, out=offsets[1:])
                values = gather_ragged(offsets, values, rows)[1]
            else:
                values = values[rows]
            self._parts.setdefault(key, []).append(values)
        self.num_rows += int(rows.size)


# Files smaller than this read in about a second: no bar (and no tqdm import for them).
PROGRESS_MIN_BYTES = 16 * 2**20


@contextlib.contextmanager
def _progress(total_bytes: int, name: str) -> Iterator[Any]:
    """A progress bar over the bytes read of a large file, on a terminal only, shown once the
    read has taken two seconds."""
    bar = progress_bar(total_bytes, desc=f"reading {name}", unit="B", unit_scale=True,
                       enabled=total_bytes >= PROGRESS_MIN_BYTES and sys.stderr.isatty(),
                       delay_s=2.0, leave=False)
    try:
        yield bar
    finally:
        bar.close()


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
                *trace_format.session_columns,
            )
            return trace_format, {name: index[name] for name in wanted if name in index}
    accepted = "; ".join(f.describe() for f in TRACE_FORMATS)
    raise InputError(
        f"unrecognised trace header {','.join(header)!r}; accepted CSV formats (arrival column "
        f"optional): {accepted}; or JSON lines: {MOONCAKE.describe()},hash_ids",
        source=source,
        line=1,
    )
