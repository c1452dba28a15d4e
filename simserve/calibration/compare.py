"""Side by side with a real benchmark: a `vllm bench serve --save-result` JSON against a simserve
run directory, metric by metric, with the relative error of the simulation.

The JSON's keys are the ones simserve's summary copies (DESIGN §5: `mean_/median_/pNN_<m>_ms`,
`request_throughput`, ...), so most metrics compare key to key. With `--save-detailed` the JSON
also holds per-request arrays (`ttfts`, `itls`, `input_lens`, `output_lens`, seconds), from which
distributions are computed the way vLLM computes its summary, and compared with the run's
requests.csv.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simserve.errors import InputError

__all__ = ["CompareRow", "compare", "format_comparison", "load_real", "load_run"]

STAT_METRICS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E"))
STATS = (("mean", "Mean"), ("median", "Median"), ("p99", "P99"))
SCALARS = (
    ("completed", "Completed requests"),
    ("duration", "Duration (s)"),
    ("request_throughput", "Request throughput (req/s)"),
    ("request_goodput", "Request goodput (req/s)"),
    ("output_throughput", "Output token throughput (tok/s)"),
    ("total_token_throughput", "Total token throughput (tok/s)"),
)
DIST_PERCENTILES = (10, 50, 90, 99)


@dataclass(frozen=True)
class CompareRow:
    """One metric: the real and simulated values and the simulation's relative error (%)."""

    section: str
    label: str
    real: float | None
    sim: float | None

    @property
    def error_pct(self) -> float | None:
        """(sim - real) / real in percent; None when either side is missing or real is 0."""
        if self.real is None or self.sim is None or self.real == 0:
            return None
        return 100.0 * (self.sim / self.real - 1.0)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def load_real(path: str | Path) -> dict[str, Any]:
    """A `vllm bench serve --save-result` JSON (legacy `request_goodput:` key accepted)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("benchmark result file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"not a JSON file ({exc})", source=str(path)) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object (vllm bench serve --save-result)",
                         source=str(path))
    # NOTE: vLLM's benchmark_serving.py wrote the key as "request_goodput:" (with a colon)
    # until it was fixed; both spellings mean the same number.
    if "request_goodput" not in data and "request_goodput:" in data:
        data["request_goodput"] = data["request_goodput:"]
    if not any(k in data for k in ("mean_ttft_ms", "ttfts", "request_throughput")):
        raise InputError("no vLLM benchmark metrics found (expected mean_ttft_ms, "
                         "request_throughput, ...)", source=str(path))
    return data


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """A simserve run directory's summary and (if present) its measured requests' columns."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("not a simserve run directory (no summary.json)",
                         source=str(run_dir)) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable summary.json ({exc})", source=str(summary_path)) from None
    requests_path = run_dir / "requests.csv"
    if not requests_path.is_file():
        return summary, None
    with requests_path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("measured", "True") in ("True", "1")]
    cols = {}
    for name in ("ttft_s", "tpot_s", "e2el_s", "prompt_len", "num_output_tokens"):
        if rows and name in rows[0]:
            cols[name] = np.array([float(r[name]) if r[name] not in ("", "nan") else np.nan
                                   for r in rows])
    return summary, cols


def _real_distributions(real: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """Per-request TTFT/TPOT/E2E (ms) and pooled ITL (ms) from --save-detailed arrays."""
    ttfts, itls = real.get("ttfts"), real.get("itls")
    out_lens = real.get("output_lens")
    if not isinstance(ttfts, list) or not isinstance(itls, list) or not isinstance(out_lens,
                                                                                   list):
        return None
    errors = real.get("errors") or [""] * len(ttfts)
    ttft, tpot, e2e, pooled = [], [], [], []
    for t, gaps, n, err in zip(ttfts, itls, out_lens, errors, strict=False):
        if err or not n:
            continue  # failed request (vLLM counts only successful ones)
        total = t + sum(gaps)
        ttft.append(t * 1e3)
        e2e.append(total * 1e3)
        pooled.extend(g * 1e3 for g in gaps)
        if n > 1:
            tpot.append((total - t) / (n - 1) * 1e3)
    return {"ttft": np.array(ttft), "tpot": np.array(tpot), "e2el": np.array(e2e),
            "itl": np.array(pooled)}


def compare(real: Mapping[str, Any], summary: Mapping[str, Any],
            requests: Mapping[str, np.ndarray] | None = None) -> list[CompareRow]:
    """Every metric both sides have, real vs simulated."""
    rows: list[CompareRow] = []
    for metric, name in STAT_METRICS:
        for stat, stat_name in STATS:
            key = f"{stat}_{metric}_ms"
            r, s = _number(real.get(key)), _number(summary.get(key))
            if r is not None or s is not None:
                rows.append(CompareRow(name, f"{stat_name} {name} (ms)", r, s))
    for key, label in SCALARS:
        r, s = _number(real.get(key)), _number(summary.get(key))
        if r is not None or s is not None:
            rows.append(CompareRow("Throughput", label, r, s))
    dist = _real_distributions(real)
    if dist is not None:
        sim_cols = {"ttft": "ttft_s", "tpot": "tpot_s", "e2el": "e2el_s"}
        for metric, name in STAT_METRICS:
            values = dist[metric]
            if values.size == 0:
                continue
            sim_values = None
            if requests is not None and metric in sim_cols and sim_cols[metric] in requests:
                v = requests[sim_cols[metric]] * 1e3
                sim_values = v[np.isfinite(v)]
            for p in DIST_PERCENTILES:
                r = float(np.percentile(values, p))
                if sim_values is not None and sim_values.size:
                    s: float | None = float(np.percentile(sim_values, p))
                else:
                    s = _number(summary.get(f"p{p}_{metric}_ms")) if p != 50 else _number(
                        summary.get(f"median_{metric}_ms"))
                rows.append(CompareRow("Distribution (--save-detailed)",
                                       f"P{p} {name} (ms)", r, s))
    return rows


def _cell(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_comparison(rows: list[CompareRow], real_name: str, sim_name: str) -> str:
    """A console table: metric, real, simulated, relative error."""
    width = 72
    lines = ["=" * width, f"{'Real vs simulated':^{width}}", f"real: {real_name}",
             f"sim:  {sim_name}", "=" * width,
             f"{'metric':<38}{'real':>11}{'sim':>11}{'error':>11}"]
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines.append(f"{' ' + section + ' ':-^{width}}")
        err = row.error_pct
        err_text = "n/a" if err is None else f"{err:+.1f}%"
        lines.append(f"{row.label:<38}{_cell(row.real):>11}{_cell(row.sim):>11}{err_text:>11}")
    lines.append("=" * width)
    return "\n".join(lines)
