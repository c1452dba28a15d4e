"""What each replica group of a co-located cluster served: its share of the requests, of the
output tokens, and its requests' mean latencies."""

from __future__ import annotations

import numpy as np

__all__ = ["group_requests"]


def _mean_ms(values: np.ndarray) -> float | None:
    """Mean in ms of the defined values (None when there are none)."""
    defined = values[~np.isnan(values)]
    return float(defined.mean() * 1e3) if defined.size else None


def group_requests(table: dict[str, np.ndarray], first: int, last: int) -> dict[str, object]:
    """The requests routed to replicas `first` .. `last - 1` (a group's), from the request
    table: how many, how many completed among the measured ones (the summary's `completed`),
    the output tokens they got (every request: cost per token counts them all), and the
    measured ones' mean TTFT and TPOT."""
    replica = table["replica"]
    routed = (replica >= first) & (replica < last)
    measured = routed & table["measured"]
    return {
        "num_routed": int(routed.sum()),
        "completed": int(measured.sum()),
        "num_output_tokens": int(table["num_output_tokens"][routed].sum()),
        "mean_ttft_ms": _mean_ms(table["ttft_s"][measured]),
        "mean_tpot_ms": _mean_ms(table["tpot_s"][measured]),
    }
