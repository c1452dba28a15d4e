"""The plain value a scheduling policy returns for one step (vLLM v1's SchedulerOutput seam)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["StepPlan"]


class StepPlan(NamedTuple):
    """Which requests get how many tokens this step.

    Running requests are ordered by admission: decoding ones first, then partial prefills.
    Preemption always takes the most recently admitted (vLLM default), so victims are a suffix:
    the last `num_preempt_partials` partial prefills and then the last `num_preempt_decodes`
    decoding requests. Of the decoding requests left, the first `num_decodes` get one token each.
    `chunks` gives the new tokens of every prefill entry after preemption and admission: the
    kept partial prefills in order, then the `num_admitted` requests taken from the head of the
    waiting queue. `decode_blocks` is how many new KV blocks the decodes need (those whose
    next token starts a block), computed once by the policy. `decode_width` is 1 for plain
    decoding and k+1 for a speculative verify step.
    """

    num_preempt_partials: int = 0
    num_preempt_decodes: int = 0
    num_decodes: int = 0
    chunks: tuple[int, ...] = ()
    num_admitted: int = 0
    decode_blocks: int = 0
    decode_width: int = 1

    @property
    def is_empty(self) -> bool:
        return self.num_decodes == 0 and not any(self.chunks)
