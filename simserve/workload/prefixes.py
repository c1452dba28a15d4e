"""Shared prompt prefixes: which of G system prompts each request (or session) starts with.

Group ids are drawn from the scenario's prefix stream only, so adding prefixes never changes
arrivals or output lengths (common random numbers); only prompts shorter than the prefix
change, lengthened to hold it.
"""

from __future__ import annotations

import numpy as np

from simserve.config import PrefixConfig

__all__ = ["draw_groups", "lengthen_prompts"]


def draw_groups(config: PrefixConfig, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` group ids (int64 in [0, num_groups)): uniform, or Zipf's law over the groups'
    popularity ranks, group g (g = 0, 1, ...) with probability proportional to
    1 / (g + 1)**zipf_s, so group 0 is the most popular."""
    num_groups = config.num_groups
    if config.popularity == "uniform":
        return rng.integers(0, num_groups, size=count, dtype=np.int64)
    # NOTE: Zipf over a finite set of prompts, the usual model of content popularity (e.g.
    # the shared-prefix workloads of SGLang's RadixAttention paper); numpy's zipf draws from
    # an unbounded support, so the finite law is drawn by its weights.
    weights = np.arange(1, num_groups + 1, dtype=np.float64) ** -config.zipf_s
    return rng.choice(num_groups, size=count, p=weights / weights.sum()).astype(np.int64)


def lengthen_prompts(prompt_len: np.ndarray, shared_len: int) -> np.ndarray:
    """Prompt lengths with the shared prefix counted inside: a prompt shorter than
    shared_len + 1 tokens becomes shared_len + 1 long, so every request has at least one
    token of its own after the prefix (as a chat request has its user message)."""
    return np.maximum(np.asarray(prompt_len, dtype=np.int64), shared_len + 1)
