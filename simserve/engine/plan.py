"""The plain value a scheduling policy returns for one step (vLLM v1's SchedulerOutput seam)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["StepPlan"]


class StepPlan(NamedTuple):
    """Which requests get how many tokens this step, naming the requests it moves.

    `preempt`: running requests preempted before the step (recompute: their KV is freed and
    they go back to the waiting queue), in the order they were chosen. Of the decoding requests
    left, in running order (the order they started decoding), the first `num_decodes` get
    `decode_width` tokens each (1 for plain decoding, k+1 for a speculative verify). `admit`:
    the waiting requests that start this step, in order. `chunks` gives the new tokens of every
    prefill entry after preemption and admission: the kept partial prefills in running order,
    then the admitted requests. `decode_blocks` is how many new KV blocks the decodes need,
    computed once by the policy.
    """

    preempt: tuple[int, ...] = ()
    num_decodes: int = 0
    chunks: tuple[int, ...] = ()
    admit: tuple[int, ...] = ()
    decode_blocks: int = 0
    decode_width: int = 1

    @property
    def num_admitted(self) -> int:
        return len(self.admit)

    @property
    def is_empty(self) -> bool:
        """Nothing to compute and nobody to preempt."""
        return self.num_decodes == 0 and not any(self.chunks) and not self.preempt
