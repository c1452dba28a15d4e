"""Multi-turn sessions: which requests are turns of one conversation, and their prompts.

Requests are numbered session by session (a session's turns are consecutive requests), so a
turn always follows an earlier request (`after[i] = i - 1`). Each turn's prompt is the
previous turn's prompt and output plus a new message: the conversation's whole history is its
prefix. Turn counts and think times are drawn from the scenario's session stream only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simserve.config import SessionsConfig

__all__ = ["SessionPlan", "plan_sessions"]


@dataclass(frozen=True, eq=False)
class SessionPlan:
    """Per request: its prompt length, session index, the request it follows (-1: a
    session's first turn) and the think time before it (0 for first turns); and per session,
    its first request (`first`, increasing)."""

    prompt_len: np.ndarray  # int64
    session: np.ndarray  # int64
    after: np.ndarray  # int64
    think_s: np.ndarray  # float64
    first: np.ndarray  # int64, one per session

    @property
    def num_sessions(self) -> int:
        return int(self.first.size)

    @property
    def stream(self) -> np.ndarray:
        """Each request's conversation stream: its session's first request, so a one-turn
        session is the stream a lone request has anyway (its own id)."""
        return self.first[self.session]


def draw_turns(config: SessionsConfig, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` session lengths in turns (int64 >= 1) with mean `config.turns`."""
    mean = config.turns
    if config.turns_dist == "fixed":
        return np.full(count, mean, dtype=np.int64)
    if config.turns_dist == "geometric":
        # NOTE: a session that ends after each turn with a fixed probability, the memoryless
        # model of conversation length; mean 1/p = turns.
        return rng.geometric(1.0 / mean, size=count).astype(np.int64)
    if config.turns_dist == "uniform":
        return rng.integers(1, 2 * mean - 1, size=count, endpoint=True, dtype=np.int64)
    raise ValueError(f"unknown turns distribution {config.turns_dist!r}")


def draw_think_s(config: SessionsConfig, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` think times in seconds (float64 >= 0) with mean `config.think_time_s`."""
    if config.think_dist == "fixed":
        return np.full(count, config.think_time_s, dtype=np.float64)
    if config.think_dist == "exponential":
        return rng.exponential(config.think_time_s, size=count)
    raise ValueError(f"unknown think-time distribution {config.think_dist!r}")


def plan_sessions(
    config: SessionsConfig,
    message_len: np.ndarray,
    output_len: np.ndarray,
    rng: np.random.Generator,
    *,
    min_first_prompt: int = 1,
    max_model_len: int | None = None,
) -> SessionPlan:
    """Lay out len(message_len) requests as sessions, request i bringing a new message of
    `message_len[i]` tokens and an output of `output_len[i]`.

    A session's first prompt is its message (at least `min_first_prompt` tokens: a shared
    system prompt and one token); each next turn's prompt is the previous prompt, its output
    and the new message. A session ends after its drawn number of turns, or earlier when its
    next turn would not fit `max_model_len` (prompt + output, the engine's limit): that
    request starts a new session instead, so the run still has exactly len(message_len)
    requests, and the last session may be cut short.
    """
    num_requests = int(np.asarray(message_len).size)
    turns = draw_turns(config, num_requests, rng).tolist()
    think = draw_think_s(config, num_requests, rng)
    limit = max_model_len if max_model_len is not None else float("inf")
    prompt = [0] * num_requests
    session = [0] * num_requests
    after = [-1] * num_requests
    first: list[int] = []
    turns_left = 0
    history = 0  # tokens of the session so far: last prompt + its output
    for i, (message, output) in enumerate(
            zip(np.asarray(message_len).tolist(), np.asarray(output_len).tolist(), strict=True)):
        if turns_left > 0 and history + message + output <= limit:
            turns_left -= 1
            after[i] = i - 1
            prompt[i] = history + message
        else:
            turns_left = turns[len(first)] - 1
            first.append(i)
            prompt[i] = max(message, min_first_prompt)
        session[i] = len(first) - 1
        history = prompt[i] + output
    after_array = np.array(after, dtype=np.int64)
    return SessionPlan(
        prompt_len=np.array(prompt, dtype=np.int64),
        session=np.array(session, dtype=np.int64),
        after=after_array,
        think_s=np.where(after_array >= 0, think, 0.0),
        first=np.array(first, dtype=np.int64),
    )
