"""A run as a Chrome/Perfetto trace (Trace Event Format JSON): steps and request phases.

Open `trace.json` in https://ui.perfetto.dev or chrome://tracing to scroll through a run: each
replica is a process ("replica 0") whose first track holds one complete ('X') slice per engine
step, followed by one track per request ("request 17") with its queued, prefill and decode
phases, plus a KV-occupancy counter. Timestamps are microseconds of simulated time.
`chrome_trace` is pure (records -> dict); `write_trace` writes it.

A disaggregated run names its processes by pool ("prefill instance 0", "decode instance 0
(replica 2)", the replica index being the one in steps.csv/requests.csv). A request's track on
its prefill instance holds queued, prefill, "kv wait" (for a decode slot and KV blocks, then the
link) and "kv transfer"; its track on the decode instance holds decode, joined to the transfer
by a flow arrow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simserve.engine.records import SimulationResult

__all__ = [
    "DEFAULT_MAX_REQUEST_TRACKS",
    "DEFAULT_MAX_STEPS",
    "STEP_TRACK_TID",
    "chrome_trace",
    "write_trace",
]

# Request tracks beyond this many (in arrival order) are left out so the file stays small.
DEFAULT_MAX_REQUEST_TRACKS = 2000
# Step slices beyond this many (in time order, over all replicas) are left out likewise.
DEFAULT_MAX_STEPS = 200_000
# The step track of every replica process; request tracks use tid = request id + 1.
STEP_TRACK_TID = 0
# Microsecond timestamps are rounded to the nanosecond (3 decimals) to keep the file short.
_US_DECIMALS = 3


def _us(seconds: np.ndarray | float) -> np.ndarray:
    """Seconds of simulated time -> microseconds rounded to the nanosecond."""
    return np.round(np.asarray(seconds, dtype=np.float64) * 1e6, _US_DECIMALS)


def _pid(replica: int) -> int:
    """Process id of a replica (pid 0 is avoided: some viewers treat it specially)."""
    return int(replica) + 1


def _step_name(num_prefill: int, num_decode: int) -> str:
    """"prefill 512 + decode 31", dropping an empty part."""
    parts = []
    if num_prefill:
        parts.append(f"prefill {num_prefill}")
    if num_decode or not parts:
        parts.append(f"decode {num_decode}")
    return " + ".join(parts)


def _num_prefill(result: SimulationResult, pools: Mapping[str, int] | None) -> int:
    """Prefill instances of a disaggregated run (decode instances are numbered after them):
    `pools["prefill"]` if given, else the highest prefill index that served a request, + 1."""
    if pools is not None:
        return int(pools["prefill"])
    routed = result.replica[result.replica >= 0]
    return int(routed.max()) + 1 if routed.size else 0


def _process_names(result: SimulationResult, replicas: list[int],
                   pools: Mapping[str, int] | None) -> dict[int, str]:
    """Process name of every replica index: "replica 3" when co-located; by pool when
    disaggregated ("prefill instance 1", "decode instance 0 (replica 2)")."""
    if result.decode_replica is None:
        return {r: f"replica {r}" for r in replicas}
    num_prefill = _num_prefill(result, pools)
    return {
        r: f"prefill instance {r}" if r < num_prefill
        else f"decode instance {r - num_prefill} (replica {r})"
        for r in replicas
    }


def _metadata_events(replicas: list[int], request_ids: list[int],
                     request_replica: np.ndarray, names: Mapping[int, str],
                     decode_replica: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Process/thread names and sort order, so the viewer shows "replica 0" and "request 17"."""
    events: list[dict[str, Any]] = []
    for r in replicas:
        pid = _pid(r)
        events += [
            {"ph": "M", "name": "process_name", "pid": pid, "tid": STEP_TRACK_TID,
             "args": {"name": names[r]}},
            {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": STEP_TRACK_TID,
             "args": {"sort_index": r}},
            {"ph": "M", "name": "thread_name", "pid": pid, "tid": STEP_TRACK_TID,
             "args": {"name": f"{names[r]} steps"}},
            {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": STEP_TRACK_TID,
             "args": {"sort_index": -1}},
        ]
    for rid in request_ids:
        tid = rid + 1
        homes = [int(request_replica[rid])]
        if decode_replica is not None and decode_replica[rid] >= 0:
            homes.append(int(decode_replica[rid]))
        for home in homes:
            pid = _pid(home)
            events += [
                {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                 "args": {"name": f"request {rid}"}},
                {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                 "args": {"sort_index": rid}},
            ]
    return events


