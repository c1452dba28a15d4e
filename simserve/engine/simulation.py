"""The SimPy model: one process per engine (one event per step) plus an arrival process.

An engine loops `plan = policy.schedule(state, now)`, waits for the step's time, then
`state.finish(...)`; an idle engine sleeps on an event that an arrival triggers (no polling).

Clusters are pools of instances. A co-located cluster is one pool of replicas doing prefill and
decode. A disaggregated cluster (DistServe, Splitwise) has a prefill pool whose instances hand
each request's KV cache over a link to a decode pool. An instance of `pp` pipeline stages runs
`pp` virtual engines, each with its own queues and 1/pp of the KV blocks (vLLM v0's
`virtual_engine` schedulers), whose micro-batches flow through the stages one after another:
a stage takes the next micro-batch as soon as it frees (GPipe-style pipelining, Huang 2019).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import simpy

from simserve.config import SpeculativeConfig
from simserve.costmodel.base import CostModel
from simserve.engine.policies import Policy, make_policy
from simserve.engine.records import SimulationResult, StepRecords
from simserve.engine.router import route
from simserve.engine.speculative import AcceptanceSampler
from simserve.engine.state import ReplicaState, RequestTable, StepLog
from simserve.workload import Workload

__all__ = ["EngineLimits", "PoolSetup", "simulate", "simulate_disaggregated"]

REJECT_MAX_MODEL_LEN = 1
REJECT_KV_CAPACITY = 2
REJECT_BUDGET = 3

# NOTE: vLLM's block manager keeps 1% of the blocks free when admitting a sequence
# (`watermark=0.01`) so running requests can grow without an immediate preemption; a decode
# instance admits KV transfers under the same rule.
ADMISSION_WATERMARK = 0.01


@dataclass(frozen=True)
class EngineLimits:
    """Per-replica limits the engine enforces (resolved from the scenario and the catalog)."""

    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


@dataclass(frozen=True)
class PoolSetup:
    """A pool of identical instances. `limits` are per instance (all its stages); with `pp`
    stages each virtual engine gets `num_blocks // pp` blocks. `stage_send_s(num_tokens)` is
    the stage-to-stage activation send of a micro-batch (None: free)."""

    instances: int
    limits: EngineLimits
    cost_model: CostModel
    policy: str
    router: str = "round_robin"
    pp: int = 1
    stage_send_s: Callable[[int], float] | None = None

    @property
    def blocks_per_engine(self) -> int:
        return self.limits.num_blocks // self.pp


class _Instance:
    """One instance: its virtual engines' SimPy processes and its pipeline stages."""

    def __init__(
        self,
        env: simpy.Environment,
        states: list[ReplicaState],
        pool: PoolSetup,
        policy_factory: Callable[[], Policy],
        on_step_done: Callable[[ReplicaState, int], None],
    ) -> None:
        self.env = env
        self.states = states
        self.cost_model = pool.cost_model
        self.on_step_done = on_step_done
        # When each pipeline stage next frees (empty without pipeline parallelism).
        self.stage_free_at = [0.0] * pool.pp if pool.pp > 1 else []
        self.stage_send_s = pool.stage_send_s
        # KV transfers leaving this instance queue on its egress link, one at a time.
        self.link = simpy.Resource(env, 1)
        self.pending: dict[int, deque[tuple[int, int, ReplicaState, int]]] = {
            id(st): deque() for st in states
        }
        self.wakeups: dict[int, simpy.Event | None] = {id(st): None for st in states}
        for state in states:
            env.process(self.run(state, policy_factory()))

    # ---------------------------------------------------------------- views for routers

    @property
    def num_outstanding(self) -> int:
        return sum(st.num_outstanding + len(self.pending[id(st)]) for st in self.states)

    @property
    def free_blocks(self) -> int:
        return sum(st.free_blocks for st in self.states)

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
        while True:
            if state.has_work():
                now = env.now
                plan = schedule(state, now)
                preempts = plan.num_preempt_decodes or plan.num_preempt_partials
                if not (plan.is_empty and not preempts):
                    shape = state.begin(plan, now)
                    duration = step_time(shape)
                    if self.stage_free_at:
                        duration = self._through_stages(now, duration, shape.num_tokens) - now
                    yield env.timeout(duration)
                    self.on_step_done(state, state.finish(plan, shape, now, duration))
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

    def _through_stages(self, now: float, duration: float, num_tokens: int) -> float:
        """When a micro-batch that starts at `now` leaves the last stage. Each stage runs 1/pp
        of the layers (the step's time split evenly, as layers are) once the stage is free,
        then sends its activations to the next stage.

        Stages are reserved in the order micro-batches start, which is the order a FIFO queue
        at every stage would serve them (a micro-batch cannot overtake the one ahead: it starts
        each stage after that one finished it), so one timeout per step suffices.
        """
        stage_s = duration / len(self.stage_free_at)
        send_s = self.stage_send_s(num_tokens) if self.stage_send_s is not None else 0.0
        free_at = self.stage_free_at
        ready = now
        for i, free in enumerate(free_at):
            if i:
                ready += send_s
            ready = max(ready, free) + stage_s
            free_at[i] = ready
        return ready


