"""Mooncake request traces: one JSON object per line, with the ids of the prompt's blocks.

Each line is one request: `timestamp` (ms after the trace's start), `input_length` and
`output_length` (tokens) and `hash_ids`, one id per `HASH_BLOCK_TOKENS`-token block of the
prompt, in order. Equal ids mean equal block content after equal blocks before it (the ids are
chained hashes, like vLLM's block hashes), so the trace says exactly which prompt prefixes
repeat. Other keys are ignored.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from simserve.errors import InputError
from simserve.workload.trace_values import Where, parse_lengths, parse_times

__all__ = ["HASH_BLOCK_TOKENS", "KEYS", "Record", "parse_line", "parse_records"]

# NOTE: the Mooncake FAST'25 traces hash 512-token blocks (the README of their traces/ folder).
HASH_BLOCK_TOKENS = 512
KEYS = ("timestamp", "input_length", "output_length", "hash_ids")
# Ids above this would not be exact as floats and are garbage for a block hash of a trace.
MAX_HASH_ID = 2**53


Record = tuple[Any, Any, Any, Any]  # the values of KEYS, in that order, as JSON gave them


def parse_line(text: str, line: int, source: str) -> Record:
    """The values of `KEYS` on one line, a JSON object (kept as a tuple: a chunk of lines
    takes a fraction of the memory of their dicts)."""
    try:
        # Without its line break: a line cut short is named at its end, not at "column 1"
        # of the next line.
        record = json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        raise InputError(f"not a JSON object ({exc.msg} at column {exc.colno})", source=source,
                         line=line) from None
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {type(record).__name__}",
                         source=source, line=line)
    missing = [key for key in KEYS if key not in record]
    if missing:
        raise InputError(f"missing {', '.join(missing)} (a Mooncake line has "
                         f"{', '.join(KEYS)})", source=source, line=line)
    timestamp, input_length, output_length, hash_ids = (record[key] for key in KEYS)
    return timestamp, input_length, output_length, hash_ids


def parse_records(records: list[Record], where: Where) -> dict[str, np.ndarray]:
    """A chunk of parsed lines as arrays: `arrival` (s), `prompt`, `output`, and the block ids
    (`hash_ids`, `hash_count` of them per row), each value checked."""

    def values(key: str) -> list[str]:
        # As text, so that a bool, null or string is named as the value it is.
        index = KEYS.index(key)
        return [str(record[index]) for record in records]

    prompt = parse_lengths(values("input_length"), "input_length", "prompt", where)
    output = parse_lengths(values("output_length"), "output_length", "output", where)
    arrival_s = parse_times(values("timestamp"), "timestamp", where) / 1000.0
    counts = np.empty(len(records), dtype=np.int64)
    ids: list[int] = []
    for position, record in enumerate(records):
        row = record[3]
        if not isinstance(row, list) or not all(
                type(h) is int and 0 <= h < MAX_HASH_ID for h in row):
            raise where.error(f"expected a list of whole numbers in [0, 2**53), got "
                              f"{_short(row)}", "hash_ids", position)
        most = -(-int(prompt[position]) // HASH_BLOCK_TOKENS)
        if len(row) > most:
            raise where.error(f"{len(row)} block ids for a prompt of {prompt[position]} tokens "
                              f"(at most {most} blocks of {HASH_BLOCK_TOKENS})", "hash_ids",
                              position)
        counts[position] = len(row)
        ids.extend(row)
    return {"arrival": arrival_s, "prompt": prompt, "output": output, "hash_count": counts,
            "hash_ids": np.array(ids, dtype=np.int64)}


def _short(value: Any) -> str:
    """A value for an error message, cut to one short line."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
