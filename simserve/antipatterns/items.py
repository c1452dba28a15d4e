"""The evaluation checklist: fifteen things a fair evaluation of an LLM serving system does.

Every catalog entry names the items it illustrates, every `simserve check` finding the item it
violates, and the catalog report ends with this list and the entries that show each item. The
items follow the three dimensions of the anti-pattern catalog (baseline fairness, evaluation
setup, metric design); they are simserve's summary of Etalon's and Sarathi-Serve's practice,
not a quotation of any paper.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHECKLIST", "ChecklistItem"]


@dataclass(frozen=True)
class ChecklistItem:
    """One item: its id (C1..C15), its dimension and what a fair evaluation does."""

    id: str
    dimension: str
    text: str


_ITEMS = (
    ("C1", "baseline fairness", "every system runs on the same engine build, kernels and "
     "hardware, or engineering differences (e.g. CUDA graphs) are measured apart"),
    ("C2", "baseline fairness", "baselines are current and tuned for the same SLO as the "
     "proposed system (batch cap, token budget)"),
    ("C3", "baseline fairness", "optimisations orthogonal to the claim are on in every system or "
     "in none, and resources are equal or results are normalised per GPU"),
    ("C4", "evaluation setup", "requests come from production-like traces: heterogeneous "
     "lengths, long prompts included"),
    ("C5", "evaluation setup", "the prompt and output length statistics of the workload are "
     "reported"),
    ("C6", "evaluation setup", "arrivals are open loop (Poisson, bursty or a trace) and the "
     "load is swept up to and past the knee"),
    ("C7", "evaluation setup", "a sustainability guard (e.g. median scheduling delay, or rates "
     "below saturation) separates steady state from overload"),
    ("C8", "evaluation setup", "runs have enough requests and repetitions, exclude warm-up, and "
     "report intervals"),
    ("C9", "evaluation setup", "hardware, parallelism, model and engine version are stated"),
    ("C10", "metric design", "TTFT includes the time queued, and scheduling delay is reported "
     "on its own"),
    ("C11", "metric design", "per-token gaps are reported as distributions (P50, P99, max), "
     "not only as TPOT or normalized latency"),
    ("C12", "metric design", "streaming is judged by a deadline- or stall-aware metric "
     "(fluidity-index, fluid token rate)"),
    ("C13", "metric design", "TTFT targets grow with the prompt length"),
    ("C14", "metric design", "capacity and goodput state the SLO's threshold, percentile and "
     "population (per token or per request)"),
    ("C15", "metric design", "bursty token emission (speculative decoding) is judged by "
     "deadlines or the rate users see, not by TBT or TPOT alone"),
)

CHECKLIST: dict[str, ChecklistItem] = {i: ChecklistItem(i, d, t) for i, d, t in _ITEMS}
