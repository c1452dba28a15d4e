"""Trace formats beyond the original CSV layouts: Mooncake JSON lines (block ids), BurstGPT CSV
(failed requests, sessions), the Azure 2024 files; each detected from the file and named in
one line; bad rows named by line; streaming reads; the shipped Mooncake sample and its
scenario."""

from __future__ import annotations

import json
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

from simserve.cli import main
from simserve.config import (
    ArrivalConfig,
    LengthsConfig,
    PrefixConfig,
    WorkloadConfig,
    load_scenario,
)
from simserve.errors import InputError, InputNotice, InputWarning
from simserve.experiments.run import run_scenario, seed_streams
from simserve.workload import Workload, build_workload, load_trace, traces
from simserve.workload.content import HASH, STREAM

ROOT = Path(__file__).resolve().parents[1]
MOONCAKE_DIR = ROOT / "calibration" / "data" / "traces" / "mooncake"
CONVERSATION = MOONCAKE_DIR / "conversation_trace_first500.jsonl"
SYNTHETIC = MOONCAKE_DIR / "synthetic_trace_first500.jsonl"
SCENARIO = ROOT / "scenarios" / "traces" / "mooncake-conversation.yaml"
REPLAY = {"arrival": ArrivalConfig(process="trace"), "lengths": LengthsConfig(dist="trace")}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def mooncake_line(timestamp: float, input_length: int, output_length: int,
                  hash_ids: list[int]) -> str:
    return json.dumps({"timestamp": timestamp, "input_length": input_length,
                       "output_length": output_length, "hash_ids": hash_ids}) + "\n"


def replay(path: Path, num_requests: int | None = None, **sections: object) -> Workload:
    """A replay of the trace (arrivals and lengths), built as a run builds it."""
    rngs = seed_streams(0)
    config = WorkloadConfig(num_requests=num_requests, trace=str(path),
                            **{**REPLAY, **sections})  # type: ignore[arg-type]
    return build_workload(config, rngs["arrivals"], rngs["lengths"], rngs["classes"],
                          prefix_rng=rngs["prefix"], session_rng=rngs["sessions"])


# --------------------------------------------------------------------------- Mooncake


def test_mooncake_lines_give_arrivals_lengths_and_block_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl",
                 mooncake_line(0, 1000, 20, [1, 2]) + "\n"  # a blank line is skipped
                 + mooncake_line(1500, 600, 5, [1, 3]) + mooncake_line(1500, 100, 7, [9]))
    trace = load_trace(path)
    assert (trace.format, trace.kind, len(trace)) == ("mooncake", "JSONL", 3)
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 1.5, 1.5])  # ms -> s
    np.testing.assert_array_equal(trace.prompt_len, [1000, 600, 100])
    np.testing.assert_array_equal(trace.hash_offsets, [0, 2, 4, 5])
    np.testing.assert_array_equal(trace.hash_ids, [1, 2, 1, 3, 9])
    assert trace.hash_block_tokens == 512 and trace.session is None
    content = trace.content(np.array([2, 0]))
    assert content is not None and content.stream is None
    np.testing.assert_array_equal(content.hash_offsets, [0, 1, 3])
    np.testing.assert_array_equal(content.hash_ids, [9, 1, 2])


def test_a_mooncake_replay_shares_the_blocks_of_equal_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl", mooncake_line(0, 1100, 20, [1, 2, 3])
                 + mooncake_line(10, 600, 5, [1, 4]))
    with pytest.warns(InputNotice, match=r"^trace: mooncake JSONL \(prompt block ids, 512 "
                                         r"tokens a block\), 2 requests \(m\.jsonl\)$"):
        workload = replay(path)
    content = workload.content
    assert content is not None
    # Block ids name prompt blocks only: the output's blocks are each request's own.
    assert content.segments(0, 16, 1120, 1100) == [
        (HASH + 3, 0, 32), (HASH + 6, 0, 32), (HASH + 9, 0, 4), (STREAM + 0, 68, 2)]
    assert content.segments(1, 16, 640, 600) == [
        (HASH + 3, 0, 32), (HASH + 12, 0, 5), (STREAM + 3, 37, 3)]


