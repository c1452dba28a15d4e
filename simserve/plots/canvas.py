"""How every figure of simserve is drawn and saved: the shared colour palette, a new
stand-alone `Figure`, ticks numbered as the reports print numbers, the empty-panel message, and
PNG output (every figure of every command is written by `save_figure`).

Figures are built directly (no pyplot, no global backend or rcParams change, never `show()`);
`save_figure` renders PNG through the Agg canvas.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import (
    Formatter,
    FuncFormatter,
    LogFormatterSciNotation,
    ScalarFormatter,
)

from simserve.formatting import fmt_number, fmt_ticks

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

# NOTE: one colour per system in every figure and notebook, so a reader who learnt "blue is
# chunked prefill" in one figure can trust it in the next. "no spec" is the case study's
# chunked-prefill engine without speculation, so it keeps chunked prefill's blue. Okabe-Ito
# first, then Paul Tol's muted scheme (olive, wine) for the placements; vermillion stays the SLO.
SYSTEM_COLORS: dict[str, str] = {
    "chunked prefill": "#0072B2",
    "no spec": "#0072B2",
    "spec": "#009E73",
    "prefill first": "#E69F00",
    "static": "#CC79A7",
    "mixed": "#56B4E9",
    "colocated": "#999933",
    "disaggregated": "#882255",
}
# Systems without a colour of their own get these, in order of appearance.
OTHER_COLORS = ("#332288", "#AA4499", "#DDCC77", "#88CCEE", "#661100", "#44AA99", "#117733")

DPI = 150


def _figure(width_in: float, height_in: float) -> Figure:
    """A new stand-alone figure with constrained layout (no pyplot state involved)."""
    return Figure(figsize=(width_in, height_in), layout="constrained")


def system_key(name: str) -> str:
    """The name a system's colour is filed under: "no_spec", "No spec" -> "no spec"."""
    return " ".join(name.replace("_", " ").split()).lower()


def system_colors(names: Iterable[str]) -> dict[str, str]:
    """A colour per system name: its own (`SYSTEM_COLORS`) where it has one, else the next of
    `OTHER_COLORS` not used by another system of the same figure."""
    names = list(dict.fromkeys(names))
    used = {SYSTEM_COLORS[system_key(n)] for n in names if system_key(n) in SYSTEM_COLORS}
    spare = iter(c for c in OTHER_COLORS if c not in used)
    colors = {}
    for name in names:
        own = SYSTEM_COLORS.get(system_key(name))
        colors[name] = own if own is not None else next(spare, "0.4")
    return colors


class _NumberTicks(Formatter):
    """Tick labels as the reports print numbers (`formatting.fmt_ticks`: "7,000", "0.25",
    never an offset or "1e6" in the corner)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return fmt_number(x)

    def format_ticks(self, values: list[float]) -> list[str]:
        return fmt_ticks(values)


def number_ticks(axis: Axis) -> None:
    """Label a linear axis as the reports print numbers ("7,000", "0.25")."""
    axis.set_major_formatter(_NumberTicks())


def plain_log_ticks(axis: Axis, *, minor: bool = True) -> None:
    """Label a log-scaled axis with plain numbers ("20", "0.5", "1,000"), never "2x10^1".

    Decades are labelled; when the axis spans at most 2.5 decades the 2x and 5x ticks are too,
    and under one decade the 3x as well, so a short log axis still has numbers to read
    (`minor=False`: decades only). Labels are decided when the figure is drawn, from its final
    limits.
    """

    def decades() -> float:
        low, high = sorted(axis.get_view_interval())
        return math.log10(high / low) if low > 0 and high > low else math.inf

    def minor_label(value: float, _pos: int | None = None) -> str:
        if value <= 0:
            return ""
        mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
        span = decades()
        if (span <= 1 and mantissa in (2.0, 3.0, 5.0)) or (span <= 2.5 and mantissa in (2.0, 5.0)):
            return fmt_number(value)
        return ""

    axis.set_major_formatter(_NumberTicks())
    if minor:
        axis.set_minor_formatter(FuncFormatter(minor_label))


def _no_data(ax: Axes, message: str) -> None:
    """Say on the axes why they are empty, instead of drawing a blank plot."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def label_numbers(fig: Figure) -> None:
    """Number every axis of `fig` that still has matplotlib's default tick labels ("1.0",
    "1e6" offsets, "10^2") as the reports print numbers; axes a figure labelled itself (text
    ticks, hidden minor labels) keep theirs."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            major = type(axis.get_major_formatter())
            if major is ScalarFormatter:
                number_ticks(axis)
            elif major is LogFormatterSciNotation:
                default_minor = type(axis.get_minor_formatter()) is LogFormatterSciNotation
                plain_log_ticks(axis, minor=default_minor)


def figure_png(fig: Figure, *, dpi: int = DPI, crop: bool = True) -> bytes:
    """A figure as PNG bytes, its ticks numbered as the reports print numbers
    (`label_numbers`); `crop`: a tight bounding box."""
    buffer = io.BytesIO()
    label_numbers(fig)
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if crop else None)
    return buffer.getvalue()


def save_laid_out(fig: Figure, path: str | Path, *, dpi: int = DPI) -> Path:
    """Write a figure laid out by `tight_layout` at its own size (no cropping): its ticks are
    numbered first, so the layout makes room for the labels it will have ("10,000" is wider
    than matplotlib's "$10^4$")."""
    label_numbers(fig)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi, crop=False)


def save_figure(fig: Figure, path: str | Path, *, dpi: int = DPI, crop: bool = True) -> Path:
    """Write a figure as PNG (`figure_png`), creating parent directories."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(figure_png(fig, dpi=dpi, crop=crop))
    return out
