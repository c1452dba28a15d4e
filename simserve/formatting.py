"""How simserve writes a number for people: one rule for reports, console tables and figures.

A value keeps four significant digits (123.44 ms -> "123.4 ms", 0.012345 -> "0.01235") and is
never in e-notation between 1e-4 and 1e15; from 1,000 up it is a whole number with thousands
separators ("4,938 ms"). Ratios ("1.88x") keep two decimals, the precision a verdict is stated
in. Report text, table cells, legends, bar labels and axis ticks all go through these helpers, so
the same number reads the same everywhere.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt_interval", "fmt_number", "fmt_ratio", "key_label", "number_or_none"]

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
    """A finite real number as float; None for anything else (None, text, bool, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
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
