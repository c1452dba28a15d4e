"""Batching policies: pure functions from replica state to a StepPlan (DESIGN §3).

A policy reads the state and the `now` it is given and returns a plan; it never yields, never
mutates, never reads a clock. That is vLLM v1's `schedule()` seam, so each policy is unit
tested without SimPy. Which waiting request comes first and which running one is preempted
first is the queue order's business (`engine.queues`): a policy walks `state.waiting` in order
and preempts through `state.preemption_order()`, so every policy works with every order.

What a policy is able to do is declared as class attributes (`BatchingPolicy`), read by the
config checks and the engine; nothing anywhere decides by a policy's name.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from simserve.engine.plan import StepPlan
from simserve.engine.state import PrefillEntry, ReplicaState

__all__ = [
    "POLICIES",
    "BatchingPolicy",
    "ChunkedPrefillPolicy",
    "MixedPolicy",
    "Policy",
    "PrefillFirstPolicy",
    "StaticPolicy",
    "fit_decodes",
]


class Policy(Protocol):
    """What the engine needs of a batching policy (see `BatchingPolicy` for the meaning of
    the capability attributes)."""

    name: str
    whole_prompts: bool
    reserves_full_kv: bool
    supports_speculation: bool
    repeats_decode_plans: bool
    admits_while_running: bool
    caches_prefixes_by_default: bool
    engine_generation: str

    def schedule(self, state: ReplicaState, now: float) -> StepPlan: ...


class BatchingPolicy:
    """Base of the built-in policies and of user-defined ones: the capabilities a policy
    declares, with conservative defaults, and `schedule` to implement."""

    name: ClassVar[str] = "policy"
    #: A prompt is prefilled in one step, so a prompt over the token budget is rejected when
    #: it arrives (vLLM v0) instead of waiting forever.
    whole_prompts: ClassVar[bool] = False
    #: KV blocks for the whole sequence (prompt + output) are taken at admission, so a
    #: running request never needs more and nobody is preempted (FasterTransformer).
    reserves_full_kv: ClassVar[bool] = False
    #: Plans verify steps (decode_width > 1) when the engine speculates.
    supports_speculation: ClassVar[bool] = False
    #: Plans a plain decode step of every decoding request again, unchanged, as long as only
    #: the decode tick changes the state (no arrival, finish, preemption, and KV blocks still
    #: free): the engine may then price such steps as one run (fast-forward).
    repeats_decode_plans: ClassVar[bool] = False
    #: Admits new requests while others run, so it can serve a pool that requests keep
    #: joining (a disaggregated cluster's prefill and decode pools).
    admits_while_running: ClassVar[bool] = False
    #: Automatic prefix caching is on unless the scenario says otherwise
    #: (`engine.enable_prefix_caching`): vLLM V1 turns it on by default, V0 did not.
    caches_prefixes_by_default: ClassVar[bool] = False
    #: The vLLM engine generation whose CPU loop the kernel cost model prices when the
    #: scenario's `engine.version` is unset: "v1" (>= 0.8) or "v0" (<= 0.6).
    engine_generation: ClassVar[str] = "v1"

    def schedule(self, state: ReplicaState, now: float) -> StepPlan:
        raise NotImplementedError


def fit_decodes(
    state: ReplicaState, num_decodes: int, width: int = 1
) -> tuple[tuple[int, ...], int, int, int]:
    """Preempt, in the queue order's preemption order, until the first `num_decodes` decoding
    requests (of those left) can each get their KV for `width` more tokens. Returns (the
    preempted requests, how many decode, the new blocks they need, blocks left free)."""
    free = state.free_blocks
    need = state.decode_block_need(num_decodes, width)
    if need <= free:
        return (), num_decodes, need, free - need
    wanted = num_decodes
    victims: list[int] = []
    decoding = state.num_decoding
    decoding_ids = None
    for rid, held in state.preemption_order():
        victims.append(rid)
        free += held
        if decoding_ids is None:
            decoding_ids = {r for r, _c, _rem in state.decodes.members()}
        if rid in decoding_ids:
            decoding -= 1
        num_decodes = min(wanted, decoding)
        need = state.decode_block_need_without(set(victims), num_decodes, width)
        if need <= free:
            break
    return tuple(victims), num_decodes, need, free - need


class StaticPolicy(BatchingPolicy):
    """Request-level batching (FasterTransformer): take up to `max_num_seqs` waiting requests,
    prefill them together, decode until the last finishes; admit nobody meanwhile."""

    name = "static"
    reserves_full_kv = True
    repeats_decode_plans = True

    def schedule(self, state: ReplicaState, now: float) -> StepPlan:
        if state.num_running:
            return StepPlan(num_decodes=state.num_decoding)
        free = state.free_blocks
        admit: list[int] = []
        chunks: list[int] = []
        for rid in state.waiting:
            if len(admit) == state.max_num_seqs:
                break
            blocks = state.reserve_blocks(rid)
            if blocks > free:
                break
            free -= blocks
            admit.append(rid)
            chunks.append(state.target_tokens(rid))
        return StepPlan(chunks=tuple(chunks), admit=tuple(admit))


def _admit_whole_prompts(
    state: ReplicaState, free: int, tokens_used: int, num_running: int
) -> tuple[list[int], list[int]]:
    """Admission of whole prompts in queue order under the seq cap, the token budget and free
    KV: (request ids, their prefill tokens: the part not in the prefix cache)."""
    admit: list[int] = []
    chunks: list[int] = []
    budget = state.max_num_batched_tokens
    for rid in state.waiting:
        if num_running + len(chunks) >= state.max_num_seqs:
            break
        target = state.target_tokens(rid) - state.cached_tokens(rid)
        # A recomputed request (prompt + generated) may exceed the budget; let it run alone
        # rather than starve (fresh prompts over the budget are rejected at arrival).
        alone = tokens_used == 0 and not chunks
        if tokens_used + target > budget and not alone:
            break
        blocks = state.admit_blocks(rid, target)
        if blocks > free:
            break
        free -= blocks
        tokens_used += target
        admit.append(rid)
        chunks.append(target)
    return admit, chunks


class PrefillFirstPolicy(BatchingPolicy):
    """vLLM v0 default: if waiting prompts fit (KV, `max_num_seqs`, `max_num_batched_tokens`),
    run a prefill-only step of whole prompts; otherwise one decode step for all running.
    Decodes stall while prefills run."""

    name = "prefill_first"
    whole_prompts = True
    supports_speculation = True
    repeats_decode_plans = True
    admits_while_running = True
    # NOTE: vLLM v0's scheduler ran prefills alone; v1 has no prefill-first mode.
    engine_generation = "v0"

    def schedule(self, state: ReplicaState, now: float) -> StepPlan:
        if state.waiting:
            admit, chunks = _admit_whole_prompts(state, state.free_blocks, 0, state.num_running)
            if chunks:
                return StepPlan(chunks=tuple(chunks), admit=tuple(admit))
        width = state.decode_width(state.num_decoding)
        victims, m, need, _free = fit_decodes(state, state.num_decoding, width)
        return StepPlan(preempt=victims, num_decodes=m, decode_blocks=need, decode_width=width)


class MixedPolicy(BatchingPolicy):
    """Orca iteration-level batching: every step carries all running decodes plus the whole
    prompts of newly admitted requests."""

    name = "mixed"
    whole_prompts = True
    repeats_decode_plans = True
    admits_while_running = True

    def schedule(self, state: ReplicaState, now: float) -> StepPlan:
        victims, m, need, free = fit_decodes(state, state.num_decoding)
        admit: list[int] = []
        chunks: list[int] = []
        if not victims and state.waiting:
            # NOTE: as in vLLM, nobody is admitted in a step that had to preempt.
            admit, chunks = _admit_whole_prompts(state, free, m, state.num_running)
        return StepPlan(preempt=victims, num_decodes=m, chunks=tuple(chunks), admit=tuple(admit),
                        decode_blocks=need)


class ChunkedPrefillPolicy(BatchingPolicy):
    """Sarathi-Serve / vLLM v1: a per-step token budget filled by running decodes first, then
    partial prefills, then new admissions, chunking the last prompt to fit."""

    name = "chunked_prefill"
    supports_speculation = True
    repeats_decode_plans = True
    admits_while_running = True
    caches_prefixes_by_default = True

    def schedule(self, state: ReplicaState, now: float) -> StepPlan:
        budget = state.max_num_batched_tokens
        num_decoding = state.num_decoding
        # NOTE: verify tokens (k+1 per request) count against the token budget (vLLM v1).
        width = state.decode_width(num_decoding)
        if not state.prefilling and not state.waiting and num_decoding * width <= budget:
            # Only decodes to run, all within the budget (the common step between arrivals).
            need = state.decode_block_need(num_decoding, width)
            if need <= state.free_blocks:
                return StepPlan((), num_decoding, (), (), need, width)
        victims, m, need, free = fit_decodes(state, min(num_decoding, budget // width), width)
        budget -= m * width
        preempted = set(victims)
        partials = [e for e in state.prefilling if e.request_id not in preempted]
        victims_list = list(victims)
        chunks: list[int] = []
        i = 0
        while i < len(partials):
            entry = partials[i]
            q = min(entry.num_target - entry.num_computed, budget)
            extra = state.blocks_for(entry.num_computed + q) - entry.num_blocks if q else 0
            # NOTE: like vLLM v1, a request that cannot get its blocks preempts running
            # requests in preemption order, and stops when that reaches itself.
            while extra > free:
                victim = _next_partial_victim(state, partials[i:])
                partials.remove(victim)
                victims_list.append(victim.request_id)
                # With prefix caching, blocks other requests hold stay in use.
                free += state.blocks_freed_by(victim.request_id, victim.num_blocks)
                if victim is entry:
                    break
            if entry not in partials:
                break
            free -= extra
            budget -= q
            chunks.append(q)
            i += 1
        # Partial prefills left unscheduled (after one preempted itself) get no tokens.
        chunks += [0] * (len(partials) - len(chunks))
        admit: list[int] = []
        if not victims_list:
            # Nobody was preempted, so every running sequence (and KV transfer on its way in)
            # holds a slot.
            running = state.num_running
            for rid in state.waiting:
                if budget <= 0 or running + len(admit) >= state.max_num_seqs:
                    break
                # NOTE: only tokens not in the prefix cache count against the budget (vLLM v1).
                q = min(state.target_tokens(rid) - state.cached_tokens(rid), budget)
                blocks = state.admit_blocks(rid, q)
                if blocks > free:
                    break
                free -= blocks
                budget -= q
                chunks.append(q)
                admit.append(rid)
        return StepPlan(tuple(victims_list), m, tuple(chunks), tuple(admit), need, width)


def _next_partial_victim(state: ReplicaState, candidates: list[PrefillEntry]) -> PrefillEntry:
    """Of these partial prefills (running order), the one the queue order preempts first."""
    if state.waiting.preempts_newest:
        return candidates[-1]
    queue = state.waiting
    output_len, emitted = state.requests.output_len, state.requests.emitted
    return max(candidates, key=lambda e: queue.running_key(
        e.request_id, output_len[e.request_id] - emitted[e.request_id]))


POLICIES: dict[str, type[BatchingPolicy]] = {
    p.name: p for p in (StaticPolicy, PrefillFirstPolicy, MixedPolicy, ChunkedPrefillPolicy)
}

