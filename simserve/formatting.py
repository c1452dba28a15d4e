"""How simserve writes a number for people: one rule for reports, console tables and figures.

A value keeps four significant digits (123.44 ms -> "123.4 ms", 0.012345 -> "0.01235") and is
never in e-notation between 1e-4 and 1e15; from 1,000 up it is a whole number with thousands
separators ("4,938 ms"). A percentage is the same number times 100 ("12.35%"), a ratio ("1.88x")
keeps two decimals, the precision a verdict is stated in. Report text, table cells, error
messages, legends, bar labels and axis ticks all go through these helpers, so the same number
reads the same everywhere (tests/test_formatting.py refuses a format spec anywhere else).

Two declared exceptions: `fmt_fixed` (a fixed number of decimals) draws the `simserve run`
console block in `vllm bench serve`'s layout, which users diff against vLLM's own output; and
`fmt_plain` writes numbers inside machine-readable text that is parsed back (SLO rules).
`round_significant` rounds a value that goes into a scenario (a rate) so that it reads well.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "fmt_fixed",
    "fmt_interval",
    "fmt_number",
    "fmt_percent",
    "fmt_plain",
    "fmt_ratio",
    "fmt_ticks",
    "key_label",
    "number_or_none",
    "round_significant",
]

MISSING = "n/a"
_ACRONYMS = {"ttft": "TTFT", "tpot": "TPOT", "tbt": "TBT", "itl": "ITL", "e2el": "E2EL",
             "slo": "SLO", "kv": "KV", "rps": "req/s"}
_UNITS = {
    "request_throughput": "req/s",
    "request_goodput": "req/s",
    "output_throughput": "tok/s",
    "total_token_throughput": "tok/s",
    "fluid_token_rate": "tok/s",
    "capacity_rps": "req/s",
    "capacity_per_gpu_rps": "req/s per GPU",
    "capacity_per_usd": "req/USD",
}


def number_or_none(value: Any) -> float | None:
    """A finite real number (NumPy's too) as float; None for anything else (None, text, bool,
    NaN, inf)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        return None
    return float(value) if math.isfinite(value) else None


def fmt_number(value: Any, unit: str = "") -> str:
    """`value` with four significant digits (whole numbers with separators from 1,000 up) and
    its unit; "n/a" when missing, "unbounded" for an infinite value."""
    if value == "inf" or (isinstance(value, float) and math.isinf(value) and value > 0):
        return "unbounded"
    number = number_or_none(value)
    if number is None:
        return MISSING
    magnitude = abs(number)
    if magnitude >= 1e15:
        text = f"{number:.3g}"
    elif magnitude >= 999.95:
        text = f"{number:,.0f}"
    elif magnitude >= 1e-4 or number == 0:
        text = f"{number:.4g}"
    else:
        text = f"{number:.3g}"
    if text == "-0":
        text = "0"
    return f"{text} {unit}".rstrip()


def fmt_percent(fraction: Any, *, signed: bool = False) -> str:
    """A fraction as a percentage, the number as `fmt_number` prints it: 0.1 -> "10%",
    0.031234 -> "3.123%"; `signed`: "+3.123%" (relative errors, changes)."""
    number = number_or_none(fraction)
    if number is None:
        return MISSING
    text = fmt_number(100.0 * number)
    if signed and text != "0" and not text.startswith("-"):
        text = "+" + text
    return f"{text}%"


def fmt_fixed(value: Any, decimals: int) -> str:
    """`value` with exactly `decimals` decimals ("12.30"), a whole number (int) as it is.

    NOTE: only for the `simserve run` console block, which keeps `vllm bench serve`'s
    two-decimal layout (its "Serving Benchmark Result") so that users can diff the two outputs
    line by line; everything else uses `fmt_number`.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.{decimals}f}"
    else:
        text = MISSING if value is None else str(value)
    return text


def fmt_plain(value: float) -> str:
    """A number in Python's general format ("1000", "0.5", "1e+06") for machine-readable text
    a person also reads and a parser reads back: an SLO rule such as "p99_tbt_ms<=200", the
    status a capacity search stores in capacity.json and summary.csv."""
    return f"{value:g}"


def round_significant(value: float, digits: int) -> float:
    """`value` rounded to `digits` significant digits (decimal rounding, as printed), so that a
    rate a command derives reads well in scenario files and reports."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def fmt_ticks(values: Sequence[float]) -> list[str]:
    """Labels of one axis's ticks: each as `fmt_number` prints it, unless that prints two ticks
    alike (a narrow range of large values, e.g. 1,000.2 s and 1,000.4 s): then all with the
    fewest decimals that tell them apart, with thousands separators."""
    labels = [fmt_number(v) for v in values]
    if len(set(labels)) == len(labels):
        return labels
    for decimals in range(1, 10):
        fixed = [MISSING if number_or_none(v) is None else f"{v:,.{decimals}f}" for v in values]
        if len(set(fixed)) == len(fixed):
            return fixed
    return labels


def fmt_ratio(value: Any) -> str:
    """A ratio such as an advantage or a speedup: "1.88x" ("unbounded", "n/a")."""
    if value == "inf" or (isinstance(value, float) and math.isinf(value) and value > 0):
        return "unbounded"
    number = number_or_none(value)
    return MISSING if number is None else f"{number:.2f}x"


def fmt_interval(low: Any, high: Any, unit: str = "", *, what: str = "95% CI",
                 ratio: bool = False) -> str:
    """An interval as "95% CI 1,234–1,456 ms" (ratios: "95% CI 1.80x–1.95x")."""
    if ratio:
        return f"{what} {fmt_ratio(low)}–{fmt_ratio(high)}"
    return f"{what} {fmt_number(low)}–{fmt_number(high, unit)}"


def key_label(key: str, *, unit: bool = True) -> str:
    """A summary key in words, with its unit: 'p99_tbt_ms' -> 'P99 TBT (ms)',
    'median_scheduling_delay_ms' -> 'median scheduling delay (ms)' (without: `unit=False`)."""
    stem, suffix = key, _UNITS.get(key)
    if key.endswith("_ms"):
        stem, suffix = key[:-3], "ms"
    elif key.endswith("_rps"):
        stem = key[:-4]
    words = []
    for part in stem.replace(".", "_").split("_"):
        if part in _ACRONYMS:
            words.append(_ACRONYMS[part])
        elif part[:1] == "p" and part[1:].replace(".", "").isdigit():
            words.append(part.upper())
        elif part:
            words.append(part)
    text = " ".join(words)
    return f"{text} ({suffix})" if unit and suffix else text