class _Cluster:
    """Arrivals, routing, rejections and (disaggregated) KV handoff over the pools."""

    def __init__(
        self,
        workload: Workload,
        pools: Sequence[PoolSetup],
        *,
        kv_transfer_s: Callable[[int], float] | None = None,
        speculative: SpeculativeConfig | None = None,
        acceptance_rng: np.random.Generator | None = None,
        policy_factories: Sequence[Callable[[], Policy]] | None = None,
    ) -> None:
        n = len(workload)
        self.n = n
        arrived_at = workload.arrived_at.astype(np.float64).copy()
        self.closed_loop = workload.concurrency is not None
        if self.closed_loop:
            arrived_at[:] = np.nan
        self.arrived_at = arrived_at
        self.concurrency = workload.concurrency
        self.requests = RequestTable(
            prompt_len=workload.prompt_len.tolist(),
            output_len=workload.output_len.tolist(),
            arrived_at=arrived_at.tolist(),
        )
        self.log = StepLog()
        self.env = simpy.Environment()
        self.pools = list(pools)
        self.disaggregated = len(self.pools) == 2
        self.kv_transfer_s = kv_transfer_s
        self.k = speculative.num_speculative_tokens if speculative is not None else 0
        sampler = None
        if speculative is not None:
            rng = acceptance_rng if acceptance_rng is not None else np.random.default_rng(0)
            sampler = AcceptanceSampler.create(speculative.acceptance, self.k, rng, n)
        factories = list(policy_factories or [
            lambda name=pool.policy: make_policy(name) for pool in self.pools
        ])
        probe = factories[0]()
        self.whole_prompts = probe.whole_prompts
        self.next_request = 0
        self.routed = [0] * len(self.pools)
        if self.disaggregated:
            self.transfer_started_at = np.full(n, np.nan)
            self.transfer_done_at = np.full(n, np.nan)
            self.decode_replica = np.full(n, -1, dtype=np.int32)
        self.instances: list[list[_Instance]] = []
        index = 0
        for p, pool in enumerate(self.pools):
            members = []
            for _ in range(pool.instances):
                states = [
                    ReplicaState(
                        index,
                        self.requests,
                        self.log,
                        num_blocks=pool.blocks_per_engine,
                        block_size=pool.limits.block_size,
                        max_num_seqs=pool.limits.max_num_seqs,
                        max_num_batched_tokens=pool.limits.max_num_batched_tokens,
                        reserve_full=probe.name == "static",
                        num_speculative_tokens=self.k,
                        speculate_max_batch=(
                            speculative.disable_above_batch if speculative else None
                        ),
                        acceptance=sampler,
                    )
                    for _ in range(pool.pp)
                ]
                if self.disaggregated and p == 0:
                    for st in states:
                        st.handoff = self._handoff
                members.append(
                    _Instance(
                        self.env,
                        states,
                        pool,
                        factories[p],
                        self._step_done,
                    )
                )
                index += 1
            self.instances.append(members)
        self.owner = {
            id(st): inst for pool in self.instances for inst in pool for st in inst.states
        }

    # ---------------------------------------------------------------- arrivals

    def _blocks(self, pool: PoolSetup, num_tokens: int) -> int:
        return -(-num_tokens // pool.limits.block_size)

    def _rejection(self, rid: int) -> int:
        p, o = self.requests.prompt_len[rid], self.requests.output_len[rid]
        first, last = self.pools[0], self.pools[-1]
        if p + o > first.limits.max_model_len:
            return REJECT_MAX_MODEL_LEN
        if self.disaggregated:
            # The prompt's KV must fit a prefill engine, the whole sequence a decode engine.
            if self._blocks(first, p) > first.blocks_per_engine:
                return REJECT_KV_CAPACITY
            if self._blocks(last, p + o - 1) > last.blocks_per_engine:
                return REJECT_KV_CAPACITY
        elif self._blocks(first, p + o - 1 + self.k) > first.blocks_per_engine:
            return REJECT_KV_CAPACITY
        if self.whole_prompts and p > first.limits.max_num_batched_tokens:
            return REJECT_BUDGET
        return 0

    def admit(self, rid: int) -> None:
        """Route one arriving request to the first pool, or reject it with a reason."""
        code = self._rejection(rid)
        if code:
            self.requests.rejected[rid] = code
            if self.closed_loop:
                self.issue(1)
            return
        members = self.instances[0]
        idx = route(self.pools[0].router, members, self.routed[0])
        self.routed[0] += 1
        inst = members[idx]
        state = inst.pick_engine()
        self.requests.replica[rid] = state.index
        state.waiting.append(rid)
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
        env, arrived_at, n = self.env, self.arrived_at, self.n
        i = 0
        while i < n:
            t = float(arrived_at[i])
            if t > env.now:
                yield env.timeout(t - env.now)
            # Every request arriving at this instant joins before any engine steps.
            while i < n and arrived_at[i] <= env.now:
                self.admit(i)
                i += 1

    def _step_done(self, state: ReplicaState, finished: int) -> None:
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
        src.release_held(held)
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
                    if leftover or st.num_held_blocks or st.num_incoming or st.has_work() \
                            or inst.pending[id(st)]:
                        raise AssertionError(
                            f"replica {st.index}: {leftover} KV blocks still allocated "
                            f"({st.num_held_blocks} held for transfers, {st.num_incoming} "
                            "incoming) after the run"
                        )

    def run(self) -> SimulationResult:
        if self.closed_loop:
            self.issue(min(self.concurrency or 0, self.n))
        else:
            self.env.process(self.arrivals())
        self.env.run()
        self._check_drained()
        result = _collect(self.requests, self.log, self.pools[-1].limits, self.n)
        states = [st for pool in self.instances for inst in pool for st in inst.states]
        if self.k:
            result = dataclasses.replace(
                result,
                num_speculative_tokens=self.k,
                spec_num_drafts=sum(s.spec_num_drafts for s in states),
                spec_accepted_per_position=sum(s.spec_accepted_per_position for s in states),
            )
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
    policy_factory: Callable[[], Policy],
    cost_model: CostModel,
    limits: EngineLimits,
    *,
    num_replicas: int = 1,
    router: str = "round_robin",
    speculative: SpeculativeConfig | None = None,
    acceptance_rng: np.random.Generator | None = None,
    pp: int = 1,
    stage_send_s: Callable[[int], float] | None = None,
) -> SimulationResult:
    """Run the workload on `num_replicas` co-located replicas and return the records (no I/O;
    the only randomness is speculative acceptance, drawn from `acceptance_rng`)."""
    pool = PoolSetup(
        num_replicas, limits, cost_model, policy_factory().name, router, pp, stage_send_s
    )
    return _Cluster(
        workload,
        [pool],
        speculative=speculative,
        acceptance_rng=acceptance_rng,
        policy_factories=[policy_factory],
    ).run()


