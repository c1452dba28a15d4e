"""How every figure of `simserve.plots` is drawn and saved: the shared colour palette, a new
stand-alone `Figure`, latency formatting for legends, the empty-panel message, and PNG output.

Figures are built directly (no pyplot, no global backend or rcParams change, never `show()`);
`save_figure` renders PNG through the Agg canvas.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Okabe-Ito colour-blind-safe palette: one meaning per colour across all figures.
QUEUED_COLOR = "#BBBBBB"
PREFILL_COLOR = "#E69F00"
PREFILL_SPAN_COLOR = "#F6D58E"
DECODE_COLOR = "#0072B2"
RECOMPUTE_COLOR = "#8C5A00"
BURST_COLOR = "#CC79A7"
SLO_COLOR = "#D55E00"
PREEMPT_COLOR = "#D55E00"
KV_WAIT_COLOR = "#A8DCC9"
KV_TRANSFER_COLOR = "#009E73"

DPI = 150


def _figure(width_in: float, height_in: float) -> Figure:
    """A new stand-alone figure with constrained layout (no pyplot state involved)."""
    return Figure(figsize=(width_in, height_in), layout="constrained")


def _fmt(value: float) -> str:
    """A latency for a legend: 3 significant digits, never in e-notation."""
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _no_data(ax: Axes, message: str) -> None:
    """Say on the axes why they are empty, instead of drawing a blank plot."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG (150 dpi, tight bounding box), creating parent directories."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI, bbox_inches="tight")
    return out
