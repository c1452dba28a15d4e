"""The SimPy model: one process per engine (one event per step) plus an arrival process.

An engine loops `plan = policy.schedule(state, now)`, waits for the step's time, then
`state.finish(...)`; an idle engine sleeps on an event that an arrival triggers (no polling).

Clusters are pools of instances. A co-located cluster is one pool of replicas doing prefill and
decode, or one pool per replica group (unlike GPUs or settings) behind one router. A
disaggregated cluster (DistServe, Splitwise) has a prefill pool whose instances hand
each request's KV cache over a link to a decode pool.

Pipeline parallelism. An instance of `pp` stages runs `pp` virtual engines, each with its own
queues, batch and 1/pp of the KV blocks (vLLM v0's `virtual_engine` schedulers; DistServe's
decode scheduler keeps pp disjoint batches likewise), so at most pp micro-batches are in flight,
of whatever sizes the engines' own queues give them. A virtual engine's step is one micro-batch:
its engine CPU work first (on the instance's one engine CPU, shared by its virtual engines,
FIFO), then each stage's GPU time in turn with an activation send between stages; a stage
takes the next micro-batch as soon as it frees. The engine's next step starts when its
micro-batch leaves the last stage, so with fewer runnable micro-batches than stages the stages
idle (the bubble). `costmodel.pipeline` says how a step's time divides over CPU and stages.

Fast-forward. When a step is a plain decode of every running request and nothing can change the
batch for a while, the engine prices the next K identical steps at once and waits for them as
one SimPy event: K is bounded by the first request to finish (its step is the run's last), by
the KV blocks the run needs, and by the next event anywhere in the simulation (`env.peek()`:
no arrival, transfer or other engine acts before then, so no step after the first would have
been planned differently, and nothing reads this engine's state while the run's steps before
the last are in flight). Records are the same as stepping one by one (a test compares both).
"""

from __future__ import annotations

import dataclasses
import gc
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import simpy

from simserve.costmodel.base import BatchShape, DecodeRun, decode_run_fn, decode_step_fn
from simserve.costmodel.pipeline import PipelineStep, pipeline_step
from simserve.engine.decodes import CounterDecodes, VerifyDecodes
from simserve.engine.offload import CpuTier
from simserve.engine.policies import Policy
from simserve.engine.prefix_cache import PrefixCache
from simserve.engine.records import SimulationResult, StepRecords, StepTokenTimes
from simserve.engine.router import route
from simserve.engine.setup import EngineLimits, EngineSetup, PoolSetup
from simserve.engine.speculative import AcceptanceSampler
from simserve.engine.state import ReplicaState, RequestTable
from simserve.engine.swap import SwapSpace
from simserve.workload import Workload

__all__ = ["simulate"]

REJECT_MAX_MODEL_LEN = 1
REJECT_KV_CAPACITY = 2
REJECT_BUDGET = 3

# Longest run of steps priced at once by the fast-forward (bounds its temporary arrays).
MAX_RUN_STEPS = 4096

# NOTE: vLLM's block manager keeps 1% of the blocks free when admitting a sequence
# (`watermark=0.01`) so running requests can grow without an immediate preemption; a decode
# instance admits KV transfers under the same rule.
ADMISSION_WATERMARK = 0.01

# Runs of at least this many requests end with a full garbage collection (see `simulate`).
COLLECT_AFTER_REQUESTS = 50_000


# SimPy processes events of one instant by priority, then creation order; engine steps end
# after everything else of their instant.
STEP_END = simpy.events.NORMAL + 1


class _StepEnd(simpy.events.Timeout):
    """The end of an engine step (or of a fast-forwarded run of steps).

    NOTE: the rule for simultaneous events: a request that arrives, or a KV transfer that
    lands, at the instant a step ends is seen by the plan made at that instant, whatever order
    the events were created in, because step ends are processed last (priority `STEP_END`).
    """

    def __init__(self, env: simpy.Environment, delay: float) -> None:
        simpy.events.Event.__init__(self, env)
        self._delay = delay
        self._ok = True
        self._value = None
        env.schedule(self, STEP_END, delay)


class _Run(NamedTuple):
    """A fast-forwarded run of plain decode steps: their start times and durations, when the
    last ends, the first step's decode KV tokens, and the batch size."""

    starts: list[float]
    durations: list[float]
    end: float
    first_kv: int
    num_seqs: int