@pytest.mark.parametrize(
    ("text", "line", "fragments"),
    [
        ("{\"timestamp\": 0, \"input_length\": 5\n", 1, ["not a JSON object"]),
        # Once named "column 1" (of the line after it): the column where the line was cut.
        ('{"timestamp": 0, "hash_ids": [1,\n', 1,
         ["not a JSON object (Expecting value at column 33)"]),
        (mooncake_line(0, 5, 1, [1]) + "[1, 2]\n", 2, ["expected a JSON object, got list"]),
        (mooncake_line(0, 5, 1, [1]) + '{"timestamp": 1, "input_length": 5}\n', 2,
         ["missing output_length, hash_ids"]),
        (mooncake_line(0, 5, 1, [1]) + mooncake_line(1, 5, 1, [1, 2]), 2,
         ["key 'hash_ids'", "data row 2", "2 block ids for a prompt of 5 tokens"]),
        (mooncake_line(0, 5, 1, [1]) + mooncake_line(1, 5, 1, [-1]), 2,
         ["key 'hash_ids'", "whole numbers"]),
        (mooncake_line(0, 5, 1, [1]) + json.dumps({"timestamp": 1, "input_length": "x",
                                                    "output_length": 1, "hash_ids": []}) + "\n",
         2, ["key 'input_length'", "data row 2", "'x'"]),
        (mooncake_line(0, 5, 1, [1]) + json.dumps({"timestamp": None, "input_length": 5,
                                                    "output_length": 1, "hash_ids": [1]}) + "\n",
         2, ["key 'timestamp'", "'None'"]),
        (mooncake_line(0, 5, 1, [1]) + json.dumps({"timestamp": 1, "input_length": 5,
                                                    "output_length": True, "hash_ids": [1]})
         + "\n", 2, ["key 'output_length'", "'True'"]),
    ],
)
def test_bad_mooncake_lines_are_named_by_line(tmp_path: Path, text: str, line: int,
                                              fragments: list[str]) -> None:
    path = write(tmp_path / "bad.jsonl", text)
    with pytest.raises(InputError) as info:
        load_trace(path)
    message = str(info.value)
    assert info.value.line == line and message.startswith(f"{path}:{line}: ")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_mooncake_zero_token_rows_are_skipped_and_a_replay_reads_only_its_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [mooncake_line(i * 100, 600 + i, i % 4, [i, i + 1]) for i in range(40)]
    path = write(tmp_path / "m.jsonl", "".join(lines) + "not json\n")
    with pytest.warns(InputWarning, match=r"skipped 4 row\(s\)"):
        trace = load_trace(path, max_rows=12)  # never reaches the bad last line
    assert len(trace) == 12 and trace.num_skipped == 4  # outputs 0 at rows 0, 4, 8, 12
    assert trace.hash_ids.tolist() == [h for i in range(16) if i % 4 for h in (i, i + 1)]
    monkeypatch.setattr(traces, "CHUNK_ROWS", 5)
    with pytest.warns(InputWarning, match=r"skipped 4 row\(s\) .*first at line 1\b"):
        chunked = load_trace(path, max_rows=12)
    np.testing.assert_array_equal(chunked.hash_ids, trace.hash_ids)
    np.testing.assert_array_equal(chunked.hash_offsets, trace.hash_offsets)
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert info.value.line == 41


def test_unsorted_mooncake_rows_keep_their_block_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl", mooncake_line(2000, 600, 1, [1, 2])
                 + mooncake_line(1000, 100, 1, [7]) + mooncake_line(2000, 1100, 1, [1, 2, 3]))
    trace = load_trace(path)
    np.testing.assert_array_equal(trace.arrival_s, [1.0, 2.0, 2.0])
    np.testing.assert_array_equal(trace.prompt_len, [100, 600, 1100])
    np.testing.assert_array_equal(trace.hash_offsets, [0, 1, 3, 6])
    np.testing.assert_array_equal(trace.hash_ids, [7, 1, 2, 1, 2, 3])


