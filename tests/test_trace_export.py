"""Chrome/Perfetto trace export: one slice per step, queued/prefill/decode slices per request in
order, microsecond timestamps that agree with steps.csv and requests.csv, capped request tracks,
and `run --trace` writing trace.json atomically with the rest of the run directory; a
disaggregated run names its processes by pool and adds each request's KV wait and transfer."""

from __future__ import annotations

import csv
import itertools
import json
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from simserve.cli import main
from simserve.config import scenario_from_mapping
from simserve.experiments.atomic import MARKER
from simserve.experiments.run import run_scenario, write_run_dir
from simserve.experiments.trace_export import STEP_TRACK_TID, chrome_trace, write_trace

TINY = {
    "name": "tiny",
    "seed": 5,
    "cost_model": {"kind": "constant", "step_time_ms": 10.0},
    "engine": {"policy": "chunked_prefill", "max_num_seqs": 8, "max_num_batched_tokens": 64},
    "cluster": {"replicas": 2, "router": "round_robin"},
    "workload": {
        "num_requests": 30,
        "arrival": {"process": "poisson", "rate": 60.0},
        "lengths": {"dist": "uniform", "prompt_len": 48, "output_len": 10, "range_ratio": 0.5},
    },
}
US = 1e6


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _run_with_trace(base: Path, mapping: dict) -> Path:
    """`simserve run --trace` of a scenario mapping; returns the run directory."""
    scenario = base / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(mapping))
    out = base / "run"
    assert main(["run", str(scenario), "--out", str(out), "--trace"]) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _run_with_trace(tmp_path_factory.mktemp("trace"), TINY)


@pytest.fixture(scope="module")
def trace(run_dir) -> dict:
    return json.loads((run_dir / "trace.json").read_text())


def test_cli_trace_writes_trace_json_and_no_figures(run_dir, trace):
    assert sorted(p.name for p in run_dir.iterdir()) == [
        MARKER, "requests.csv", "scenario.yaml", "steps.csv", "summary.json", "trace.json"
    ]
    assert trace["displayTimeUnit"] == "ms"
    assert trace["otherData"]["scenario"] == "tiny"
    assert trace["otherData"]["policy"] == "chunked_prefill"


def test_one_step_slice_per_step_matching_steps_csv(run_dir, trace):
    steps = _read_csv(run_dir / "steps.csv")
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "step"]
    assert len(slices) == len(steps)
    by_step = {e["args"]["step"]: e for e in slices}
    for row in steps:
        e = by_step[int(row["step"])]
        assert e["tid"] == STEP_TRACK_TID and e["pid"] == int(row["replica"]) + 1
        assert e["dur"] >= 0
        assert e["ts"] == pytest.approx(float(row["started_at"]) * US, abs=1e-3)
        assert e["dur"] == pytest.approx(float(row["duration_s"]) * US, abs=2e-3)
        args = e["args"]
        for key in ("num_prefill_tokens", "num_decode_tokens", "num_seqs", "kv_blocks_used"):
            assert args[key] == int(row[key])
        pre, dec = args["num_prefill_tokens"], args["num_decode_tokens"]
        if pre and dec:
            assert e["name"] == f"prefill {pre} + decode {dec}"
        elif pre:
            assert e["name"] == f"prefill {pre}"
        else:
            assert e["name"] == f"decode {dec}"
    # Steps of one replica never overlap on its track.
    for pid in {e["pid"] for e in slices}:
        track = sorted((e["ts"], e["dur"]) for e in slices if e["pid"] == pid)
        for (t, d), (t_next, _) in itertools.pairwise(track):
            assert t + d <= t_next + 1e-3


def test_request_tracks_have_phases_in_order_matching_requests_csv(run_dir, trace):
    requests = _read_csv(run_dir / "requests.csv")
    phases: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "X" and e["cat"] == "request":
            phases[(e["pid"], e["tid"])].append(e)
    assert len(phases) == len(requests)
    for row in requests:
        rid, replica = int(row["request_id"]), int(row["replica"])
        events = sorted(phases[(replica + 1, rid + 1)], key=lambda e: e["ts"])
        assert [e["name"] for e in events] == ["queued", "prefill", "decode"]
        assert all(e["dur"] >= 0 and e["args"]["request_id"] == rid for e in events)
        queued, prefill, decode = events
        # Contiguous phases: each starts where the previous ended (rounding to the ns).
        assert queued["ts"] + queued["dur"] == pytest.approx(prefill["ts"], abs=2e-3)
        assert prefill["ts"] + prefill["dur"] == pytest.approx(decode["ts"], abs=2e-3)
        assert queued["ts"] == pytest.approx(float(row["arrived_at"]) * US, abs=1e-3)
        assert prefill["ts"] == pytest.approx(float(row["first_scheduled_at"]) * US, abs=1e-3)
        assert decode["ts"] == pytest.approx(float(row["first_token_at"]) * US, abs=1e-3)
        assert decode["ts"] + decode["dur"] == pytest.approx(
            float(row["finished_at"]) * US, abs=2e-3
        )
        assert decode["args"]["ttft_ms"] == pytest.approx(float(row["ttft_s"]) * 1e3)
        assert decode["args"]["num_preemptions"] == int(row["num_preemptions"])


