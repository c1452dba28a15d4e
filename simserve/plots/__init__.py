"""Teaching and report figures: simulation records -> matplotlib `Figure` objects.

Every function returns a `matplotlib.figure.Figure` built directly (no pyplot, no global backend
or rcParams change, never `show()`), so figures are safe in tests, servers and notebooks alike;
`save_figure` renders PNG through the Agg canvas. Each figure states what it shows in its title,
puts units on its axes, and draws the SLO where one applies, so it reads without the code.

Modules: `canvas` (palettes with one colour per system, new figure, log-axis ticks, PNG output),
`instances` (what the figures read off a run's records about its instances), `timeline` (step
and token timelines), `latency` (latency CDFs and the sweep views), `kv` (KV-cache occupancy),
`run` (the standard figure set of one run).
"""

# Everything `simserve.plots` offered as one module is importable from here unchanged: the
# public figures and palette, and the private helpers the tests reach for (redundant aliases
# mark them as re-exports).
from simserve.plots.canvas import BURST_COLOR as BURST_COLOR
from simserve.plots.canvas import DECODE_COLOR as DECODE_COLOR
from simserve.plots.canvas import DPI as DPI
from simserve.plots.canvas import KV_TRANSFER_COLOR as KV_TRANSFER_COLOR
from simserve.plots.canvas import KV_WAIT_COLOR as KV_WAIT_COLOR
from simserve.plots.canvas import PREEMPT_COLOR as PREEMPT_COLOR
from simserve.plots.canvas import PREFILL_COLOR as PREFILL_COLOR
from simserve.plots.canvas import PREFILL_SPAN_COLOR as PREFILL_SPAN_COLOR
from simserve.plots.canvas import QUEUED_COLOR as QUEUED_COLOR
from simserve.plots.canvas import RECOMPUTE_COLOR as RECOMPUTE_COLOR
from simserve.plots.canvas import SLO_COLOR as SLO_COLOR
from simserve.plots.canvas import SYSTEM_COLORS as SYSTEM_COLORS
from simserve.plots.canvas import number_ticks, plain_log_ticks, save_figure, system_colors
from simserve.plots.instances import _has_virtual_engines as _has_virtual_engines
from simserve.plots.instances import _replica_step_ids as _replica_step_ids
from simserve.plots.kv import _preemption_steps as _preemption_steps
from simserve.plots.kv import kv_occupancy
from simserve.plots.latency import MAX_CDF_POINTS as MAX_CDF_POINTS
from simserve.plots.latency import OVERLOAD_TEXT as OVERLOAD_TEXT
from simserve.plots.latency import capacity_bars, latency_cdf, metric_vs_rate
from simserve.plots.run import _representative_requests as _representative_requests
from simserve.plots.run import run_figures, write_run_figures
from simserve.plots.timeline import GANTT_KINDS as GANTT_KINDS
from simserve.plots.timeline import _gantt as _gantt
from simserve.plots.timeline import step_timeline, token_timeline

__all__ = [
    "capacity_bars",
    "kv_occupancy",
    "latency_cdf",
    "metric_vs_rate",
    "number_ticks",
    "plain_log_ticks",
    "run_figures",
    "save_figure",
    "step_timeline",
    "system_colors",
    "token_timeline",
    "write_run_figures",
]
