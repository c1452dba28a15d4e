"""Metrics: simulation records -> per-request tables and vLLM-compatible run summaries.

`request_metrics` gives the `requests.csv` columns, `summarize` the `summary.json` dict (the keys
of `vllm bench serve --save-result` plus simserve extras), and the Etalon deadline metrics are
available on raw CSR token arrays (DESIGN §5).
"""

from simserve.metrics.fluidity import (
    deadline_misses,
    fluid_tbt_deadline_s,
    fluid_token_rate,
    fluidity_index,
)
from simserve.metrics.requests import REQUEST_COLUMNS, request_metrics, window_masks
from simserve.metrics.stats import max_concurrency, percentile_label
from simserve.metrics.summary import VLLM_SCALAR_KEYS, VLLM_STAT_METRICS, summarize

__all__ = [
    "REQUEST_COLUMNS",
    "VLLM_SCALAR_KEYS",
    "VLLM_STAT_METRICS",
    "deadline_misses",
    "fluid_tbt_deadline_s",
    "fluid_token_rate",
    "fluidity_index",
    "max_concurrency",
    "percentile_label",
    "request_metrics",
    "summarize",
    "window_masks",
]
