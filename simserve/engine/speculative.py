"""Acceptance models for speculative decoding: how many drafted tokens each verify accepts.

Each sampler returns, for the requests verified in one step, the number of accepted draft
tokens in [0, k]; the engine emits accepted + 1 tokens (the bonus token from the target), all
stamped at the step's end (DESIGN §3). Randomness comes only from the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simserve.config import AcceptanceConfig

__all__ = ["AcceptanceSampler", "expected_tokens_per_step"]


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Mean tokens emitted per verify under geometric acceptance: (1 - a^(k+1)) / (1 - a)
    (Leviathan et al., 2023)."""
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass
class AcceptanceSampler:
    """Draws accepted-token counts for a batch of verified requests."""

    config: AcceptanceConfig
    k: int
    rng: np.random.Generator
    request_alpha: np.ndarray | None = None  # beta model: one alpha per request
    # geometric model: alpha and its log per batch size, made once
    _alpha_by_size: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def create(
        cls, config: AcceptanceConfig, k: int, rng: np.random.Generator, num_requests: int
    ) -> AcceptanceSampler:
        # NOTE: per-request alphas are drawn before the run, so two systems compared on the
        # same seed see the same easy and hard requests (common random numbers).
        alphas = rng.beta(config.a, config.b, num_requests) if config.model == "beta" else None
        return cls(config, k, rng, alphas)

    def sample(self, request_ids: np.ndarray) -> np.ndarray:
        """Accepted draft tokens (0..k) for each request id, int64."""
        k, cfg, m = self.k, self.config, request_ids.size
        if cfg.model == "geometric":
            cached = self._alpha_by_size.get(m)
            if cached is None:
                alpha = np.full(m, cfg.alpha)
                cached = self._alpha_by_size[m] = (alpha, _log(alpha))
            return self._geometric(*cached)
        if cfg.model == "beta":
            assert self.request_alpha is not None
            alpha = self.request_alpha[request_ids]
            return self._geometric(alpha, _log(alpha))
        if cfg.model == "per_position":
            accept = self.rng.random((m, k)) < np.asarray(cfg.rates)
            # Accepted = leading run of successes (stop at the first rejection).
            return np.cumprod(accept, axis=1).sum(axis=1).astype(np.int64)
        weights = np.asarray(cfg.histogram, dtype=float)
        return self.rng.choice(k + 1, size=m, p=weights / weights.sum()).astype(np.int64)

    def _geometric(self, alpha: np.ndarray, log_alpha: np.ndarray) -> np.ndarray:
        # Successes before the first failure: P(A >= j) = alpha^j, capped at k.
        u = self.rng.random(alpha.size)
        count = np.floor(_log(u) / log_alpha)
        count = np.where(alpha > 0, count, 0)
        return np.minimum(count, self.k).astype(np.int64)


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log, -inf at 0 (without numpy's divide-by-zero warning machinery per call)."""
    out = np.full(x.size, -np.inf)
    return np.log(x, out=out, where=x > 0.0)