def test_tracks_are_named_for_the_viewer(trace):
    names = {
        (e["pid"], e["tid"], e["name"]): e["args"]
        for e in trace["traceEvents"] if e["ph"] == "M"
    }
    assert names[(1, STEP_TRACK_TID, "process_name")] == {"name": "replica 0"}
    assert names[(2, STEP_TRACK_TID, "process_name")] == {"name": "replica 1"}
    assert names[(1, STEP_TRACK_TID, "thread_name")] == {"name": "replica 0 steps"}
    # Round robin: request 0 on replica 0, request 1 on replica 1.
    assert names[(1, 1, "thread_name")] == {"name": "request 0"}
    assert names[(2, 2, "thread_name")] == {"name": "request 1"}
    counters = [e for e in trace["traceEvents"] if e["ph"] == "C"]
    assert counters and all(0 <= e["args"]["used"] <= 100 for e in counters)


def test_request_tracks_are_capped_and_the_cap_is_stated():
    result = run_scenario(scenario_from_mapping(TINY)).result
    doc = chrome_trace(result, max_request_tracks=5, kv_counters=False, max_steps=7,
                       metadata={"scenario": "tiny"})
    events = doc["traceEvents"]
    tids = {e["tid"] for e in events if e["ph"] == "X" and e["cat"] == "request"}
    assert tids == {1, 2, 3, 4, 5}
    assert sum(1 for e in events if e["ph"] == "X" and e["cat"] == "step") == 7
    assert not any(e["ph"] == "C" for e in events)
    other = doc["otherData"]
    assert other["request_tracks"] == 5 and "first 5 of 30" in other["request_tracks_note"]
    assert "max_request_tracks=5" in other["request_tracks_note"]
    assert "max_steps=7" in other["step_slices_note"]
    assert other["scenario"] == "tiny"
    with pytest.raises(ValueError, match="max_request_tracks"):
        chrome_trace(result, max_request_tracks=-1)


def test_write_trace_is_valid_compact_json(tmp_path):
    result = run_scenario(scenario_from_mapping(TINY)).result
    path = write_trace(result, tmp_path / "deep" / "trace.json")
    doc = json.loads(path.read_text())
    assert doc == json.loads(json.dumps(chrome_trace(result)))
    assert ", " not in path.read_text()[:200]


def test_failing_extra_writer_leaves_nothing_behind(tmp_path):
    output = run_scenario(scenario_from_mapping(TINY))

    def broken(tmp: Path) -> None:
        (tmp / "half.json").write_text("{")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        write_run_dir(output, tmp_path / "run", extra_writers=[broken])
    assert list(tmp_path.iterdir()) == []
    # A working writer's file lands in the run directory with the standard files.
    out = write_run_dir(output, tmp_path / "run",
                        extra_writers=[lambda tmp: (tmp / "extra.txt").write_text("x")])
    assert (out / "extra.txt").read_text() == "x" and (out / "summary.json").exists()


# --------------------------------------------------------------------------- disaggregated

DISAGG = {
    "name": "tiny-disagg",
    "seed": 2,
    "model": "opt-13b",
    "hardware": "a100-80gb-sxm",
    "cost_model": {"kind": "roofline"},
    "engine": {"policy": "prefill_first"},
    "cluster": {"mode": "disaggregated", "prefill": {"instances": 1, "tp": 2},
                "decode": {"instances": 2, "tp": 1}},
    "workload": {
        "num_requests": 40,
        "arrival": {"process": "poisson", "rate": 8.0},
        "lengths": {"dist": "lognormal", "prompt_len": 300, "output_len": 40},
    },
}


@pytest.fixture(scope="module")
def disagg_dir(tmp_path_factory) -> Path:
    return _run_with_trace(tmp_path_factory.mktemp("trace_disagg"), DISAGG)


