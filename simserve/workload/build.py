"""Build the requests of a run, before the run, from a `WorkloadConfig` and one generator per
purpose (arrivals, lengths, classes, prefix groups, sessions)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from simserve.config import MetricsConfig, WorkloadConfig
from simserve.errors import InputError, InputNotice
from simserve.workload.arrivals import replay_arrivals, sample_arrivals
from simserve.workload.classes import assign_classes, ttft_budgets_s
from simserve.workload.content import SharedContent
from simserve.workload.lengths import sample_lengths, sample_trace_rows
from simserve.workload.mooncake import HASH_BLOCK_TOKENS
from simserve.workload.prefixes import draw_groups, lengthen_prompts
from simserve.workload.sessions import SessionPlan, plan_sessions
from simserve.workload.traces import Trace, load_trace

__all__ = ["Workload", "build_workload"]


@dataclass(frozen=True, eq=False)
class Workload:
    """The requests of one run as read-only parallel arrays, checked on construction."""

    arrived_at: np.ndarray  # float64 s, non-decreasing, first at 0.0; all NaN for closed_loop
    prompt_len: np.ndarray  # int64 >= 1
    output_len: np.ndarray  # int64 >= 1
    concurrency: int | None = None  # closed_loop: number of clients (the engine issues arrivals)
    # Queue-order inputs, None when unused: a priority (lower is served first) and the TTFT
    # budget (s) after arrival that the deadline order sorts by; and each request's class
    # (an index into workload.classes) for the per-class report.
    priority: np.ndarray | None = None  # int64
    ttft_budget_s: np.ndarray | None = None  # float64 > 0
    class_id: np.ndarray | None = None  # int64 >= 0
    # What the requests' token sequences share (prefix groups, conversation streams, block
    # ids), for prefix caching; None: nothing is shared.
    content: SharedContent | None = None
    # Multi-turn sessions: `after[i]` is the earlier request whose end (finished, rejected or
    # timed out) sends request i `think_s[i]` seconds later (its arrival is then NaN here and
    # set by the engine); -1 for requests with their own arrival time. None: no sessions.
    after: np.ndarray | None = None  # int64
    think_s: np.ndarray | None = None  # float64 >= 0
    # Clients give up on a request not finished this long after it was sent (None: never).
    client_timeout_s: float | None = None

    def __post_init__(self) -> None:
        # Copy so that freezing the arrays never touches a caller's array.
        arrived_at = np.array(self.arrived_at, dtype=np.float64)
        prompt_len = np.array(self.prompt_len, dtype=np.int64)
        output_len = np.array(self.output_len, dtype=np.int64)
        for array in (arrived_at, prompt_len, output_len):
            if array.ndim != 1:
                raise ValueError("workload arrays must be one-dimensional")
            array.setflags(write=False)
        if not arrived_at.size == prompt_len.size == output_len.size:
            raise ValueError(
                f"workload arrays differ in length: arrived_at {arrived_at.size}, "
                f"prompt_len {prompt_len.size}, output_len {output_len.size}"
            )
        if np.any(prompt_len < 1) or np.any(output_len < 1):
            raise ValueError("prompt and output lengths must be >= 1")
        if self.concurrency is not None:
            if self.concurrency < 1:
                raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
            if not np.all(np.isnan(arrived_at)):
                raise ValueError("a closed-loop workload (concurrency set) has NaN arrivals")
        elif arrived_at.size:
            after = None if self.after is None else np.asarray(self.after)
            if after is not None and after.shape != arrived_at.shape:
                raise ValueError("after and think_s need one value per request")
            own = arrived_at if after is None else arrived_at[after < 0]
            if not np.all(np.isfinite(own)):
                raise ValueError("an open-loop workload needs finite arrival times")
            if own.size and (own[0] != 0.0 or np.any(np.diff(own) < 0)):
                raise ValueError("arrival times must start at 0.0 and never decrease")
        object.__setattr__(self, "arrived_at", arrived_at)
        object.__setattr__(self, "prompt_len", prompt_len)
        object.__setattr__(self, "output_len", output_len)
        for name, dtype in (("priority", np.int64), ("ttft_budget_s", np.float64),
                            ("class_id", np.int64)):
            value = getattr(self, name)
            if value is None:
                continue
            value = np.array(value, dtype=dtype)
            if value.shape != prompt_len.shape:
                raise ValueError(f"{name} has {value.size} values for {prompt_len.size} requests")
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        if self.ttft_budget_s is not None and not np.all(self.ttft_budget_s > 0):
            raise ValueError("TTFT budgets must be > 0")
        if self.class_id is not None and np.any(self.class_id < 0):
            raise ValueError("class ids must be >= 0")
        self._check_sessions(arrived_at)
        if self.client_timeout_s is not None and not self.client_timeout_s > 0:
            raise ValueError("client_timeout_s must be > 0")
        if self.content is not None:
            self.content.check(prompt_len.size)

    def _check_sessions(self, arrived_at: np.ndarray) -> None:
        if (self.after is None) != (self.think_s is None):
            raise ValueError("after and think_s come together")
        if self.after is None:
            return
        after = np.array(self.after, dtype=np.int64)
        think_s = np.array(self.think_s, dtype=np.float64)
        n = arrived_at.size
        if after.shape != (n,) or think_s.shape != (n,):
            raise ValueError("after and think_s need one value per request")
        if self.concurrency is not None:
            raise ValueError("sessions are open-loop across sessions: no concurrency")
        if np.any(after >= np.arange(n)) or np.any(after < -1):
            raise ValueError("a request can only follow an earlier one (after[i] < i)")
        if not np.array_equal(np.isnan(arrived_at), after >= 0):
            raise ValueError("exactly the requests that follow another have no arrival time")
        if not np.all(np.isfinite(think_s) & (think_s >= 0)):
            raise ValueError("think times must be finite and >= 0")
        for value in (after, think_s):
            value.setflags(write=False)
        object.__setattr__(self, "after", after)
        object.__setattr__(self, "think_s", think_s)

    def __len__(self) -> int:
        return int(self.prompt_len.size)


def build_workload(
    config: WorkloadConfig,
    arrival_rng: np.random.Generator,
    length_rng: np.random.Generator,
    class_rng: np.random.Generator | None = None,
    metrics: MetricsConfig | None = None,
    *,
    prefix_rng: np.random.Generator | None = None,
    session_rng: np.random.Generator | None = None,
    max_model_len: int | None = None,
) -> Workload:
    """All requests of a run, drawing arrivals only from `arrival_rng`, lengths only from
    `length_rng`, classes only from `class_rng`, prefix groups only from `prefix_rng` and
    session turn counts and think times only from `session_rng`, so the same generator states
    give identical arrays (common random numbers). Each request's TTFT budget (what the
    deadline queue order sorts by) follows from its class and `metrics`
    (`classes.ttft_budgets_s`).

    When both arrivals and lengths come from the trace, request i is trace row i (sorted by
    arrival), so lengths stay paired with their timestamps and the row's block ids and session
    (`Trace.content`) go with it; trace lengths with synthetic arrivals are rows sampled with
    `length_rng`. With `sessions`, the arrival process gives each session's start, and the
    lengths each turn's new message and output; sessions whose next turn would not fit
    `max_model_len` end early (`sessions.plan_sessions`). Classes, priorities and prefix
    groups are then drawn per session.
    """
    arrival, lengths, sessions = config.arrival, config.lengths, config.sessions
    trace = _load_config_trace(config)
    if trace is not None:
        warnings.warn(InputNotice(trace.describe()), stacklevel=2)
    num_requests = config.num_requests
    if num_requests is None:  # the whole trace (WorkloadConfig allows it only for replays)
        assert trace is not None
        num_requests = len(trace)
    if config.classes and class_rng is None:
        raise ValueError("workload classes are drawn from a class_rng; none was given")
    if config.prefix is not None and prefix_rng is None:
        raise ValueError("prefix groups are drawn from a prefix_rng; none was given")
    if sessions is not None and session_rng is None:
        raise ValueError("sessions are drawn from a session_rng; none was given")

    # Each request's own lengths: with sessions, its new message and its output.
    rows: np.ndarray | slice | None = None
    if lengths.dist == "trace":
        assert trace is not None
        paired = arrival.process == "trace" and sessions is None
        rows = slice(0, num_requests) if paired else sample_trace_rows(
            trace, num_requests, length_rng)
        message_len = trace.prompt_len[rows].astype(np.int64)
        output_len = trace.output_len[rows].astype(np.int64)
    else:
        message_len, output_len = sample_lengths(lengths, num_requests, length_rng)
    shared_len = config.prefix.shared_len if config.prefix is not None else 0
    plan = None
    if sessions is not None:
        assert session_rng is not None
        plan = plan_sessions(sessions, message_len, output_len, session_rng,
                             min_first_prompt=shared_len + 1, max_model_len=max_model_len)
        prompt_len = plan.prompt_len
    elif config.prefix is not None:
        prompt_len = lengthen_prompts(message_len, shared_len)
    else:
        prompt_len = message_len
    # Arrivals, classes and prefix groups are per session with sessions, else per request.
    num_units = plan.num_sessions if plan is not None else num_requests

    if arrival.process == "trace":
        assert trace is not None
        if trace.arrival_s is None:
            raise InputError(
                f"arrival.process is 'trace' but the trace {trace.source} has no arrival column "
                "(arrival_s, arrived_at or TIMESTAMP)",
                field="workload.arrival.process",
            )
        unit_arrived_at = replay_arrivals(
            trace.arrival_s, num_units, arrival.rate, source=str(trace.source)
        )
    else:
        unit_arrived_at = sample_arrivals(arrival, num_units, arrival_rng)

    trace_priority = None
    if trace is not None and trace.priority is not None:
        if rows is not None:
            trace_priority = trace.priority[rows]
            if plan is not None:  # a session keeps its first turn's priority
                trace_priority = trace_priority[plan.first]
        else:
            trace_priority = trace.priority[:num_units]  # replayed arrivals, own lengths
    priority, class_id = assign_classes(
        config.classes, num_units, class_rng if class_rng is not None else arrival_rng,
        trace_priority, str(trace.source) if trace is not None else None)

    arrived_at = unit_arrived_at
    after = think_s = None
    if plan is not None:
        arrived_at = np.full(num_requests, np.nan)
        arrived_at[plan.first] = unit_arrived_at
        after, think_s = plan.after, plan.think_s
        priority = priority[plan.session] if priority is not None else None
        class_id = class_id[plan.session] if class_id is not None else None
    content = _shared_content(config, trace, rows, plan, num_requests, prefix_rng)
    metrics = metrics or MetricsConfig()
    budget_s = ttft_budgets_s(prompt_len, class_id, config.classes, metrics.slo,
                              metrics.fluidity)
    concurrency = arrival.concurrency if arrival.process == "closed_loop" else None
    return Workload(arrived_at, prompt_len, output_len, concurrency=concurrency,
                    priority=priority, ttft_budget_s=budget_s, class_id=class_id,
                    content=content, after=after, think_s=think_s,
                    client_timeout_s=config.client_timeout_s)


def _shared_content(
    config: WorkloadConfig,
    trace: Trace | None,
    rows: np.ndarray | slice | None,
    plan: SessionPlan | None,
    num_requests: int,
    prefix_rng: np.random.Generator | None,
) -> SharedContent | None:
    """What the requests share: prefix groups (per session with sessions), conversation
    streams, and the block ids and sessions of the trace rows the requests are (a request of
    synthetic sessions is no trace row: its content is the session's). None: nothing."""
    from_trace = None
    if trace is not None and rows is not None and plan is None:
        from_trace = trace.content(rows)
    hash_offsets = hash_ids = None
    if from_trace is not None and from_trace.hash_ids is not None:
        hash_offsets, hash_ids = from_trace.hash_offsets, from_trace.hash_ids
    group = group_len = None
    if config.prefix is not None:
        if hash_ids is not None:
            assert trace is not None
            raise InputError(
                f"the trace {trace.source} names its prompts' blocks ({trace.format} block ids), "
                "which already say what is shared: no prefix groups on top of them",
                field="workload.prefix",
            )
        assert prefix_rng is not None
        if plan is not None:
            group = draw_groups(config.prefix, plan.num_sessions, prefix_rng)[plan.session]
        else:
            group = draw_groups(config.prefix, num_requests, prefix_rng)
        group_len = np.full(num_requests, config.prefix.shared_len, dtype=np.int64)
    stream = plan.stream if plan is not None else None
    if stream is None and from_trace is not None:
        stream = from_trace.stream
    if group is None and stream is None and hash_ids is None:
        return None
    block_tokens = trace.hash_block_tokens if trace is not None else HASH_BLOCK_TOKENS
    return SharedContent(group=group, group_len=group_len, stream=stream,
                         hash_offsets=hash_offsets, hash_ids=hash_ids,
                         hash_block_tokens=block_tokens)


def _load_config_trace(config: WorkloadConfig) -> Trace | None:
    """The trace file the config names, loaded once, or None when nothing uses it.

    A replay of the first `num_requests` rows reads only those rows (sessions replay at most
    as many session starts); lengths sampled from the trace need all of them.
    """
    if config.arrival.process != "trace" and config.lengths.dist != "trace":
        return None
    assert config.trace is not None  # WorkloadConfig requires it for these settings
    samples_rows = config.lengths.dist == "trace" and (
        config.arrival.process != "trace" or config.sessions is not None)
    max_rows = None if samples_rows else config.num_requests
    return load_trace(config.trace, max_rows=max_rows)
