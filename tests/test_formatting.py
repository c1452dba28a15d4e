"""One number formatter: the helpers of `simserve.formatting`, and a scan of simserve/ that
refuses a numeric format spec (`:.1f`, `:g`, `:,`, `%.2f`, ...) anywhere else, so a number
cannot print one way in a report and another on a figure or the console."""

from __future__ import annotations

import ast
import math
import re
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simserve.formatting import (
    fmt_fixed,
    fmt_number,
    fmt_percent,
    fmt_plain,
    fmt_ratio,
    fmt_ticks,
    round_significant,
)

PACKAGE = Path(__file__).resolve().parent.parent / "simserve"

# Format specs that only align or pad text ("<40", ">11", "^50", "-^72"): layout, not numbers.
_LAYOUT_SPEC = re.compile(r"^(?:.?[<>^=])?\d*s?$")
# A %-conversion that formats a number ("%d", "%.1f", "%5.2e"); "%s" and "%%" are text.
_PERCENT_NUMBER = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[diouxXeEfFgG]")
# matplotlib's own string formatters bypass `formatting` the same way a format spec does.
_STRING_FORMATTERS = {"FormatStrFormatter", "StrMethodFormatter", "PercentFormatter"}

# The short list of format specs that are not numbers for people, each with its reason.
ALLOWED = {
    # Run ids (p0003-r01) are directory names, zero-padded so that they sort.
    ("experiments/sweep/spec.py", "00d"),
    # A fitted engine-loop term passed back to a scenario as an override (parsed, not read).
    ("calibration/engine_loop_fit.py", ".6f"),
    # A served run's per-request CSV, the replay's input: data columns at their precision.
    ("calibration/served_v1.py", ".6f"),
    ("calibration/served_v1.py", ".3f"),
    # Cost-model notes, which summary.json keeps (its warnings, its cost-model description's
    # keys): summaries stay byte-identical with earlier versions' for the same scenario.
    ("costmodel/calibrated.py", ".1f"),
    ("costmodel/engine_loop.py", ".1f"),
    ("costmodel/kernels.py", ".1f"),
    ("costmodel/kernels.py", ".0f"),
    ("costmodel/kernels.py", "g"),
}


def _spec_text(spec: ast.JoinedStr) -> str:
    """A format spec as written, a nested `{...}` counted as "0" ("0{width}d" -> "00d")."""
    return "".join(str(v.value) if isinstance(v, ast.Constant) else "0" for v in spec.values)


