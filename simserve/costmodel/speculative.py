"""Step time of a speculative step: the target's verify pass plus the draft's proposals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from simserve.costmodel.base import (
    BatchShape,
    CostModel,
    decode_step_fn,
    envelope_report,
    envelope_warnings,
)

__all__ = ["SpeculativeCostModel"]


@dataclass(frozen=True)
class SpeculativeCostModel:
    """Wraps the target's cost model; a step whose decodes are wider than one token is a verify.

    The verify pass itself (k+1 query positions per request over its context) is priced by the
    target model like any step. Drafting adds, for `draft` (a separate model), k sequential
    decode steps of the draft model at the batch's size, and the draft's share of every prefill
    chunk (it must build its own KV); for EAGLE/MTP heads, `draft_fraction` of one target decode
    step per draft token (Li et al. 2024; DeepSeek-V3 MTP).
    """

    target: CostModel
    draft: CostModel | None
    draft_fraction: float
    # The draft's plain decode step by batch size (`decode_step_fn`: the same floats as its
    # `step_time`, without building a shape per draft token).
    _draft_steps: dict[int, Callable[[int], float]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def step_time(self, shape: BatchShape) -> float:
        t = self.target.step_time(shape)
        if self.draft is not None and shape.num_prefill_tokens:
            t += self.draft.step_time(
                shape._replace(num_decode_seqs=0, num_decode_tokens=0, decode_kv_tokens=0)
            )
        m = shape.num_decode_seqs
        if not m or shape.num_decode_tokens <= m:
            return t
        k = shape.num_decode_tokens // m - 1
        context = shape.decode_kv_tokens - shape.num_decode_tokens  # sum of cached tokens
        if self.draft is None:
            one_decode = BatchShape(
                num_decode_seqs=m, num_decode_tokens=m, decode_kv_tokens=context + m
            )
            return t + k * self.draft_fraction * self.target.step_time(one_decode)
        draft_step = self._draft_steps.get(m)
        if draft_step is None:
            draft_step = self._draft_steps[m] = decode_step_fn(self.draft, m)
        for j in range(1, k + 1):
            t += draft_step(context + m * j)
        return t

    def describe(self) -> dict[str, object]:
        return {
            **self.target.describe(),
            "speculative_draft": self.draft.describe() if self.draft is not None else None,
            "draft_fraction": None if self.draft is not None else self.draft_fraction,
        }

    def envelope_warnings(self, steps: object) -> list[str]:
        return envelope_warnings(self.target, steps)

    def envelope_report(self, steps: object) -> dict[str, object] | None:
        return envelope_report(self.target, steps)