def _step_events(result: SimulationResult, max_steps: int | None,
                 kv_counters: bool) -> tuple[list[dict[str, Any]], int]:
    """One 'X' slice per step (first `max_steps` by start time) and a KV counter sample at each
    step's end; returns the events and how many steps were written."""
    st = result.steps
    order = np.argsort(st.started_at, kind="stable")
    if max_steps is not None:
        order = order[:max_steps]
    ts = _us(st.started_at[order])
    dur = np.round(_us(st.started_at[order] + st.duration_s[order]) - ts, _US_DECIMALS)
    total = np.maximum(st.kv_blocks_total[order], 1)
    used_pct = np.round(100.0 * st.kv_blocks_used[order] / total, 2)
    columns = zip(
        order.tolist(), ts.tolist(), dur.tolist(), st.replica[order].tolist(),
        st.num_prefill_tokens[order].tolist(), st.num_decode_tokens[order].tolist(),
        st.num_seqs[order].tolist(), st.kv_blocks_used[order].tolist(),
        st.kv_blocks_total[order].tolist(), used_pct.tolist(),
        strict=True,
    )
    events: list[dict[str, Any]] = []
    for step, t, d, rep, pre, dec, seqs, used, blocks, pct in columns:
        pid = _pid(rep)
        events.append({
            "ph": "X", "cat": "step", "name": _step_name(pre, dec), "pid": pid,
            "tid": STEP_TRACK_TID, "ts": t, "dur": max(d, 0.0),
            "args": {"step": step, "num_prefill_tokens": pre, "num_decode_tokens": dec,
                     "num_seqs": seqs, "kv_blocks_used": used, "kv_blocks_total": blocks},
        })
        if kv_counters:
            events.append({"ph": "C", "name": "KV cache used (%)", "pid": pid,
                           "ts": round(t + d, _US_DECIMALS), "args": {"used": pct}})
    return events, int(order.size)


def _request_events(result: SimulationResult, request_ids: list[int]) -> list[dict[str, Any]]:
    """Queued, prefill and decode slices of each request, in that order on its own track.

    Phases: queued = arrival -> first scheduled; prefill = first scheduled -> first token
    (chunks, and any wait between them); decode = first token -> last token. A phase whose
    end is unknown (never scheduled, no token, unfinished) is left out. Recompute preemptions
    leave no timestamps in the records, so they are counted in `args` (num_preemptions) and
    show as long gaps inside decode rather than as slices of their own.

    Disaggregated: after the prefill, "kv wait" (first token -> transfer start) and "kv
    transfer" follow on the prefill instance's track, and decode (transfer end -> last token)
    sits on the decode instance's track, with a flow arrow from the transfer to it.
    """
    offsets = result.token_offsets
    n_tokens = np.diff(offsets)
    disaggregated = result.decode_replica is not None
    events: list[dict[str, Any]] = []
    for rid in request_ids:
        lo, hi = int(offsets[rid]), int(offsets[rid + 1])
        arrived = float(result.arrived_at[rid])
        sched = float(result.first_scheduled_at[rid])
        first = float(result.token_times_s[lo]) if hi > lo else float("nan")
        finish = float(result.finished_at[rid])
        last = float(result.token_times_s[hi - 1]) if hi > lo else float("nan")
        end = finish if np.isfinite(finish) else last
        args = {
            "request_id": rid,
            "prompt_len": int(result.prompt_len[rid]),
            "output_len": int(result.output_len[rid]),
            "num_output_tokens": int(n_tokens[rid]),
            "num_preemptions": int(result.num_preemptions[rid]),
        }
        if np.isfinite(first):
            args["ttft_ms"] = round((first - arrived) * 1e3, 6)
        if np.isfinite(finish):
            args["e2el_ms"] = round((finish - arrived) * 1e3, 6)
        pid, tid = _pid(int(result.replica[rid])), rid + 1
        phases = [("queued", arrived, sched, pid), ("prefill", sched, first, pid)]
        decode_pid = pid
        handoff = None
        flow_start = 0.0
        if disaggregated:
            assert result.kv_transfer_s is not None and result.kv_transfer_wait_s is not None
            assert result.decode_replica is not None
            wait_s = float(result.kv_transfer_wait_s[rid])
            transfer_s = float(result.kv_transfer_s[rid])
            args["decode_replica"] = int(result.decode_replica[rid])
            if np.isfinite(transfer_s) and result.decode_replica[rid] >= 0:
                args["kv_transfer_wait_ms"] = round(wait_s * 1e3, 6)
                args["kv_transfer_ms"] = round(transfer_s * 1e3, 6)
                start = first + wait_s
                handoff = start + transfer_s
                decode_pid = _pid(int(result.decode_replica[rid]))
                phases += [("kv wait", first, start, pid), ("kv transfer", start, handoff, pid)]
        phases.append(("decode", first if handoff is None else handoff, end, decode_pid))
        for name, a, b, on in phases:
            if not (np.isfinite(a) and np.isfinite(b)):
                break
            ts, te = (float(v) for v in _us(np.array([a, b])))
            events.append({"ph": "X", "cat": "request", "name": name, "pid": on, "tid": tid,
                           "ts": ts, "dur": max(round(te - ts, _US_DECIMALS), 0.0),
                           "args": args})
            if name == "kv transfer":
                flow_start = ts
            elif name == "decode" and handoff is not None:
                # An arrow from the transfer (prefill side) to the decode slice.
                flow = {"cat": "kv", "name": "KV handoff", "id": rid, "tid": tid}
                events += [{"ph": "s", "pid": pid, "ts": flow_start, **flow},
                           {"ph": "f", "bp": "e", "pid": on, "ts": ts, **flow}]
    return events


