"""Prompt and output lengths in tokens: fixed, uniform (vLLM's random dataset), lognormal, trace.

Every function draws only from the generator it is given (the scenario's length stream), so
lengths never depend on how arrivals were drawn.
"""

from __future__ import annotations

import math

import numpy as np

from simserve.config import LengthsConfig
from simserve.workload.traces import Trace

__all__ = ["sample_lengths", "sample_trace_rows", "uniform_bounds"]


def uniform_bounds(mean_len: int, range_ratio: float) -> tuple[int, int]:
    """Inclusive [low, high] token bounds of the uniform distribution, exactly as vLLM's."""
    # NOTE: vLLM RandomDataset: low = int(L*(1-r)), high = int(L*(1+r)), sampled with
    # randint(low, high + 1); it raises the output low bound to 1 so no request asks for 0
    # tokens. We raise both bounds' floor to 1 (a prompt needs a token too).
    low = int(mean_len * (1 - range_ratio))
    high = int(mean_len * (1 + range_ratio))
    return max(low, 1), max(high, 1)


def sample_lengths(
    config: LengthsConfig, num_requests: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths (int64 >= 1) for a synthetic distribution, prompts drawn first."""
    if config.dist == "fixed":
        return (
            np.full(num_requests, config.prompt_len, dtype=np.int64),
            np.full(num_requests, config.output_len, dtype=np.int64),
        )
    if config.dist == "uniform":
        return (
            _uniform(config.prompt_len, config.range_ratio, num_requests, rng),
            _uniform(config.output_len, config.range_ratio, num_requests, rng),
        )
    if config.dist == "lognormal":
        return (
            _lognormal(config.prompt_len, config.prompt_sigma, num_requests, rng),
            _lognormal(config.output_len, config.output_sigma, num_requests, rng),
        )
    if config.dist == "trace":
        raise ValueError("trace lengths need the trace: use sample_trace_rows()")
    raise ValueError(f"unknown length distribution {config.dist!r}")


def sample_trace_rows(trace: Trace, num_requests: int, rng: np.random.Generator) -> np.ndarray:
    """Randomly chosen trace rows, so each request keeps a real prompt/output pair (and the
    row's priority).

    Rows are drawn without replacement while the trace has enough of them, else with replacement.
    """
    return rng.choice(len(trace), size=num_requests, replace=num_requests > len(trace))


def _uniform(
    mean_len: int, range_ratio: float, num_requests: int, rng: np.random.Generator
) -> np.ndarray:
    """Integers uniform on vLLM's inclusive bounds around `mean_len`."""
    low, high = uniform_bounds(mean_len, range_ratio)
    return rng.integers(low, high, size=num_requests, endpoint=True, dtype=np.int64)


def _lognormal(
    mean_len: int, sigma: float, num_requests: int, rng: np.random.Generator
) -> np.ndarray:
    """Lognormal lengths with arithmetic mean `mean_len` and log-space `sigma`, rounded, >= 1."""
    # mu = ln(mean) - sigma^2/2 makes E[X] = mean; real request lengths are right-skewed like this.
    mu = math.log(mean_len) - sigma * sigma / 2.0
    values = np.rint(rng.lognormal(mean=mu, sigma=sigma, size=num_requests))
    return np.maximum(values, 1.0).astype(np.int64)
