"""Scheduling policies: pure functions from replica state to a StepPlan (DESIGN §3).

A policy reads the state and the `now` it is given and returns a plan; it never yields, never
mutates, never reads a clock. That is vLLM v1's `schedule()` seam, so each policy is unit
tested without SimPy.
"""

from __future__ import annotations

from typing import Protocol

from simserve.engine.plan import StepPlan
from simserve.engine.state import ReplicaState

__all__ = [
    "POLICIES",
    "ChunkedPrefillPolicy",
    "MixedPolicy",
    "Policy",
    "PrefillFirstPolicy",
    "StaticPolicy",
    "make_policy",
]


class Policy(Protocol):
    name: str
    #: whether a prompt must be prefilled in one step (so prompts over the budget are rejected)
    whole_prompts: bool

    def schedule(self, state: ReplicaState, now: float) -> StepPlan: ...


def _fit_decodes(
    state: ReplicaState, num_decodes: int, width: int = 1
) -> tuple[int, int, int, int, int]:
    """Preempt from the most recently admitted end until the first `num_decodes` decodes can
    each get a KV slot. Returns (preempted partials, preempted decodes, decodes, new blocks
    those decodes need, blocks left free after that)."""
    free = state.free_blocks
    need = state.decode_block_need(num_decodes, width)
    if need <= free:
        return 0, 0, num_decodes, need, free - need
    preempt_partials = 0
    preempt_decodes = 0
    # NOTE: vLLM pops the last request of its running list, which holds partial prefills
    # (the newest admissions) after the decoding requests.
    while need > free and preempt_partials < len(state.prefilling):
        preempt_partials += 1
        free += state.prefilling[-preempt_partials].num_blocks
    if need > free:
        last = state.num_decoding - 1
        for held, slot_need in state.decodes_newest_first(width):
            if need <= free:
                break
            free += held
            if last < num_decodes:
                num_decodes -= 1
                need -= slot_need
            preempt_decodes += 1
            last -= 1
    return preempt_partials, preempt_decodes, num_decodes, need, free - need


class StaticPolicy:
    """Request-level batching (FasterTransformer): take up to `max_num_seqs` waiting requests,
    prefill them together, decode until the last finishes; admit nobody meanwhile."""

    name = "static"
    whole_prompts = False

    def schedule(self, state: ReplicaState, now: float) -> StepPlan:
        if state.num_running:
            return StepPlan(num_decodes=state.num_decoding)
        free = state.free_blocks
        chunks: list[int] = []
        for rid in state.waiting:
            if len(chunks) == state.max_num_seqs:
                break
            blocks = state.reserve_blocks(rid)
            if blocks > free:
                break
            free -= blocks
            chunks.append(state.target_tokens(rid))
        return StepPlan(chunks=tuple(chunks), num_admitted=len(chunks))


def _admit_whole_prompts(
    state: ReplicaState, free: int, tokens_used: int, num_running: int
) -> list[int]:
    """FCFS admission of whole prompts under the seq cap, the token budget and free KV."""
    chunks: list[int] = []
    budget = state.max_num_batched_tokens
    for rid in state.waiting:
        if num_running + len(chunks) >= state.max_num_seqs:
            break
        target = state.target_tokens(rid)
        # A recomputed request (prompt + generated) may exceed the budget; let it run alone
        # rather than starve (fresh prompts over the budget are rejected at arrival).
        alone = tokens_used == 0 and not chunks
        if tokens_used + target > budget and not alone:
            break
        blocks = state.blocks_for(target)
        if blocks > free:
            break
        free -= blocks
        tokens_used += target
        chunks.append(target)
    return chunks