def test_disaggregated_processes_are_named_by_pool(disagg_dir):
    trace = json.loads((disagg_dir / "trace.json").read_text())
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {1: "prefill instance 0", 2: "decode instance 0 (replica 1)",
                     3: "decode instance 1 (replica 2)"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
               if e["ph"] == "M" and e["name"] == "thread_name"}
    assert threads[(2, STEP_TRACK_TID)] == "decode instance 0 (replica 1) steps"
    # Round robin: request 0 is prefilled on instance 0 and decoded on decode instance 0.
    assert threads[(1, 1)] == threads[(2, 1)] == "request 0"
    # Explicit pool sizes give the same names.
    result = run_scenario(scenario_from_mapping(DISAGG)).result
    doc = chrome_trace(result, pools={"prefill": 1, "decode": 2}, max_steps=0)
    assert {e["pid"]: e["args"]["name"] for e in doc["traceEvents"]
            if e["ph"] == "M" and e["name"] == "process_name"} == names


def test_idle_prefill_instance_does_not_shift_the_decode_numbering(tmp_path):
    # One request, two prefill instances: instance 1 never works, yet the decode instance
    # is replica 2, and the trace must say so (not "decode instance 1 (replica 2)").
    one = {**DISAGG, "cluster": {**DISAGG["cluster"], "prefill": {"instances": 2, "tp": 1}},
           "workload": {**DISAGG["workload"], "num_requests": 1}}
    trace = json.loads((_run_with_trace(tmp_path, one) / "trace.json").read_text())
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert names[1] == "prefill instance 0"
    assert "decode instance 0 (replica 2)" in names.values()
    assert not any(n.startswith("decode instance 1") for n in names.values())


def test_disaggregated_requests_have_kv_wait_and_transfer_spans(disagg_dir):
    trace = json.loads((disagg_dir / "trace.json").read_text())
    requests = _read_csv(disagg_dir / "requests.csv")
    tracks: dict[tuple[int, int], list[dict]] = defaultdict(list)
    flows: dict[int, dict[str, dict]] = defaultdict(dict)
    for e in trace["traceEvents"]:
        if e["ph"] == "X" and e["cat"] == "request":
            tracks[(e["pid"], e["tid"])].append(e)
        elif e["ph"] in ("s", "f"):
            flows[e["id"]][e["ph"]] = e
    handed = [row for row in requests if int(row["decode_replica"]) >= 0]
    assert len(handed) == len(requests) > 0
    assert len(flows) == len(handed)
    for row in handed:
        rid = int(row["request_id"])
        prefill_pid, decode_pid = int(row["replica"]) + 1, int(row["decode_replica"]) + 1
        assert prefill_pid != decode_pid
        events = sorted(tracks[(prefill_pid, rid + 1)], key=lambda e: e["ts"])
        assert [e["name"] for e in events] == ["queued", "prefill", "kv wait", "kv transfer"]
        for a, b in itertools.pairwise(events):
            assert a["ts"] + a["dur"] == pytest.approx(b["ts"], abs=2e-3)
        wait, transfer = events[2:]
        first_token = float(row["first_token_at"])
        wait_s, transfer_s = float(row["kv_transfer_wait_s"]), float(row["kv_transfer_s"])
        assert wait["ts"] == pytest.approx(first_token * US, abs=1e-3)
        assert wait["dur"] == pytest.approx(wait_s * US, abs=2e-3)
        assert transfer["dur"] == pytest.approx(transfer_s * US, abs=2e-3)
        assert transfer["args"]["kv_transfer_ms"] == pytest.approx(transfer_s * 1e3, abs=1e-6)
        assert transfer["args"]["decode_replica"] == int(row["decode_replica"])
        # Decoding sits on the decode instance, from the KV's arrival to the last token.
        (decode,) = tracks[(decode_pid, rid + 1)]
        assert decode["name"] == "decode"
        assert decode["ts"] == pytest.approx((first_token + wait_s + transfer_s) * US, abs=2e-3)
        assert decode["ts"] + decode["dur"] == pytest.approx(
            float(row["finished_at"]) * US, abs=2e-3
        )
        flow = flows[rid]
        assert flow["s"]["pid"] == prefill_pid and flow["f"]["pid"] == decode_pid
        assert flow["s"]["ts"] == transfer["ts"] and flow["f"]["ts"] == decode["ts"]


def test_colocated_trace_has_no_handoff_events(trace):
    events = trace["traceEvents"]
    assert not any(e["ph"] in ("s", "f") for e in events)
    names = {e["name"] for e in events if e["ph"] == "X" and e["cat"] == "request"}
    assert names == {"queued", "prefill", "decode"}
    assert not any("decode_replica" in e.get("args", {}) for e in events)
