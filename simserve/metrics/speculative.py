"""Speculative-decoding summary keys with the names and units `vllm bench serve` reports."""

from __future__ import annotations

from simserve.engine.records import SimulationResult

__all__ = ["spec_decode_summary"]


def spec_decode_summary(result: SimulationResult) -> dict[str, object]:
    """vLLM's spec-decode metrics; empty when the run did not speculate.

    acceptance_rate = accepted / drafted tokens (in %), acceptance_length = 1 + accepted per
    draft (tokens per verify step), per-position rate = drafts accepting position j / drafts.
    """
    k = result.num_speculative_tokens
    if not k:
        return {}
    drafts = result.spec_num_drafts
    per_position = [int(x) for x in result.spec_accepted_per_position]
    accepted = sum(per_position)
    draft_tokens = drafts * k
    return {
        "spec_decode_acceptance_rate": 100.0 * accepted / draft_tokens if draft_tokens else None,
        "spec_decode_acceptance_length": 1.0 + accepted / drafts if drafts else None,
        "spec_decode_num_drafts": drafts,
        "spec_decode_draft_tokens": draft_tokens,
        "spec_decode_accepted_tokens": accepted,
        "spec_decode_per_position_acceptance_rates": [
            x / drafts if drafts else None for x in per_position
        ],
    }