def ad_hoc_formats(source: str) -> list[tuple[int, str]]:
    """(line, what) for every number formatted outside `simserve.formatting` in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FormattedValue):
            if node.format_spec is not None:
                spec = _spec_text(node.format_spec)  # type: ignore[arg-type]
                if not _LAYOUT_SPEC.match(spec):
                    found.append((node.lineno, spec))
            call = node.value
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "round":
                found.append((node.lineno, "round() in an f-string"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) \
                and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str) \
                and _PERCENT_NUMBER.search(node.left.value):
            found.append((node.lineno, "%-formatting"))
        elif isinstance(node, ast.Call):
            func = node.func
            name = getattr(func, "id", None) or getattr(func, "attr", None)
            if name == "format" and isinstance(func, ast.Name):
                found.append((node.lineno, "format()"))
            elif name == "format" and isinstance(func, ast.Attribute) \
                    and isinstance(func.value, ast.Constant) and isinstance(func.value.value, str):
                specs = [spec for _, _, spec, _ in string.Formatter().parse(func.value.value)
                         if spec and not _LAYOUT_SPEC.match(spec)]
                found += [(node.lineno, spec) for spec in specs]
            elif name in _STRING_FORMATTERS:
                found.append((node.lineno, name))
    return found


def test_the_scan_finds_each_kind_of_ad_hoc_format():
    # The scan must be able to fail: one of each kind it refuses, and what it lets through.
    source = (
        "a = f'{x:.1f} ms {y:,} {z:g} {w:.0%} {v:.{n}f}'\n"
        "b = f'{round(x, 1)} ms'\n"
        "c = '%.2f s' % x\n"
        "d = format(x, '.3g')\n"
        "e = '{:.2f}'.format(x)\n"
        "f = FormatStrFormatter('%d')\n"
        "ok = f'{label:<40} {text:>11} {title:-^72} {name!r} {x} {fmt_number(x)}' + '%s' % x\n"
    )
    found = ad_hoc_formats(source)
    assert sorted(line for line, _ in found) == [1, 1, 1, 1, 1, 2, 3, 4, 5, 6]


def test_no_number_is_formatted_outside_the_formatting_module():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "formatting.py":
            continue
        for line, what in ad_hoc_formats(path.read_text()):
            if (rel, what) not in ALLOWED:
                offenders.append(f"simserve/{rel}:{line}: {what}")
    assert not offenders, ("format numbers with simserve.formatting (fmt_number, fmt_percent, "
                           "fmt_ratio, ...), not ad hoc:\n" + "\n".join(offenders))


def test_the_allow_list_has_no_stale_entries():
    used = set()
    for rel, what in ALLOWED:
        path = PACKAGE / rel
        if any(spec == what for _, spec in ad_hoc_formats(path.read_text())):
            used.add((rel, what))
    assert used == ALLOWED


# --------------------------------------------------------------------------- the helpers


def test_percent_is_the_number_times_100():
    assert fmt_percent(0.1) == "10%"
    assert fmt_percent(0.031234) == "3.123%"
    assert fmt_percent(0.031234, signed=True) == "+3.123%"
    assert fmt_percent(-0.2, signed=True) == "-20%"
    assert fmt_percent(0.0, signed=True) == "0%"
    assert fmt_percent(None) == "n/a"
    assert fmt_percent(12.5) == "1,250%"


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_percent_agrees_with_fmt_number(fraction):
    text = fmt_percent(fraction)
    assert text == f"{fmt_number(100 * fraction)}%"


def test_numpy_numbers_print_like_python_ones():
    # Counts and maxima often come from NumPy arrays (np.int64 is no `int`).
    assert fmt_number(np.int64(28694)) == fmt_number(28694) == "28,694"
    assert fmt_number(np.float32(0.5)) == "0.5"
    assert fmt_percent(np.float64(0.3504)) == "35.04%"
    assert fmt_number(np.bool_(True)) == "n/a"


def test_fixed_keeps_vllms_layout():
    assert fmt_fixed(3.14159, 2) == "3.14"
    assert fmt_fixed(0.5, 4) == "0.5000"
    assert fmt_fixed(1234.5, 2) == "1234.50"  # vLLM prints no separators
    assert fmt_fixed(17, 2) == "17"
    assert fmt_fixed(None, 2) == "n/a"


def test_plain_and_round_significant():
    assert fmt_plain(1000.0) == "1000" and fmt_plain(0.25) == "0.25"
    assert round_significant(123456.0, 3) == 123000.0
    assert round_significant(0.43068, 3) == 0.431
    assert round_significant(0.0, 3) == 0.0 and math.isinf(round_significant(math.inf, 3))


@given(st.floats(min_value=1e-6, max_value=1e9), st.integers(min_value=1, max_value=8))
def test_round_significant_is_what_fmt_plain_prints(value, digits):
    rounded = round_significant(value, digits)
    assert float(f"{rounded:.{digits}g}") == rounded


def test_ticks_read_like_the_reports_and_stay_distinct():
    assert fmt_ticks([0.0, 0.5, 1.0, 1.5]) == ["0", "0.5", "1", "1.5"]
    assert fmt_ticks([0.0, 2500.0, 5000.0]) == ["0", "2,500", "5,000"]
    # Large values close together: fmt_number would print every tick "1,000".
    assert fmt_ticks([1000.2, 1000.4, 1000.6]) == ["1,000.2", "1,000.4", "1,000.6"]


@pytest.mark.parametrize("value", [123.44, 0.012345, 4938.2, 1.88])
def test_a_value_reads_the_same_as_a_number_and_as_a_tick(value):
    assert fmt_ticks([value])[0] == fmt_number(value)
    assert fmt_ratio(value).endswith("x")
