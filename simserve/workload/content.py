"""What requests' token sequences have in common, for prefix caching (no real tokens).

Token identity is by content ids, never by tokens: a request's sequence (prompt, then output) is
cut into KV blocks, and a block is named by a *space* and an index in it; two blocks with the
same name hold the same tokens after the same prefix (vLLM's block hash, chained over the
blocks before it). Three sources of shared content:

- a shared prefix group (a system prompt): the first `group_len` tokens of every request of
  group g are the same, so their full blocks are blocks 0.. of space ("group", g);
- a conversation stream: the turns of one session are prefixes of one token stream (each
  turn's prompt is the history so far plus a new message), so block j of any turn is block j
  of space ("stream", s); a request alone is a stream of its own, so a request recomputed
  after a preemption finds its own blocks;
- explicit block ids (Mooncake traces): one id per `hash_block_tokens` tokens of the prompt
  (equal ids, equal content and prefix); engine block j lies in hash block
  j * block_size // hash_block_tokens, and the output continues in the request's stream.

A block that straddles a group prefix's end holds unique tokens after it, so it belongs to the
stream. Spaces are numbered `kind + 3 * id` so that a space is one int (cheap to hash).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GROUP", "HASH", "STREAM", "Segment", "SharedContent"]

GROUP, STREAM, HASH = 0, 1, 2

# (space, first block index in the space, number of blocks)
Segment = tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class SharedContent:
    """Per-request content ids (see the module docstring); arrays have one entry per request.

    `group`: shared-prefix group (-1: none); `group_len`: tokens of that prefix at the start of
    the prompt. `stream`: conversation stream (default: the request's own id). `hash_offsets`
    (n + 1 offsets) and `hash_ids`: explicit ids of the prompt's `hash_block_tokens`-token
    blocks (None: not given).
    """

    group: np.ndarray | None = None
    group_len: np.ndarray | None = None
    stream: np.ndarray | None = None
    hash_offsets: np.ndarray | None = None
    hash_ids: np.ndarray | None = None
    hash_block_tokens: int = 512

    def __post_init__(self) -> None:
        if (self.group is None) != (self.group_len is None):
            raise ValueError("group and group_len come together")
        if (self.hash_offsets is None) != (self.hash_ids is None):
            raise ValueError("hash_offsets and hash_ids come together")
        if self.group is not None and self.hash_ids is not None:
            raise ValueError("explicit block ids already say what is shared: no groups too")
        if self.hash_block_tokens < 1:
            raise ValueError("hash_block_tokens must be >= 1")
        for name in ("group", "group_len", "stream", "hash_offsets", "hash_ids"):
            value = getattr(self, name)
            if value is not None:
                value = np.array(value, dtype=np.int64)
                value.setflags(write=False)
                object.__setattr__(self, name, value)

    def check(self, num_requests: int, block_size: int | None = None) -> None:
        """Raise ValueError if the arrays do not fit `num_requests` requests (or, given the
        engine's block size, if explicit hash blocks are not whole engine blocks)."""
        for name in ("group", "group_len", "stream"):
            value = getattr(self, name)
            if value is not None and value.size != num_requests:
                raise ValueError(f"{name} has {value.size} values for {num_requests} requests")
        if self.hash_offsets is not None and self.hash_offsets.size != num_requests + 1:
            raise ValueError("hash_offsets needs one offset per request plus one")
        if block_size is not None and self.hash_ids is not None \
                and self.hash_block_tokens % block_size:
            raise ValueError(f"hash blocks of {self.hash_block_tokens} tokens are not whole "
                             f"KV blocks of {block_size}")

    def segments(self, request_id: int, block_size: int, num_tokens: int,
                 prompt_len: int) -> list[Segment]:
        """The full KV blocks of the first `num_tokens` tokens of request `request_id` (whose
        prompt has `prompt_len` tokens), as runs of consecutive blocks of one space each, in
        sequence order."""
        num_blocks = num_tokens // block_size
        if num_blocks <= 0:
            return []
        stream = int(self.stream[request_id]) if self.stream is not None else request_id
        out: list[Segment] = []
        first_unique = 0
        if self.hash_ids is not None:
            assert self.hash_offsets is not None
            lo = int(self.hash_offsets[request_id])
            hi = int(self.hash_offsets[request_id + 1])
            per_hash = self.hash_block_tokens // block_size
            # Ids name prompt blocks only: a block holding output tokens is the request's own.
            covered = min(num_blocks, prompt_len // block_size)
            j = 0
            for h in self.hash_ids[lo:hi].tolist():
                take = min(per_hash, covered - j)
                if take <= 0:
                    break
                out.append((HASH + 3 * h, 0, take))
                j += take
            first_unique = j
        elif self.group is not None:
            assert self.group_len is not None
            g = int(self.group[request_id])
            if g >= 0:
                shared = min(int(self.group_len[request_id]), prompt_len) // block_size
                shared = min(shared, num_blocks)
                if shared:
                    out.append((GROUP + 3 * g, 0, shared))
                first_unique = shared
        if first_unique < num_blocks:
            out.append((STREAM + 3 * stream, first_unique, num_blocks - first_unique))
        return out