def test_mooncake_block_ids_leave_no_room_for_prefix_groups(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl", mooncake_line(0, 600, 3, [1, 2]))
    with pytest.raises(InputError, match=r"block ids.*no prefix groups") as info:
        replay(path, prefix=PrefixConfig(shared_len=64))
    assert info.value.field == "workload.prefix"


def test_a_large_jsonl_trace_takes_memory_for_its_arrays_not_its_text(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "big.jsonl"
    num_rows = 20_000
    with path.open("w") as handle:
        for i, length in enumerate(rng.integers(1, 5_000, num_rows).tolist()):
            ids = list(range(i, i + -(-length // 512)))
            handle.write(mooncake_line(i * 10, length, 50, ids))
    size = path.stat().st_size
    # Small chunks, so that one chunk's parsed lines weigh little beside the arrays.
    monkeypatch.setattr(traces, "CHUNK_ROWS", 1_000)
    tracemalloc.start()
    try:
        trace = load_trace(path)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(trace) == num_rows
    # About 1.5x the file (its arrays, twice while they are joined); every line parsed at
    # once would take 6.7x.
    assert peak < 2.5 * size, (peak, size)


def test_the_shipped_mooncake_samples_load_with_their_documented_reuse() -> None:
    for path, reuse in ((CONVERSATION, "16.1%"), (SYNTHETIC, "8.4%")):
        trace = load_trace(path)
        assert len(trace) == 500 and trace.num_skipped == 0 and trace.arrival_s[0] == 0.0
        seen: set[int] = set()
        repeated = 0
        for i in range(len(trace)):
            row = trace.hash_ids[trace.hash_offsets[i]:trace.hash_offsets[i + 1]].tolist()
            repeated += sum(h in seen for h in row)
            seen.update(row)
        # The share of prompt blocks whose id came earlier (calibration/data/traces/README.md).
        assert f"{repeated / trace.hash_ids.size:.1%}" == reuse
    for name in ("LICENSE", "SOURCE.txt"):
        assert (MOONCAKE_DIR / name).is_file()


def test_the_mooncake_scenario_replays_in_a_run(tmp_path: Path, capsys) -> None:
    scenario = load_scenario(SCENARIO, ["workload.num_requests=20"])
    output = run_scenario(scenario)
    assert output.summary["completed"] == 20
    content = output.workload.content
    assert content is not None and content.hash_ids is not None
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # the CLI prints notices as one line each
        assert main(["run", str(SCENARIO), "--set", "workload.num_requests=20",
                     "--out", str(tmp_path / "run")]) == 0
    assert "simserve: trace: mooncake JSONL (prompt block ids, 512 tokens a block), 20 " \
           "requests (conversation_trace_first500.jsonl)\n" in capsys.readouterr().err
    with pytest.raises(InputError, match="hash blocks of 512 tokens are not whole KV blocks "
                                         "of 24") as info:
        run_scenario(load_scenario(SCENARIO, ["workload.num_requests=20",
                                              "engine.block_size=24"]))
    assert info.value.field == "engine.block_size"


# --------------------------------------------------------------------------- BurstGPT

# Synthetic rows in BurstGPT's published layouts (its data could not be obtained here).
BURSTGPT = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "5,ChatGPT,472,18,490,Conversation log\n"
    "45,GPT-4,1087,0,1087,API log\n"
    "50,ChatGPT,30,2,32,Conversation log\n"
)
BURSTGPT_SESSIONS = (
    "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,"
    "Log Type\n"
    "100.0,aaa,3,GPT-4,200,40,240,Conversation log\n"
    "101.5,bbb,2,ChatGPT,50,10,60,Conversation log\n"
    "103.0,,1,ChatGPT,70,0,70,API log\n"
    "104.0,,1,ChatGPT,80,8,88,API log\n"
    "99.0,aaa,4,GPT-4,300,20,320,Conversation log\n"
    "120.0,bbb,5,ChatGPT,120,30,150,Conversation log\n"
)


def test_burstgpt_rows_with_zero_response_tokens_are_failed_requests(tmp_path: Path) -> None:
    path = write(tmp_path / "burst.csv", BURSTGPT)
    with pytest.warns(InputWarning, match=r"skipped 1 row\(s\) .*first at line 3"):
        trace = load_trace(path)
    assert (trace.format, trace.kind) == ("burstgpt", "CSV")
    np.testing.assert_array_equal(trace.arrival_s, [5.0, 50.0])
    np.testing.assert_array_equal(trace.prompt_len, [472, 30])
    np.testing.assert_array_equal(trace.output_len, [18, 2])
    assert trace.session is None and trace.content(slice(0, 2)) is None
    with pytest.warns(InputWarning), pytest.warns(
            InputNotice, match=r"^trace: burstgpt CSV, 2 requests, 1 skipped \(burst\.csv\)$"):
        replay(path)


@pytest.mark.parametrize("column", ["Session ID", "SessionID"])
def test_burstgpt_sessions_become_conversation_streams(tmp_path: Path, column: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "burst.csv", BURSTGPT_SESSIONS.replace("Session ID", column))
    with pytest.warns(InputWarning, match="skipped 1 row"):
        trace = load_trace(path)
    # Sorted by time: aaa(99), aaa(100), bbb(101.5), none(104), bbb(120).
    np.testing.assert_array_equal(trace.arrival_s, [99.0, 100.0, 101.5, 104.0, 120.0])
    np.testing.assert_array_equal(trace.prompt_len, [300, 200, 50, 80, 120])
    # A session's stream is its first request's index; a row without one is its own.
    np.testing.assert_array_equal(trace.session, [0, 0, 2, 3, 2])
    monkeypatch.setattr(traces, "CHUNK_ROWS", 2)  # sessions span chunks
    with pytest.warns(InputWarning):
        np.testing.assert_array_equal(load_trace(path).session, trace.session)
    monkeypatch.undo()
    with pytest.warns(InputWarning), pytest.warns(
            InputNotice, match=r"burstgpt CSV \(conversation sessions\)"):
        workload = replay(path, num_requests=4)
    assert workload.content is not None
    np.testing.assert_array_equal(workload.content.stream, [0, 0, 2, 3])


def test_bad_burstgpt_values_are_named_by_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "burst.csv", BURSTGPT.replace("30,2,32", "thirty,2,32"))
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert info.value.line == 4 and "column 'Request tokens', data row 3" in str(info.value)


# --------------------------------------------------------------------------- Azure 2024


def test_azure_2024_timestamps_with_offsets_and_mixed_precision(tmp_path: Path) -> None:
    # The 2024 files have the 2023 header; their timestamps carry +00:00, some without
    # fractional seconds.
    path = write(tmp_path / "AzureLLMInferenceTrace_conv_1week.csv",
                 "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2024-05-12 00:00:00+00:00,1452,3\n"
                 "2024-05-12 00:00:00.041683+00:00,584,3\n"
                 "2024-05-12 00:00:01.157988+00:00,862,38\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace = load_trace(path)
    assert trace.format == "azure"
    np.testing.assert_allclose(trace.arrival_s, [0.0, 0.041683, 1.157988], atol=1e-9)
    with pytest.warns(InputNotice, match=r"^trace: azure CSV, 3 requests"):
        replay(path)


@pytest.mark.parametrize(("stamps", "message"), [
    # The defects: each was accepted. A number read as a year ("5": 0005-01-01), an offset
    # of 99 hours, a year outside datetime64[ns] wrapped around, and a span of over 292 years
    # in nanoseconds wrapped to negative arrival times.
    (["2023-11-16 18:15:46", "5"], r":3: column 'TIMESTAMP', data row 2: expected a datetime"),
    (["2023-11-16 18:15:46+99:99"], r":2: column 'TIMESTAMP', data row 1: expected a datetime"),
    (["2023-11-16 18:15:46", "9999-01-01 00:00:00"], r":3: .* got '9999-01-01 00:00:00'"),
    (["2023-11-16 18:15:46", "1700-01-01 00:00:00"], r"t\.csv: timestamps span 323\.9 years"),
])
def test_impossible_datetimes_are_refused_by_line(tmp_path: Path, stamps: list[str],
                                                  message: str) -> None:
    path = write(tmp_path / "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 + "".join(f"{stamp},10,2\n" for stamp in stamps))
    with pytest.raises(InputError, match=message):
        load_trace(path)


@pytest.mark.parametrize(
    ("header", "name"),
    [("arrival_s,prompt_len,output_len", "simserve"),
     ("arrived_at,num_prefill_tokens,num_decode_tokens", "vidur")],
)
def test_every_csv_layout_is_named_when_loaded(tmp_path: Path, header: str, name: str) -> None:
    path = write(tmp_path / "t.csv", f"{header}\n0,10,2\n1,20,3\n")
    with pytest.warns(InputNotice, match=rf"^trace: {name} CSV, 2 requests \(t\.csv\)$"):
        replay(path)


def test_an_unknown_header_names_the_jsonl_layout_too(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.csv", "time,input,output\n0,1,1\n")
    with pytest.raises(InputError, match=r"or JSON lines: mooncake \(timestamp,input_length,"
                                         r"output_length\),hash_ids"):
        load_trace(path)
