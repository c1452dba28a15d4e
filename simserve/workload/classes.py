"""Request classes: which class each request belongs to, its priority, and its TTFT budget.

A scenario may split its requests into classes (`workload.classes`: a name, a share, a
priority, an SLO). Each request is drawn into a class by share from its own random stream, so
adding classes never changes arrivals or lengths (common random numbers); a trace with a
`priority` column instead gives each row its priority, and its class is the class of that
priority. The TTFT budget is what `engine.queue: deadline` sorts by (arrival + budget).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simserve.config import FluidityConfig, RequestClass, SloConfig
from simserve.errors import InputError

__all__ = ["ClassLabels", "assign_classes", "class_slos", "ttft_budgets_s"]


@dataclass(frozen=True, eq=False)
class ClassLabels:
    """Each request's class (`class_id`, an index into `names`) and every class's name,
    priority and SLO in force (its own fields, the scenario's `metrics.slo` for the rest)."""

    names: tuple[str, ...]
    priorities: tuple[int, ...]
    slos: tuple[SloConfig, ...]
    class_id: np.ndarray  # int64 per request

    @classmethod
    def of(cls, classes: Sequence[RequestClass], slo: SloConfig,
           class_id: np.ndarray) -> ClassLabels:
        return cls(tuple(c.name for c in classes), tuple(c.priority for c in classes),
                   class_slos(classes, slo), class_id)


def class_slos(classes: Sequence[RequestClass], slo: SloConfig) -> tuple[SloConfig, ...]:
    """Each class's SLO in force: its own targets, and `slo`'s where it sets none."""
    out = []
    for c in classes:
        own = c.slo or SloConfig()
        out.append(dataclasses.replace(slo, **{
            f.name: getattr(own, f.name) for f in dataclasses.fields(SloConfig)
            if getattr(own, f.name) is not None}))
    return tuple(out)


def assign_classes(
    classes: Sequence[RequestClass],
    num_requests: int,
    rng: np.random.Generator,
    trace_priority: np.ndarray | None = None,
    trace_source: str | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(priority, class_id) per request; None where the scenario does not use it.

    Without classes a trace's priorities are used as they are. With classes, a trace's
    priority picks the class of that priority (classes must then have distinct priorities);
    otherwise each request is drawn into a class with probability share / total share.
    """
    if not classes:
        return trace_priority, None
    priorities = np.array([c.priority for c in classes], dtype=np.int64)
    if trace_priority is None:
        shares = np.array([c.share for c in classes], dtype=np.float64)
        class_id = rng.choice(len(classes), size=num_requests, p=shares / shares.sum())
        class_id = class_id.astype(np.int64)
        return priorities[class_id], class_id
    if np.unique(priorities).size != priorities.size:
        raise InputError(
            "classes share a priority, so the trace's priority column cannot tell them apart; "
            "give every class its own priority",
            field="workload.classes",
        )
    order = np.argsort(priorities)
    position = np.searchsorted(priorities[order], trace_priority)
    position = np.minimum(position, priorities.size - 1)
    unknown = priorities[order][position] != trace_priority
    if np.any(unknown):
        row = int(np.argmax(unknown))
        raise InputError(
            f"{trace_source or 'the trace'}: request {row + 1} has priority "
            f"{int(trace_priority[row])}, which no class has (classes: "
            f"{', '.join(f'{c.name}={c.priority}' for c in classes)})",
            field="workload.classes",
        )
    return np.asarray(trace_priority, dtype=np.int64), order[position].astype(np.int64)


def ttft_budgets_s(
    prompt_len: np.ndarray,
    class_id: np.ndarray | None,
    classes: Sequence[RequestClass],
    slo: SloConfig,
    fluidity: FluidityConfig,
) -> np.ndarray:
    """Each request's TTFT budget in seconds: its class's TTFT SLO (or `metrics.slo`'s), and
    where none is set, the prompt-length-aware first-token deadline of `metrics.fluidity`
    (Etalon's D_p), so longer prompts get longer budgets."""
    budget = fluidity.first_token_deadline_s(np.asarray(prompt_len, dtype=np.float64))
    if class_id is None:
        if slo.ttft_ms is not None:
            budget[:] = slo.ttft_ms / 1000.0
        return budget
    for index, class_slo in enumerate(class_slos(classes, slo)):
        if class_slo.ttft_ms is not None:
            budget[class_id == index] = class_slo.ttft_ms / 1000.0
    return budget