class _Instance:
    """One instance: its virtual engines' SimPy processes and its pipeline stages."""

    def __init__(
        self,
        env: simpy.Environment,
        states: list[ReplicaState],
        pool: PoolSetup,
        policy_factory: Callable[[], Policy],
        on_step_done: Callable[[ReplicaState, int], None] | None,
        fast_forward: bool,
    ) -> None:
        self.env = env
        self.states = states
        self.cost_model = pool.cost_model
        self.on_step_done = on_step_done
        self.fast_forward = fast_forward
        # The pipeline's stages and engine CPU (None without pipeline parallelism).
        self.pipeline = _Pipeline(pool.pp) if pool.pp > 1 else None
        self.stage_send_s = pool.stage_send_s
        # KV transfers leaving this instance queue on its egress link, one at a time.
        self.link = simpy.Resource(env, 1)
        self.pending: dict[int, deque[tuple[int, int, ReplicaState, int]]] = {
            id(st): deque() for st in states
        }
        self.wakeups: dict[int, simpy.Event | None] = {id(st): None for st in states}
        self.num_events = 0  # step events waited for (a fast-forwarded run is one)
        self._decode_step_fns: dict[int, Callable[[int], float]] = {}
        self._decode_runs: dict[int, DecodeRun] = {}
        for state in states:
            env.process(self.run(state, policy_factory()))

    # ---------------------------------------------------------------- views for routers

    @property
    def num_outstanding(self) -> int:
        return sum(st.num_outstanding + len(self.pending[id(st)]) for st in self.states)

    @property
    def free_blocks(self) -> int:
        return sum(st.free_blocks for st in self.states)

    @property
    def num_blocks(self) -> int:
        return sum(st.num_blocks for st in self.states)

    def cached_tokens(self, request_id: int) -> int:
        """Prompt tokens of a new request the instance's prefix caches hold (its best engine)."""
        return max(st.cached_tokens(request_id) for st in self.states)

    def pick_engine(self) -> ReplicaState:
        """vLLM v0 adds a request to the virtual engine with the fewest unfinished requests."""
        if len(self.states) == 1:
            return self.states[0]
        return min(self.states, key=lambda st: st.num_outstanding + len(self.pending[id(st)]))

    def notify(self, state: ReplicaState) -> None:
        wakeup = self.wakeups[id(state)]
        if wakeup is not None and not wakeup.triggered:
            wakeup.succeed()

    # ---------------------------------------------------------------- the engine loop

    def run(self, state: ReplicaState, policy: Policy):
        env, key = self.env, id(state)
        schedule, step_time = policy.schedule, self.cost_model.step_time
        begin, finish, on_step_done = state.begin, state.finish, self.on_step_done
        # NOTE: only a policy that declares it plans identical decode steps while nothing
        # changes may have them priced as a run.
        fast_forward = self.fast_forward and policy.repeats_decode_plans
        plain_decode_run = state.plain_decode_run
        pipeline, cost_model = self.pipeline, self.cost_model
        deadlines = state.deadlines
        while True:
            if deadlines and deadlines[0][0] <= env.now:
                cancelled = state.cancel_expired(env.now)
                if cancelled and on_step_done is not None:
                    on_step_done(state, cancelled)
            if state.loading:
                state.land_loads(env.now)
            if state.has_work():
                now = env.now
                plan = schedule(state, now)
                if not plan.is_empty:
                    if fast_forward and plain_decode_run(plan):
                        run = self._plan_run(state, now)
                        if run is not None:
                            yield from self._run_steps(state, run)
                            continue
                    shape = begin(plan, now)
                    if state.new_loads:
                        self._wake_after_loads(state)
                        if shape.num_tokens == 0 and not plan.preempt:
                            continue  # every admitted request waits for its KV load
                    # NOTE: swap copies run before the step's forward pass (vLLM v0's worker);
                    # with pipeline stages, each stage copies its own layers' blocks.
                    if pipeline is None:
                        duration = step_time(shape) + state.copy_s
                    else:
                        step = pipeline_step(cost_model, shape, pipeline.pp)
                        if state.copy_s:
                            copy_s = state.copy_s / pipeline.pp
                            step = step._replace(stage_s=tuple(s + copy_s for s in step.stage_s))
                        leave = pipeline.through(now, step, self._send_s(shape.num_tokens))
                        duration = leave - now
                    self.num_events += 1
                    yield _StepEnd(env, duration)
                    finished = finish(plan, shape, now, duration)
                    if on_step_done is not None:
                        on_step_done(state, finished)
                    continue
                if not state.waits_on_transfers():
                    raise AssertionError(
                        f"replica {state.index}: policy {policy.name} scheduled nothing with "
                        f"{len(state.waiting)} waiting and {state.num_running} running"
                    )
            # Idle, or blocked until a KV transfer frees or brings blocks.
            self.wakeups[key] = env.event()
            yield self.wakeups[key]
            self.wakeups[key] = None

    def _wake_after_loads(self, state: ReplicaState) -> None:
        """Wake the engine when each KV load `begin` started ends (it may be idle then)."""
        env = self.env
        for at in state.new_loads:
            env.timeout(at - env.now).callbacks.append(lambda _event: self.notify(state))
        state.new_loads.clear()

    def _plan_run(self, state: ReplicaState, now: float) -> _Run | None:
        """The fast-forwarded run starting now, or None when fewer than two steps qualify
        (see the module docstring)."""
        # NOTE: a run stops at the next client timeout too, which is handled between steps.
        horizon = min(self.env.peek(), state.next_deadline())
        if horizon <= now:
            return None
        k = state.max_run_ticks(MAX_RUN_STEPS)
        if k < 2:
            return None
        m = state.num_decoding
        first = state.decodes.kv_sum + m
        if self.pipeline is not None:
            step_s = self._decode_step_fns.get(m)
            if step_s is None:
                step_s = self._decode_step_fns[m] = decode_step_fn(self.cost_model, m)
            # NOTE: a micro-batch takes at least the step's time on one GPU (its parts, with
            # the per-stage work repeated), so when that ends past the horizon no second step
            # starts before it: skip pricing it through the stages (a run refused here is
            # stepped instead, with the same records).
            if now + step_s(first) >= horizon:
                return None
            if horizon != float("inf"):
                # Steps only get longer as contexts grow, so at most this many start before
                # the horizon (min before int: a horizon 1e308 s away makes the quotient
                # infinite).
                k = min(k, int(min((horizon - now) / step_s(first), k)) + 2)
            starts, durations = self._stage_run(self.pipeline, now, horizon, k, first, m)
        else:
            run_fn = self._decode_runs.get(m)
            if run_fn is None:
                run_fn = self._decode_runs[m] = decode_run_fn(self.cost_model, m)
            starts, durations = run_fn(now, first, k, horizon)
        # The run must end at a time that one timeout from now reaches exactly.
        k = len(durations)
        while k >= 2 and not _reachable(now, starts[k]):
            k -= 1
        if k < 2:
            return None
        return _Run(starts[:k], durations[:k], starts[k], first, m)

    def _stage_run(self, pipeline: _Pipeline, now: float, horizon: float, k: int, first: int,
                   m: int) -> tuple[list[float], list[float]]:
        """`_plan_run`'s steps through the pipeline: each step of this virtual engine starts
        when its previous micro-batch leaves the last stage, and reserves the engine CPU and
        the stages as it would step by step (priced from the same shape, so the same floats);
        the pipeline's state after each step is kept in `self._stage_after` until the run's
        length is settled."""
        saved = pipeline.save()
        send_s = self._send_s(m)
        starts, durations = [now], []
        after: list[tuple[float, list[float]]] = []
        t, kv = now, first
        for _ in range(k):
            if durations and t >= horizon:
                break
            step = pipeline_step(self.cost_model, BatchShape(0, 0, 0.0, 0, m, m, kv),
                                 pipeline.pp)
            duration = pipeline.through(t, step, send_s) - t
            durations.append(duration)
            after.append(pipeline.save())
            t = t + duration
            starts.append(t)
            kv += m
        pipeline.restore(saved)
        self._stage_after = after
        return starts, durations

    def _run_steps(self, state: ReplicaState, run: _Run):
        """Wait for a fast-forwarded run as one event, then log its steps."""
        k = len(run.durations)
        if self.pipeline is not None:
            self.pipeline.restore(self._stage_after[k - 1])
        start = state.begin_run(k)
        # NOTE: SimPy sets the clock to now + delay; `_plan_run` keeps only runs whose end that
        # sum reaches exactly, so records match stepping one by one bit for bit.
        self.num_events += 1
        yield _StepEnd(self.env, run.end - run.starts[0])
        finished = state.finish_run(run.num_seqs, run.starts, run.durations, run.first_kv, start)
        if self.on_step_done is not None:
            self.on_step_done(state, finished)

    def _send_s(self, num_tokens: int) -> float:
        return self.stage_send_s(num_tokens) if self.stage_send_s is not None else 0.0