def chrome_trace(
    result: SimulationResult,
    *,
    max_request_tracks: int = DEFAULT_MAX_REQUEST_TRACKS,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    kv_counters: bool = True,
    metadata: Mapping[str, object] | None = None,
    pools: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The run as a Trace Event Format document (a JSON-ready dict), for Perfetto/chrome://tracing.

    Request tracks are the first `max_request_tracks` routed requests in arrival order
    (rejected requests have none); steps the first `max_steps` in time order; both caps, and
    what was left out, are stated in `otherData`, with any `metadata` given (scenario, policy).
    `pools` ({"prefill": P, "decode": D} instances) numbers a disaggregated run's instances
    within their pool; without it the prefill pool's size is read off the records.
    """
    if max_request_tracks < 0:
        raise ValueError(f"max_request_tracks must be >= 0, got {max_request_tracks}")
    routed = np.flatnonzero(result.replica >= 0)
    request_ids = routed[:max_request_tracks].tolist()
    replicas = sorted(
        set(np.unique(result.steps.replica).tolist()) | set(np.unique(result.replica[routed])
                                                            .tolist())
    )
    step_events, num_steps_written = _step_events(result, max_steps, kv_counters)
    other: dict[str, object] = dict(metadata or {})
    other.update({
        "generator": "simserve",
        "time_unit": "microseconds of simulated time",
        "num_requests": result.num_requests,
        "num_rejected": int(result.num_requests - routed.size),
        "request_tracks": len(request_ids),
        "request_tracks_note": (
            f"first {len(request_ids)} of {routed.size} routed requests (arrival order)"
            + (f"; capped at max_request_tracks={max_request_tracks}"
               if routed.size > max_request_tracks else "")
        ),
        "num_steps": len(result.steps),
        "step_slices": num_steps_written,
        "step_slices_note": (
            f"first {num_steps_written} of {len(result.steps)} steps (time order)"
            + (f"; capped at max_steps={max_steps}"
               if num_steps_written < len(result.steps) else "")
        ),
    })
    if result.decode_replica is not None:
        replicas = sorted(set(replicas) | set(
            np.unique(result.decode_replica[routed]).tolist()) - {-1})
    names = _process_names(result, replicas, pools)
    events = _metadata_events(replicas, request_ids, result.replica, names,
                              result.decode_replica)
    events += step_events
    events += _request_events(result, request_ids)
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def write_trace(
    result: SimulationResult,
    path: str | Path,
    *,
    max_request_tracks: int = DEFAULT_MAX_REQUEST_TRACKS,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    kv_counters: bool = True,
    metadata: Mapping[str, object] | None = None,
    pools: Mapping[str, int] | None = None,
) -> Path:
    """Write `chrome_trace(result, ...)` as compact JSON at `path`; returns the path."""
    doc = chrome_trace(result, max_request_tracks=max_request_tracks, max_steps=max_steps,
                       kv_counters=kv_counters, metadata=metadata, pools=pools)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    return out
