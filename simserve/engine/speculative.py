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


# Uniforms drawn from the generator at a time by the geometric and beta models. Drawing them in
# blocks gives the same numbers in the same order as drawing each step's (the sampler owns its
# generator), with one numpy call per block instead of several per step.
_BLOCK = 8192


@dataclass
class AcceptanceSampler:
    """Draws accepted-token counts for a batch of verified requests."""

    config: AcceptanceConfig
    k: int
    rng: np.random.Generator
    request_alpha: np.ndarray | None = None  # beta model: one alpha per request
    # geometric model: accepted counts of the drawn block; beta: logs of the drawn uniforms
    _block: np.ndarray = field(default_factory=lambda: np.zeros(0))
    _pos: int = 0
    _request_log_alpha: np.ndarray | None = None

    @classmethod
    def create(
        cls, config: AcceptanceConfig, k: int, rng: np.random.Generator, num_requests: int
    ) -> AcceptanceSampler:
        # NOTE: per-request alphas are drawn before the run, so two systems compared on the
        # same seed see the same easy and hard requests (common random numbers).
        alphas = rng.beta(config.a, config.b, num_requests) if config.model == "beta" else None
        sampler = cls(config, k, rng, alphas)
        if alphas is not None:
            sampler._request_log_alpha = _log(alphas)
        return sampler

    def sample(self, request_ids: np.ndarray) -> np.ndarray:
        """Accepted draft tokens (0..k) for each request id, int64 (read-only)."""
        k, cfg, m = self.k, self.config, request_ids.size
        if cfg.model == "geometric":
            return self._next(m)
        if cfg.model == "beta":
            assert self.request_alpha is not None and self._request_log_alpha is not None
            return self._geometric(self.request_alpha[request_ids],
                                   self._request_log_alpha[request_ids], self._next(m))
        if cfg.model == "per_position":
            accept = self.rng.random((m, k)) < np.asarray(cfg.rates)
            # Accepted = leading run of successes (stop at the first rejection).
            return np.cumprod(accept, axis=1).sum(axis=1).astype(np.int64)
        weights = np.asarray(cfg.histogram, dtype=float)
        return self.rng.choice(k + 1, size=m, p=weights / weights.sum()).astype(np.int64)

    def _next(self, m: int) -> np.ndarray:
        """The next `m` entries of the block (accepted counts or log-uniforms), drawing a new
        block when this one runs out."""
        pos = self._pos
        if pos + m > self._block.size:
            fresh = _log(self.rng.random(max(_BLOCK, m)))
            if self.config.model == "geometric":
                alpha = np.full(fresh.size, self.config.alpha)
                fresh = self._geometric(alpha, _log(alpha), fresh)
            self._block = np.concatenate((self._block[pos:].astype(fresh.dtype), fresh))
            pos = 0
        self._pos = pos + m
        return self._block[pos : pos + m]

    def _geometric(self, alpha: np.ndarray, log_alpha: np.ndarray,
                   log_u: np.ndarray) -> np.ndarray:
        # Successes before the first failure: P(A >= j) = alpha^j, capped at k.
        count = np.floor(log_u / log_alpha)
        count = np.where(alpha > 0, count, 0)
        return np.minimum(count, self.k).astype(np.int64)


def _log(x: np.ndarray) -> np.ndarray:
    """Natural log, -inf at 0 (without numpy's divide-by-zero warning machinery per call)."""
    out = np.full(x.size, -np.inf)
    return np.log(x, out=out, where=x > 0.0)