def _reachable(now: float, end: float) -> bool:
    """Whether SimPy's clock lands exactly on `end` after a timeout of `end - now` (always when
    now <= end <= 2 now, by Sterbenz's lemma; early in a run, not always)."""
    return now + (end - now) == end


class _Pipeline:
    """The stages of a pipeline-parallel instance and its one engine CPU: when each next
    frees.

    Both are reserved in the order micro-batches start, which is the order a FIFO queue at
    each would serve them (a micro-batch cannot overtake the one ahead: it starts each stage
    after that one finished it), so one timeout per step suffices.
    """

    def __init__(self, pp: int) -> None:
        self.pp = pp
        self.host_free_at = 0.0
        self.stage_free_at = [0.0] * pp

    def through(self, now: float, step: PipelineStep, send_s: float) -> float:
        """When a micro-batch whose engine starts it at `now` leaves the last stage (the
        reservations updated): its CPU work once the engine CPU frees, then each stage once
        that stage frees, with `send_s` of activations between stages."""
        ready = max(now, self.host_free_at) + step.host_s
        self.host_free_at = ready
        free_at = self.stage_free_at
        for i, stage_s in enumerate(step.stage_s):
            if i:
                ready += send_s
            ready = max(ready, free_at[i]) + stage_s
            free_at[i] = ready
        return ready

    def save(self) -> tuple[float, list[float]]:
        return self.host_free_at, list(self.stage_free_at)

    def restore(self, saved: tuple[float, list[float]]) -> None:
        self.host_free_at = saved[0]
        self.stage_free_at[:] = saved[1]