class PrefillFirstPolicy:
    """vLLM v0 default: if waiting prompts fit (KV, `max_num_seqs`, `max_num_batched_tokens`),
    run a prefill-only step of whole prompts; otherwise one decode step for all running.
    Decodes stall while prefills run."""

    name = "prefill_first"
    whole_prompts = True

    def schedule(self, state: ReplicaState, now: float) -> StepPlan:
        if state.waiting:
            chunks = _admit_whole_prompts(state, state.free_blocks, 0, state.num_running)
            if chunks:
                return StepPlan(chunks=tuple(chunks), num_admitted=len(chunks))
        width = state.decode_width(state.num_decoding)
        pp, pd, m, need, _free = _fit_decodes(state, state.num_decoding, width)
        return StepPlan(
            num_preempt_partials=pp,
            num_preempt_decodes=pd,
            num_decodes=m,
            decode_blocks=need,
            decode_width=width,
        )


class MixedPolicy:
    """Orca iteration-level batching: every step carries all running decodes plus the whole
    prompts of newly admitted requests."""

    name = "mixed"
    whole_prompts = True

    def schedule(self, state: ReplicaState, now: float) -> StepPlan:
        pp, pd, m, need, free = _fit_decodes(state, state.num_decoding)
        chunks: list[int] = []
        if not (pp or pd) and state.waiting:
            # NOTE: as in vLLM, nobody is admitted in a step that had to preempt.
            chunks = _admit_whole_prompts(state, free, m, state.num_running)
        return StepPlan(
            num_preempt_partials=pp,
            num_preempt_decodes=pd,
            num_decodes=m,
            chunks=tuple(chunks),
            num_admitted=len(chunks),
            decode_blocks=need,
        )


class ChunkedPrefillPolicy:
    """Sarathi-Serve / vLLM v1: a per-step token budget filled by running decodes first, then
    partial prefills, then new admissions, chunking the last prompt to fit."""

    name = "chunked_prefill"
    whole_prompts = False

    def schedule(self, state: ReplicaState, now: float) -> StepPlan:
        budget = state.max_num_batched_tokens
        num_decoding = state.num_decoding
        # NOTE: verify tokens (k+1 per request) count against the token budget (vLLM v1).
        width = state.decode_width(num_decoding)
        if not state.prefilling and not state.waiting and num_decoding * width <= budget:
            # Only decodes to run, all within the budget (the common step between arrivals).
            need = state.decode_block_need(num_decoding, width)
            if need <= state.free_blocks:
                return StepPlan(0, 0, num_decoding, (), 0, need, width)
        m = min(num_decoding, budget // width)
        pp, pd, m, need, free = _fit_decodes(state, m, width)
        budget -= m * width
        chunks: list[int] = []
        num_partials = len(state.prefilling) - pp
        i = 0
        while i < num_partials:
            entry = state.prefilling[i]
            q = min(entry.num_target - entry.num_computed, budget)
            extra = state.blocks_for(entry.num_computed + q) - entry.num_blocks if q else 0
            # NOTE: like vLLM v1, a request that cannot get its blocks preempts the newest
            # running request, and stops when the newest is itself.
            while extra > free and num_partials > i:
                num_partials -= 1
                pp += 1
                free += state.prefilling[num_partials].num_blocks
            if num_partials <= i:
                break
            free -= extra
            budget -= q
            chunks.append(q)
            i += 1
        num_admitted = 0
        if not (pp or pd):
            # Nobody was preempted, so every running sequence (and KV transfer on its way in)
            # holds a slot.
            running = state.num_running
            for rid in state.waiting:
                if budget <= 0 or running + num_admitted >= state.max_num_seqs:
                    break
                q = min(state.target_tokens(rid), budget)
                blocks = state.blocks_for(q)
                if blocks > free:
                    break
                free -= blocks
                budget -= q
                chunks.append(q)
                num_admitted += 1
        return StepPlan(
            num_preempt_partials=pp,
            num_preempt_decodes=pd,
            num_decodes=m,
            chunks=tuple(chunks),
            num_admitted=num_admitted,
            decode_blocks=need,
            decode_width=width,
        )


POLICIES: dict[str, type] = {
    p.name: p for p in (StaticPolicy, PrefillFirstPolicy, MixedPolicy, ChunkedPrefillPolicy)
}


def make_policy(name: str) -> Policy:
    """The policy registered under `name` (config validation guarantees it exists)."""
    return POLICIES[name]()