def simulate_disaggregated(
    workload: Workload,
    prefill: PoolSetup,
    decode: PoolSetup,
    kv_transfer_s: Callable[[int], float],
) -> SimulationResult:
    """Run the workload on a prefill pool that hands KV caches to a decode pool.

    `kv_transfer_s(num_tokens)` is the time to move a request's KV cache of that many tokens.
    The first token is produced by the prefill instance (DistServe's TTFT); the request then
    waits for a decode engine with a free slot and the KV blocks (vLLM's 1% watermark), its KV
    moves over the prefill instance's link (one transfer at a time), and the prefill instance
    frees its blocks when the transfer ends.
    """
    return _Cluster(workload, [prefill, decode], kv_transfer_s=kv_transfer_s).run()


def _collect(
    requests: RequestTable, log: StepLog, limits: EngineLimits, n: int
) -> SimulationResult:
    """Turn the step log into per-token timestamps (one sort, no per-token Python)."""
    started = np.asarray(log.started_at, dtype=np.float64)
    duration = np.asarray(log.duration_s, dtype=np.float64)
    ended = started + duration
    if log.emit_ids:
        # int32 ids and step indices halve the per-token temporaries (100k requests, 20M tokens).
        lengths = np.fromiter(
            (a.size for a in log.emit_ids), dtype=np.int64, count=len(log.emit_ids)
        )
        ids = np.concatenate(log.emit_ids)
        log.emit_ids.clear()
        steps = np.repeat(np.asarray(log.emit_step, dtype=np.int32), lengths)
        order = np.argsort(ids, kind="stable")  # steps were appended in time order
        counts = np.bincount(ids, minlength=n)
        del ids
        token_steps = steps[order]
        del steps, order
        token_times = ended[token_steps]
        del token_steps
    else:
        token_times = np.zeros(0)
        counts = np.zeros(n, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    output_len = np.asarray(requests.output_len, dtype=np.int64)
    finished_at = np.full(n, np.nan)
    done = (counts == output_len) & (counts > 0)
    finished_at[done] = token_times[offsets[1:][done] - 1]
    steps_rec = StepRecords(
        replica=np.asarray(log.replica, dtype=np.int32),
        started_at=started,
        duration_s=duration,
        num_prefill_tokens=np.asarray(log.num_prefill_tokens, dtype=np.int64),
        num_decode_tokens=np.asarray(log.num_decode_tokens, dtype=np.int64),
        prefill_kv_tokens=np.asarray(log.prefill_kv_tokens, dtype=np.int64),
        decode_kv_tokens=np.asarray(log.decode_kv_tokens, dtype=np.int64),
        num_seqs=np.asarray(log.num_seqs, dtype=np.int64),
        kv_blocks_used=np.asarray(log.kv_blocks_used, dtype=np.int64),
        kv_blocks_total=np.asarray(log.kv_blocks_total, dtype=np.int64),
        num_preempted=np.asarray(log.num_preempted, dtype=np.int64),
    )
    return SimulationResult(
        arrived_at=np.asarray(requests.arrived_at, dtype=np.float64),
        prompt_len=np.asarray(requests.prompt_len, dtype=np.int64),
        output_len=output_len,
        first_scheduled_at=np.asarray(requests.first_scheduled_at, dtype=np.float64),
        finished_at=finished_at,
        num_preemptions=np.asarray(requests.num_preemptions, dtype=np.int64),
        replica=np.asarray(requests.replica, dtype=np.int32),
        rejected=np.asarray(requests.rejected, dtype=np.int8),
        token_offsets=offsets,
        token_times_s=token_times,
        steps=steps_rec,
        kv_blocks_per_replica=limits.num_blocks,
    )