class _Cluster:
    """Arrivals, routing, rejections and (disaggregated) KV handoff over the pools."""

    def __init__(
        self,
        workload: Workload,
        setup: EngineSetup,
        *,
        acceptance_rng: np.random.Generator | None = None,
        fast_forward: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        pools = setup.pools
        kv_transfer_s = setup.kv_transfer_s
        speculative = setup.speculation
        n = len(workload)
        self.n = n
        arrived_at = workload.arrived_at.astype(np.float64).copy()
        self.closed_loop = workload.concurrency is not None
        if self.closed_loop:
            arrived_at[:] = np.nan
        self.arrived_at = arrived_at
        self.concurrency = workload.concurrency
        # Multi-turn sessions: the next turns of each request, sent `think_s` after it ends.
        self.next_turns: dict[int, list[int]] = {}
        self.think_s = workload.think_s
        self.client_timeout_s = workload.client_timeout_s
        if workload.after is not None:
            for rid in np.flatnonzero(workload.after >= 0).tolist():
                self.next_turns.setdefault(int(workload.after[rid]), []).append(rid)
        self.open_loop = (np.flatnonzero(workload.after < 0).tolist()
                          if workload.after is not None else None)
        self.requests = RequestTable(workload.prompt_len, workload.output_len, arrived_at,
                                     workload.priority, workload.ttft_budget_s)
        self.env = simpy.Environment()
        self.pools = list(pools)
        self.disaggregated = setup.disaggregated
        self.kv_transfer_s = kv_transfer_s
        self.k = speculative.num_speculative_tokens if speculative is not None else 0
        sampler = None
        if speculative is not None:
            rng = acceptance_rng if acceptance_rng is not None else np.random.default_rng(0)
            sampler = AcceptanceSampler.create(speculative.acceptance, self.k, rng, n)
        # Instances of the pools a request may go to (routed among only), where not all.
        self._eligible: dict[int, list[int]] = {}
        self._rejection = self._rejections(workload)
        self.next_request = 0
        self.routed = [0] * len(self.pools)
        # Progress: `progress(requests sent so far)` about every 1% of the requests.
        self.progress = progress
        self.num_sent = 0
        self._report_every = max(1, n // 100)
        if self.disaggregated:
            self.transfer_started_at = np.full(n, np.nan)
            self.transfer_done_at = np.full(n, np.nan)
            self.decode_replica = np.full(n, -1, dtype=np.int32)
        self.instances: list[list[_Instance]] = []
        index = 0
        engine_id = 0
        for p, pool in enumerate(self.pools):
            members = []
            for _ in range(pool.instances):
                states = [
                    ReplicaState(
                        index,
                        self.requests,
                        engine_id=engine_id + stage,
                        num_blocks=pool.blocks_per_engine,
                        block_size=pool.limits.block_size,
                        max_num_seqs=pool.limits.max_num_seqs,
                        max_num_batched_tokens=pool.limits.max_num_batched_tokens,
                        reserve_full=pool.policy.reserves_full_kv,
                        num_speculative_tokens=self.k,
                        speculate_max_batch=(
                            speculative.disable_above_batch if speculative else None
                        ),
                        acceptance=sampler,
                        queue=pool.queue,
                        prefix_cache=PrefixCache(
                            workload.content, pool.limits.block_size,
                            self.requests.prompt_len, self.requests.output_len,
                            cpu=CpuTier(pool.offload_blocks // pool.pp)
                            if pool.offload_blocks else None,
                        ) if pool.prefix_caching else None,
                        load_s=pool.host_copy_s,
                        swap=SwapSpace(pool.swap_blocks // pool.pp, pool.host_copy_s,
                                       pool.kv_block_bytes)
                        if pool.swap_blocks and pool.host_copy_s is not None else None,
                    )
                    for stage in range(pool.pp)
                ]
                engine_id += pool.pp
                if self.disaggregated and p == 0:
                    for st in states:
                        st.handoff = self._handoff
                if self.next_turns:
                    for st in states:
                        st.ended = []
                members.append(
                    _Instance(
                        self.env,
                        states,
                        pool,
                        pool.policy,
                        # Finishes matter to the cluster only with closed-loop clients (a
                        # client sends its next request), sessions (the next turn follows)
                        # or KV transfers (a slot frees).
                        self._step_done
                        if self.closed_loop or self.disaggregated or self.next_turns else None,
                        fast_forward,
                    )
                )
                index += 1
            self.instances.append(members)
        self.owner = {
            id(st): inst for pool in self.instances for inst in pool for st in inst.states
        }
        # Where new requests are routed: the prefill pool, or every replica of every
        # co-located group (numbered group by group).
        self.entry = self.instances[0] if self.disaggregated else [
            inst for pool in self.instances for inst in pool]

    # ---------------------------------------------------------------- arrivals

    def _rejections(self, workload: Workload) -> list[int]:
        """Why each request would be refused at arrival (0: it is served), decided by its
        lengths and the pools' limits alone, so for all requests at once.

        Co-located groups: a request is refused only where no group can serve it (with the
        first reason any group gives, in the order context, KV, token budget); one that some
        groups cannot serve is routed among the others' replicas (`self._eligible`)."""
        p = np.asarray(workload.prompt_len, dtype=np.int64)
        o = np.asarray(workload.output_len, dtype=np.int64)

        def blocks(pool: PoolSetup, num_tokens: np.ndarray) -> np.ndarray:
            return -(-num_tokens // pool.limits.block_size)

        def codes_on(pool: PoolSetup, kv_never: np.ndarray) -> np.ndarray:
            codes = np.zeros(p.size, dtype=np.int64)
            if pool.policy.whole_prompts:
                codes[p > pool.limits.max_num_batched_tokens] = REJECT_BUDGET
            codes[kv_never] = REJECT_KV_CAPACITY
            codes[p + o > pool.limits.max_model_len] = REJECT_MAX_MODEL_LEN
            return codes

        if self.disaggregated:
            first, last = self.pools
            # The prompt's KV must fit a prefill engine, the whole sequence a decode engine.
            kv_never = (blocks(first, p) > first.blocks_per_engine) | (
                blocks(last, p + o - 1) > last.blocks_per_engine
            )
            return codes_on(first, kv_never).tolist()
        per_pool = np.stack([
            codes_on(pool, blocks(pool, p + o - 1 + self.k) > pool.blocks_per_engine)
            for pool in self.pools])
        served = per_pool == 0
        some = served.any(axis=0)
        partly = np.flatnonzero(some & ~served.all(axis=0))
        if partly.size:
            first_instance = np.cumsum([0, *(pool.instances for pool in self.pools)])
            shared: dict[bytes, list[int]] = {}
            for rid in partly.tolist():
                pattern = served[:, rid]
                members = shared.get(pattern.tobytes())
                if members is None:
                    members = shared[pattern.tobytes()] = [
                        i for g in np.flatnonzero(pattern).tolist()
                        for i in range(first_instance[g], first_instance[g + 1])]
                self._eligible[rid] = members
        return np.where(some, 0, per_pool.min(axis=0)).tolist()

    def admit(self, rid: int) -> None:
        """Route one arriving request to the first pool, or reject it with a reason."""
        if self.progress is not None:
            self.num_sent += 1
            if self.num_sent % self._report_every == 0 or self.num_sent == self.n:
                self.progress(self.num_sent)
        code = self._rejection[rid]
        if code:
            self.requests.rejected[rid] = code
            if self.closed_loop:
                self.issue(1)
            self._ended(rid)
            return
        members = self.entry
        pool = self.pools[0]
        idx = route(pool.router, members, self.routed[0], rid, self.requests.prompt_len[rid],
                    pool.router_load_weight, self._eligible.get(rid))
        # Round robin goes on after the replica it chose (the next one when all are eligible).
        self.routed[0] = idx + 1
        inst = members[idx]
        state = inst.pick_engine()
        self.requests.replica[rid] = state.index
        state.waiting.push(rid)
        if self.client_timeout_s is not None:
            heapq.heappush(state.deadlines,
                           (self.requests.arrived_at[rid] + self.client_timeout_s, rid))
        inst.notify(state)

    def issue(self, count: int) -> None:
        """Closed loop: each finished (or rejected) request frees a client, who sends the next."""
        for _ in range(count):
            rid = self.next_request
            if rid >= self.n:
                return
            self.next_request = rid + 1
            self.requests.arrived_at[rid] = self.env.now
            self.admit(rid)

    def arrivals(self):
        env = self.env
        ids = self.open_loop if self.open_loop is not None else range(self.n)
        arrived_at = self.arrived_at[ids].tolist() if self.open_loop is not None \
            else self.arrived_at.tolist()
        n = len(arrived_at)
        i = 0
        while i < n:
            t = arrived_at[i]
            if t > env.now:
                yield env.timeout(t - env.now)
            # Every request arriving at this instant joins before any engine steps.
            while i < n and arrived_at[i] <= env.now:
                self.admit(ids[i])
                i += 1

    def _ended(self, rid: int) -> None:
        """A request finished or was refused: its session's next turns follow."""
        for turn in self.next_turns.get(rid, ()):
            self.env.process(self._next_turn(turn))

    def _next_turn(self, rid: int):
        assert self.think_s is not None
        yield self.env.timeout(float(self.think_s[rid]))
        self.requests.arrived_at[rid] = self.env.now
        self.admit(rid)

    def _step_done(self, state: ReplicaState, finished: int) -> None:
        if state.ended:
            ended, state.ended = state.ended, []
            for rid in ended:
                self._ended(rid)
        if finished and self.closed_loop:
            self.issue(finished)
        if self.disaggregated and state.handoff is None:
            self._admit_transfers(self.owner[id(state)], state)

    # ---------------------------------------------------------------- KV handoff

    def _handoff(self, src: ReplicaState, rid: int, num_computed: int, num_blocks: int) -> None:
        """A prefill finished: queue the request on a decode engine, which admits it (and
        pulls its KV) once it has a slot and the blocks."""
        members = self.instances[1]
        idx = route(self.pools[1].router, members, self.routed[1])
        self.routed[1] += 1
        inst = members[idx]
        dst = inst.pick_engine()
        inst.pending[id(dst)].append((rid, num_computed, src, num_blocks))
        self._admit_transfers(inst, dst)

    def _admit_transfers(self, inst: _Instance, dst: ReplicaState) -> None:
        pending = inst.pending[id(dst)]
        watermark = int(ADMISSION_WATERMARK * dst.num_blocks)
        while pending:
            rid, num_computed, src, held = pending[0]
            need = dst.blocks_for(num_computed)
            empty = dst.num_running == 0
            if dst.num_running >= dst.max_num_seqs:
                return
            if dst.free_blocks - need < (0 if empty else watermark):
                return
            pending.popleft()
            dst.reserve_incoming(need)
            self.decode_replica[rid] = dst.index
            self.env.process(self._transfer(inst, dst, rid, num_computed, src, held))

    def _transfer(self, dst_inst: _Instance, dst: ReplicaState, rid: int, num_computed: int,
                  src: ReplicaState, held: int):
        env = self.env
        src_inst = self.owner[id(src)]
        with src_inst.link.request() as turn:
            yield turn
            self.transfer_started_at[rid] = env.now
            assert self.kv_transfer_s is not None
            yield env.timeout(self.kv_transfer_s(num_computed))
        self.transfer_done_at[rid] = env.now
        src.release_held(rid, held, num_computed)
        src_inst.notify(src)
        req = self.requests
        dst.accept_decoding(rid, num_computed, req.output_len[rid] - req.emitted[rid])
        dst_inst.notify(dst)

    # ---------------------------------------------------------------- run

    def _check_drained(self) -> None:
        """Every request has left: each engine holds no KV block and no transfer, so a leak
        (e.g. prefill-side KV never freed after its transfer) fails loudly."""
        for pool in self.instances:
            for inst in pool:
                for st in inst.states:
                    leftover = st.num_blocks - st.free_blocks
                    held = st.prefix_cache.num_held() if st.prefix_cache is not None else 0
                    swapped = len(st.swap) if st.swap is not None else 0
                    if leftover or held or swapped or st.num_held_blocks or st.num_incoming \
                            or st.has_work() or inst.pending[id(st)]:
                        raise AssertionError(
                            f"replica {st.index}: {leftover} KV blocks still allocated "
                            f"({st.num_held_blocks} held for transfers, {st.num_incoming} "
                            f"incoming, {swapped} requests swapped out) after the run"
                        )

    def run(self) -> SimulationResult:
        if self.closed_loop:
            self.issue(min(self.concurrency or 0, self.n))
        else:
            self.env.process(self.arrivals())
        self.env.run()
        self._check_drained()
        states = [st for pool in self.instances for inst in pool for st in inst.states]
        result = _collect(self.requests, states, self.pools[-1].limits)
        result = dataclasses.replace(
            result,
            num_step_events=sum(inst.num_events for pool in self.instances for inst in pool),
        )
        if self.k:
            verifiers = [s.decodes for s in states if isinstance(s.decodes, VerifyDecodes)]
            result = dataclasses.replace(
                result,
                num_speculative_tokens=self.k,
                spec_num_drafts=sum(d.num_drafts for d in verifiers),
                spec_accepted_per_position=sum(d.accepted_per_position for d in verifiers),
            )
        if self.client_timeout_s is not None:
            result = dataclasses.replace(
                result, timed_out=np.asarray(self.requests.timed_out, dtype=bool))
        caches = [st.prefix_cache for st in states if st.prefix_cache is not None]
        if caches:
            result = dataclasses.replace(
                result,
                cached_tokens=np.asarray(self.requests.cached_tokens, dtype=np.int64),
                prefix_cache_queried_tokens=sum(c.queried_tokens for c in caches),
                prefix_cache_hit_tokens=sum(c.hit_tokens for c in caches),
            )
        swaps = [st.swap for st in states if st.swap is not None]
        block_bytes = {id(st): pool.kv_block_bytes for pool, members in
                       zip(self.pools, self.instances, strict=True)
                       for inst in members for st in inst.states}
        tiers = [(st.prefix_cache.cpu, st.block_size, block_bytes[id(st)]) for st in states
                 if st.prefix_cache is not None and st.prefix_cache.cpu is not None]
        if swaps or tiers:
            totals = _swap_totals(swaps) if swaps else {}
            if tiers:
                totals.update(_offload_totals(tiers))
            result = dataclasses.replace(result, kv_tiers=totals)
        if self.disaggregated:
            result = dataclasses.replace(
                result,
                kv_transfer_started_at=self.transfer_started_at,
                kv_transfer_s=self.transfer_done_at - self.transfer_started_at,
                decode_replica=self.decode_replica,
            )
        return result


def simulate(
    workload: Workload,
    setup: EngineSetup,
    *,
    acceptance_rng: np.random.Generator | None = None,
    fast_forward: bool = True,
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Run the workload on the cluster `setup` describes and return the records (no I/O; the
    only randomness is speculative acceptance, drawn from `acceptance_rng`).

    Co-located: one pool of replicas. Disaggregated: the first token is produced by a prefill
    instance (DistServe's TTFT); the request then waits for a decode engine with a free slot
    and the KV blocks (vLLM's 1% watermark), its KV moves over the prefill instance's link
    (one transfer at a time, `setup.kv_transfer_s(num_tokens)`), and the prefill instance frees
    its blocks when the transfer ends. `fast_forward=False` waits for every step as its own
    event (the records are the same). `progress(num_sent)` is told how many requests have
    been sent, about every 1% of them.
    """
    result = _Cluster(workload, setup, acceptance_rng=acceptance_rng, fast_forward=fast_forward,
                      progress=progress).run()
    if len(workload) >= COLLECT_AFTER_REQUESTS:
        # NOTE: the finished engine (SimPy environment, processes, per-request state) is cyclic
        # garbage that only a full collection frees, and Python's thresholds may not run one
        # for a long while: at 1M requests ~90 MiB stayed held through the metrics phase, and
        # its peak RSS rose above the engine's. A full collection takes ~0.1 s there.
        gc.collect()
    return result


def _swap_totals(swaps: Sequence[SwapSpace]) -> dict[str, float]:
    """Swap preemption over every engine: swaps each way, bytes moved, step time spent
    copying, and time spent in the CPU tier."""
    return {
        "num_swap_outs": sum(s.num_swap_outs for s in swaps),
        "num_swap_ins": sum(s.num_swap_ins for s in swaps),
        "swap_out_bytes": sum(s.blocks_out * s.block_bytes for s in swaps),
        "swap_in_bytes": sum(s.blocks_in * s.block_bytes for s in swaps),
        "swap_copy_s": sum(s.copy_time_s for s in swaps),
        "swapped_request_s": sum(s.swapped_s for s in swaps),
        "swapped_gib_s": sum(s.block_s * s.block_bytes for s in swaps) / 2**30,
    }


def _offload_totals(tiers: Sequence[tuple[CpuTier, int, float]]) -> dict[str, float]:
    """CPU offload over every engine (its tier, block size in tokens and bytes per block):
    blocks stored and loaded, their bytes, load time."""
    return {
        "offload_stored_bytes": sum(t.stored_blocks * nb for t, _bs, nb in tiers),
        "offload_loaded_bytes": sum(t.loaded_blocks * nb for t, _bs, nb in tiers),
        "offload_hit_tokens": sum(t.loaded_blocks * bs for t, bs, _nb in tiers),
        "num_offload_loads": sum(t.num_loads for t, _bs, _nb in tiers),
        "offload_load_s": sum(t.load_s for t, _bs, _nb in tiers),
    }


def _collect(
    requests: RequestTable, states: Sequence[ReplicaState], limits: EngineLimits
) -> SimulationResult:
    """Records from the engines' logs: steps in one order (by end time, then engine), and the
    token runs as pieces of that order's step indices (no per-token work here)."""
    n = len(requests.prompt_len)
    columns = [st.log.columns() for st in states]
    sizes = [c["started_at"].size for c in columns]
    merged = {name: np.concatenate([c[name] for c in columns]) for name in columns[0]}
    merged["replica"] = np.repeat(np.asarray([st.index for st in states], dtype=np.int32), sizes)
    merged["kv_blocks_total"] = np.repeat(
        np.asarray([st.num_blocks for st in states], dtype=np.int64), sizes
    )
    ended = merged["started_at"] + merged["duration_s"]
    if len(states) > 1:
        # NOTE: steps ending at the same instant on two engines are ordered by engine, a fixed
        # rule that stepping and fast-forwarding give alike.
        engine_of = np.repeat(np.arange(len(states)), sizes)
        order = np.lexsort((engine_of, ended))
        global_index = np.empty(order.size, dtype=np.int64)
        global_index[order] = np.arange(order.size, dtype=np.int64)
        merged = {name: column[order] for name, column in merged.items()}
        ended = ended[order]
    else:
        global_index = np.arange(ended.size, dtype=np.int64)
    first_step = np.concatenate(([0], np.cumsum(sizes)))
    steps = StepRecords(**{f.name: merged[f.name] for f in dataclasses.fields(StepRecords)})
    step_end_s = ended
    tokens = _token_pieces(states, [global_index[a:b] for a, b in
                                    itertools.pairwise(first_step)],
                           step_end_s, n)
    output_len = np.asarray(requests.output_len, dtype=np.int64)
    counts = np.diff(tokens.offsets)
    _, last = tokens.first_and_last()
    finished_at = np.where((counts == output_len) & (counts > 0), last, np.nan)
    return SimulationResult(
        arrived_at=np.asarray(requests.arrived_at, dtype=np.float64),
        prompt_len=np.asarray(requests.prompt_len, dtype=np.int64),
        output_len=output_len,
        first_scheduled_at=np.asarray(requests.first_scheduled_at, dtype=np.float64),
        finished_at=finished_at,
        num_preemptions=np.asarray(requests.num_preemptions, dtype=np.int64),
        replica=np.asarray(requests.replica, dtype=np.int32),
        rejected=np.asarray(requests.rejected, dtype=np.int8),
        tokens=tokens,
        steps=steps,
        kv_blocks_per_replica=limits.num_blocks,
    )


def _token_pieces(states: Sequence[ReplicaState], global_steps: Sequence[np.ndarray],
                  step_end_s: np.ndarray, n: int) -> StepTokenTimes:
    """Every engine's runs, single tokens and bursts as pieces over one source array of global
    step indices, sorted by request and then by time."""
    sources: list[np.ndarray] = []
    rids: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    offset = 0

    def add(source: np.ndarray, rid: np.ndarray, start: np.ndarray, length: np.ndarray) -> None:
        nonlocal offset
        sources.append(source)
        rids.append(rid)
        starts.append(start + offset)
        lengths.append(length)
        keys.append(source[start] if start.size else start)
        offset += source.size

    for st, to_global in zip(states, global_steps, strict=True):
        runs = st.runs
        decodes = st.decodes
        if isinstance(decodes, CounterDecodes) and runs.rid:
            tick_global = to_global[decodes.tick_steps()]
            first = np.asarray(runs.first_tick, dtype=np.int64)
            add(tick_global, np.asarray(runs.rid, dtype=np.int64), first,
                np.asarray(runs.end_tick, dtype=np.int64) - first)
        single_rid = np.asarray(runs.single_rid, dtype=np.int64)
        single_step = to_global[np.asarray(runs.single_step, dtype=np.int64)]
        if not runs.burst_rid:
            if single_rid.size:
                add(single_step, single_rid, np.arange(single_step.size, dtype=np.int64),
                    np.ones(single_step.size, dtype=np.int64))
            continue
        # A speculating engine: its emissions (first tokens and verify bursts) sorted by
        # request and step, then one piece per request over their tokens' steps.
        per_burst = np.asarray([a.size for a in runs.burst_rid], dtype=np.int64)
        rid = np.concatenate([single_rid, *runs.burst_rid])
        count = np.concatenate([np.ones(single_rid.size, np.int64), *runs.burst_count])
        step = np.concatenate([single_step, np.repeat(
            to_global[np.asarray(runs.burst_step, dtype=np.int64)], per_burst)])
        # A request emits at most once per step, so (request, step) keys are unique and one
        # sort of a combined key orders them as sorting by request, then step would.
        order = np.argsort(rid * (int(step.max(initial=0)) + 1) + step)
        rid, count, step = rid[order], count[order], step[order]
        source = np.repeat(step, count)
        first_event = np.flatnonzero(np.concatenate((rid[:1] == rid[:1], rid[1:] != rid[:-1])))
        owners = rid[first_event]
        tokens = np.add.reduceat(count, first_event)
        token_start = np.concatenate(([0], np.cumsum(count)))[first_event]
        add(source, owners, token_start, tokens)

    if rids:
        source = np.concatenate(sources)
        rid = np.concatenate(rids)
        start = np.concatenate(starts)
        length = np.concatenate(lengths)
        key = np.concatenate(keys)
        order = np.lexsort((key, rid))
        rid, start, length = rid[order], start[order], length[order]
    else:
        source = rid = start = length = np.zeros(0, dtype=np.int64)
    piece_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rid, minlength=n), out=piece_offsets[1:])
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rid, weights=length, minlength=n).astype(np.int64), out=offsets[1:])
    return StepTokenTimes(
        offsets=offsets, step_end_s=step_end_s, source=source, piece_start=start,
        piece_len=length, piece_offsets=piece_offsets,
    )
