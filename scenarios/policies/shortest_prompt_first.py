"""Chunked prefill that admits the shortest waiting prompt first: a user-defined policy.

The built-in chunked prefill admits waiting requests in the queue order (FCFS by default).
This variant keeps its decodes, partial prefills and preemptions and redoes the admission
only, shortest prompt first: short requests overtake long ones, so mean TTFT falls while
long prompts wait (and may starve near saturation). example.yaml loads it with
`engine.policy: shortest_prompt_first.py:ShortestPromptFirst`.
"""

from simserve.engine import ChunkedPrefillPolicy, ReplicaState, StepPlan


class ShortestPromptFirst(ChunkedPrefillPolicy):
    name = "shortest_prompt_first"

    def schedule(self, state: ReplicaState, now: float) -> StepPlan:
        plan = super().schedule(state, now)
        if plan.preempt or not state.waiting:
            return plan  # as the built-in, nobody is admitted in a step that preempts
        # What the decodes and the partial prefills (the chunks before the admitted) use.
        kept = plan.chunks[: len(plan.chunks) - len(plan.admit)]
        budget = state.max_num_batched_tokens - plan.num_decodes * plan.decode_width - sum(kept)
        free = state.free_blocks - plan.decode_blocks - sum(
            state.blocks_for(e.num_computed + q) - e.num_blocks
            for e, q in zip(state.prefilling, kept, strict=True))
        admit, chunks = [], []
        for rid in sorted(state.waiting, key=lambda r: (state.requests.prompt_len[r], r)):
            # Only what the prefix cache does not hold is computed (and takes blocks).
            q = min(state.target_tokens(rid) - state.cached_tokens(rid), budget)
            blocks = state.admit_blocks(rid, q)
            if q <= 0 or state.num_running + len(admit) >= state.max_num_seqs or blocks > free:
                break
            free -= blocks
            budget -= q
            admit.append(rid)
            chunks.append(q)
        return plan._replace(chunks=kept + tuple(chunks), admit=tuple(admit))
