"""The tiny base scenario the sweep tests share: constant 5 ms steps, at most 4 sequences,
fixed 32-token prompts and 6-token outputs, Poisson arrivals at 20 req/s."""

from __future__ import annotations


def tiny_base(num_requests: int, *, seed: int | None = 3) -> str:
    """The scenario YAML with `num_requests` requests (and `seed`, unless None)."""
    seed_line = f"seed: {seed}\n" if seed is not None else ""
    return (
        "name: tiny\n"
        f"{seed_line}"
        "cost_model: {kind: constant, step_time_ms: 5.0}\n"
        "engine: {max_num_seqs: 4, max_num_batched_tokens: 64}\n"
        "workload:\n"
        f"  num_requests: {num_requests}\n"
        "  arrival: {process: poisson, rate: 20.0}\n"
        "  lengths: {dist: fixed, prompt_len: 32, output_len: 6}\n"
    )
