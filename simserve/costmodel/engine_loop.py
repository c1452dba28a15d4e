"""The serving engine's CPU time per step, which no kernel table sees (DESIGN §4, issue 14 item 4).

Between two forward passes a vLLM engine schedules the next batch, prepares its inputs (token
ids, positions, block tables), samples and hands the new tokens to the frontend, which
detokenises and streams them. That work is physically named here:

- `per_step_us`: a fixed cost of every step (the scheduler's pass, launching the step);
- `per_seq_us`: per running sequence (its scheduling, input rows, sampling metadata and output);
- `per_token_us`: per scheduled token (building the inputs of prefill chunks).

How it combines with the GPU time depends on the engine generation:

- V0 (vLLM <= 0.6, `engine.version: v0`): one process does it all in sequence with the GPU, so
  step = GPU + per_step + per_seq x seqs + per_token x tokens.
- V1 (vLLM >= 0.8, `engine.version: v1`): the engine core schedules and prepares the next step
  while the GPU runs the current one, and detokenising and streaming happen in the frontend
  process, so only the fixed part stays serial: step = per_step + max(GPU, per_seq x seqs +
  per_token x tokens). The CPU is invisible while the GPU is slower, and sets the pace when it is
  not (small models at large batches).

The values are fitted only on real serving runs (`simserve calibrate engine-loop`, REPORT.md
§7) and shipped in `calibration/kernels/<framework>/engine_loop.yaml`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from simserve.costmodel.kernel_tables import kernels_dir
from simserve.errors import InputError

__all__ = ["ENGINE_VERSIONS", "LoopTerms", "loop_terms", "loop_terms_path"]

ENGINE_VERSIONS: tuple[str, ...] = ("v0", "v1")
_FIELDS = ("per_step_us", "per_seq_us", "per_token_us")


@dataclass(frozen=True)
class LoopTerms:
    """CPU time of one engine step around its forward pass (see module doc)."""

    version: str = "v1"
    per_step_us: float = 0.0
    per_seq_us: float = 0.0
    per_token_us: float = 0.0
    source: str = "none"
    #: The largest batch (running sequences) and step (scheduled tokens) of the real runs the
    #: terms were fitted on; None: not recorded. Past them the per-sequence and per-token
    #: terms are extrapolated linearly (runs warn).
    fitted_max_seqs: int | None = None
    fitted_max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.version not in ENGINE_VERSIONS:
            raise InputError(f"must be one of {', '.join(ENGINE_VERSIONS)}, got "
                             f"{self.version!r}", field="engine.version")
        for name in _FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise InputError(f"must be a number >= 0, got {value!r}", field=name)

    def step_us(self, gpu_us: float, seqs: int, tokens: int) -> float:
        """The step's wall time (us) given its GPU time."""
        cpu = self.per_seq_us * seqs + self.per_token_us * tokens
        if self.version == "v0":
            return gpu_us + self.per_step_us + cpu
        return self.per_step_us + (gpu_us if gpu_us > cpu else cpu)

    def describe(self) -> dict[str, object]:
        return {"version": self.version, "per_step_us": self.per_step_us,
                "per_seq_us": self.per_seq_us, "per_token_us": self.per_token_us,
                "source": self.source}

    def extrapolation_warning(self, num_seqs: Any, num_tokens: Any) -> str | None:
        """One line counting the steps (per-step arrays) past the batches and step sizes the
        terms were fitted on, where the terms that grow with them matter; None if none."""
        masks = []
        if self.per_seq_us and self.fitted_max_seqs is not None:
            masks.append((np.asarray(num_seqs) > self.fitted_max_seqs,
                          f"more than {self.fitted_max_seqs} running sequences"))
        if self.per_token_us and self.fitted_max_tokens is not None:
            masks.append((np.asarray(num_tokens) > self.fitted_max_tokens,
                          f"more than {self.fitted_max_tokens} scheduled tokens"))
        outside = [(int(m.sum()), what) for m, what in masks if m.any()]
        if not outside:
            return None
        total = int(np.asarray(num_seqs).size)
        count = int(np.logical_or.reduce([m for m, _ in masks]).sum())
        detail = ", ".join(f"{n} with {what}" for n, what in outside)
        return (f"{count} of {total} steps ({100.0 * count / total:.1f}%) past the real runs "
                f"the {self.version} engine loop was fitted on ({detail}; fitted on "
                f"{self.source}): their CPU time is extrapolated")


def loop_terms_path(framework: str = "vllm") -> Any:
    """Where the fitted loop terms of `framework` are shipped."""
    return kernels_dir() / framework / "engine_loop.yaml"


@functools.cache
def _shipped(framework: str) -> dict[str, Any]:
    path = loop_terms_path(framework)
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def loop_terms(version: str, framework: str = "vllm") -> LoopTerms:
    """The shipped loop terms of one engine generation (zeros, if none were fitted)."""
    entry = _shipped(framework).get("versions", {}).get(version)
    if entry is None:
        return LoopTerms(version, source="none fitted")
    limits = {k: int(entry[k]) for k in ("fitted_max_seqs", "fitted_max_tokens") if k in entry}
    return LoopTerms(version, *(float(entry[k]) for k in _FIELDS),
                     source=str(entry.get("fitted_on", "")), **limits)
