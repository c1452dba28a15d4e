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
from simserve.formatting import fmt_number, fmt_percent

__all__ = [
    "CompareRow",
    "compare",
    "format_comparison",
    "load_real",
    "load_run",
    "mismatches",
]

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
    """A finite number as a float (None for anything else, huge integers included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


# Files of a few GB are not benchmark results; refuse them before reading.
MAX_RESULT_BYTES = 1 << 30
# SGLang's bench_serving names E2E latency `*_e2e_latency_ms` where vLLM writes `*_e2el_ms`.
_SGLANG_E2E = ("mean", "median", "std", "p90", "p95", "p99")
_DETAIL_KEYS = ("ttfts", "itls", "output_lens", "input_lens", "errors")


def _documents(text: str, source: str) -> list[Any]:
    """Every JSON value in `text`: one, or several one after the other (one per line, as
    `vllm bench serve --append-result` and SGLang's `--output-file` write them)."""
    decoder = json.JSONDecoder()
    documents = []
    position = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n":
            position += 1
        if position >= len(text):
            return documents
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON ({exc.msg}, column {exc.colno})", source=source,
                             line=exc.lineno) from None
        except RecursionError:
            raise InputError("JSON nested too deeply", source=source) from None
        documents.append(value)


def load_real(path: str | Path, index: int | None = None) -> dict[str, Any]:
    """A `vllm bench serve --save-result` JSON or an SGLang `bench_serving` result (its keys
    read as vLLM's), checked; `index` picks one result of a file holding several. A `.csv` is
    a served run's per-request timings (`served_run_result`)."""
    path = Path(path)
    source = str(path)
    if path.suffix.lower() == ".csv":
        return served_run_result(path)
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            raise InputError(f"is larger than {MAX_RESULT_BYTES >> 30} GiB: not a benchmark "
                             "result", source=source)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("benchmark result file not found", source=source) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a benchmark result file", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise InputError(f"cannot read it ({reason})", source=source) from None
    documents = _documents(text, source)
    if not documents:
        raise InputError("is empty (expected a vllm bench serve --save-result JSON)",
                         source=source)
    if index is None and len(documents) > 1:
        raise InputError(f"holds {len(documents)} results (one JSON per line); choose one with "
                         f"--index 0..{len(documents) - 1} (-1: the last)", source=source)
    if index is not None and not -len(documents) <= index < len(documents):
        raise InputError(f"must be in 0..{len(documents) - 1} (or -1 for the last), got "
                         f"{index}", field="--index", source=source)
    data = documents[index if index is not None else 0]
    if not isinstance(data, dict):
        raise InputError("expected a JSON object (vllm bench serve --save-result)",
                         source=source)
    data = dict(data)
    # NOTE: vLLM's benchmark_serving.py wrote the key as "request_goodput:" (with a colon)
    # until it was fixed; both spellings mean the same number.
    if "request_goodput" not in data and "request_goodput:" in data:
        data["request_goodput"] = data["request_goodput:"]
    if _is_sglang(data):
        data = _sglang_as_vllm(data)
    if not any(k in data for k in ("mean_ttft_ms", "ttfts", "request_throughput")):
        raise InputError("no vLLM benchmark metrics found (expected mean_ttft_ms, "
                         "request_throughput, ...)", source=source)
    _check_details(data, source)
    return data


SERVED_COLUMNS = ("arrival_s", "prompt_len", "output_len", "ttft_ms", "latency_ms")


def served_run_result(path: str | Path) -> dict[str, Any]:
    """A served run's per-request CSV (`arrival_s,prompt_len,output_len,ttft_ms,latency_ms`,
    the layout of the DistServe ground-truth files) as the summary vLLM computes from the same
    requests: counts and throughputs over the run's span, mean/median/P99 of TTFT, TPOT (over
    requests with more than one output token) and E2E latency."""
    from simserve.calibration.served_run import read_run_columns

    cols = read_run_columns(path, SERVED_COLUMNS, "a served run's per-request timings")
    ends_s = cols["arrival_s"] + cols["latency_ms"] / 1e3
    duration_s = float(ends_s.max() - cols["arrival_s"].min())
    if duration_s <= 0:
        raise InputError("its requests span no time (arrival_s and latency_ms)",
                         source=str(path))
    out_tokens = cols["output_len"]
    several = out_tokens > 1
    tpot_ms = (cols["latency_ms"][several] - cols["ttft_ms"][several]) / (out_tokens[several] - 1)
    result: dict[str, Any] = {
        "result_format": "served-run CSV",
        "completed": int(out_tokens.size),
        "duration": duration_s,
        "request_throughput": out_tokens.size / duration_s,
        "output_throughput": float(out_tokens.sum()) / duration_s,
        "total_token_throughput": float(out_tokens.sum() + cols["prompt_len"].sum())
        / duration_s,
    }
    for metric, values in (("ttft", cols["ttft_ms"]), ("tpot", tpot_ms),
                           ("e2el", cols["latency_ms"])):
        if values.size:
            result[f"mean_{metric}_ms"] = float(np.mean(values))
            result[f"median_{metric}_ms"] = float(np.median(values))
            result[f"p99_{metric}_ms"] = float(np.percentile(values, 99))
    return result


def _is_sglang(data: Mapping[str, Any]) -> bool:
    """Whether a result was written by SGLang's bench_serving (its own key names)."""
    return "mean_e2e_latency_ms" in data or "total_output_tokens_retokenized" in data


def _sglang_as_vllm(data: dict[str, Any]) -> dict[str, Any]:
    """SGLang's result with vLLM's key names added (the values are the same statistics)."""
    out = dict(data)
    for stat in _SGLANG_E2E:
        key = f"{stat}_e2e_latency_ms"
        if key in data and f"{stat}_e2el_ms" not in data:
            out[f"{stat}_e2el_ms"] = data[key]
    if "total_throughput" in data and "total_token_throughput" not in data:
        out["total_token_throughput"] = data["total_throughput"]
    out["result_format"] = "sglang"
    return out


def _check_details(data: Mapping[str, Any], source: str) -> None:
    """The `--save-detailed` arrays, when present: one entry per request in each, numbers
    where numbers belong, one list of gaps per request in `itls`."""
    present = [k for k in _DETAIL_KEYS if k in data]
    if not present:
        return
    for key in ("ttfts", "itls", "output_lens"):
        if key not in data:
            raise InputError(f"has {', '.join(present)} but no {key} (vllm bench serve "
                             "--save-detailed writes both)", field=key, source=source)
    for key in present:
        if not isinstance(data[key], list):
            raise InputError(f"expected a list (one entry per request), got "
                             f"{type(data[key]).__name__}", field=key, source=source)
    lengths = {key: len(data[key]) for key in present}
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise InputError(f"the per-request arrays differ in length ({sizes})", field="ttfts",
                         source=source)

    def bad(key: str, i: int, expected: str) -> InputError:
        return InputError(f"entry {i}: expected {expected}, got {data[key][i]!r}"[:200],
                          field=key, source=source)

    for i, value in enumerate(data["ttfts"]):
        if _number(value) is None or value < 0:
            raise bad("ttfts", i, "a time in seconds >= 0")
    for i, gaps in enumerate(data["itls"]):
        if not isinstance(gaps, list):
            raise bad("itls", i, "one list of inter-token gaps per request")
        if any(_number(g) is None or g < 0 for g in gaps):
            raise bad("itls", i, "gaps in seconds >= 0")
    for key in ("output_lens", "input_lens"):
        for i, value in enumerate(data.get(key, [])):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(key, i, "a token count >= 0")
    for i, value in enumerate(data.get("errors", [])):
        if value is not None and not isinstance(value, str):
            raise bad("errors", i, "an error message (a string)")


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """A simserve run directory's summary and (if present) its measured requests' columns."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("not a simserve run directory (no summary.json)",
                         source=str(run_dir)) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"unreadable summary.json ({exc})", source=str(summary_path)) from None
    if not isinstance(summary, dict):
        raise InputError("is not a JSON object", source=str(summary_path))
    requests_path = run_dir / "requests.csv"
    if not requests_path.is_file():
        return summary, None
    try:
        with requests_path.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh)
                    if r.get("measured", "True") in ("True", "1")]
        cols = {}
        for name in ("ttft_s", "tpot_s", "e2el_s", "prompt_len", "num_output_tokens"):
            if rows and name in rows[0]:
                cols[name] = np.array([float(r[name]) if r[name] not in ("", "nan") else np.nan
                                       for r in rows])
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError) as exc:
        raise InputError(f"unreadable requests.csv ({exc})", source=str(requests_path)) from None
    return summary, cols


def _family(text: str) -> str:
    """Lower-case letters and digits only: 'NVIDIA H100 80GB' -> 'nvidiah10080gb'."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _real_gpu(real: Mapping[str, Any]) -> str | None:
    """The GPU a result names (vLLM and SGLang record none; `--metadata gpu=...` adds it)."""
    for key in ("gpu", "gpu_name", "gpu_type", "hardware", "device"):
        if isinstance(real.get(key), str) and real[key].strip():
            return real[key]
    return None


def _sim_rate(scenario: Mapping[str, Any] | None) -> float | None:
    """The request rate a run's scenario.yaml asked for (inf: all at once; None: no rate)."""
    arrival = ((scenario or {}).get("workload") or {}).get("arrival") or {}
    if not isinstance(arrival, Mapping):
        return None
    if arrival.get("process") == "offline":
        return math.inf
    rate = _number(arrival.get("rate"))
    return rate if arrival.get("process") in ("poisson", "gamma", "constant", "trace") else None


def _real_rate(real: Mapping[str, Any]) -> float | None:
    value = real.get("request_rate")
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def mismatches(real: Mapping[str, Any], summary: Mapping[str, Any],
               scenario: Mapping[str, Any] | None = None) -> list[str]:
    """What differs between the real and the simulated setup (model, GPU, request rate), as
    sentences; empty when nothing does or neither side says."""
    found = []
    real_model, sim_model = real.get("model_id"), summary.get("model_id")
    # NOTE: vLLM records the Hugging Face id (meta-llama/Meta-Llama-3.1-8B-Instruct), the summary
    # the catalog name (llama-3.1-8b): the catalog name's letters and digits must appear in the
    # id's last part; for the GPU, the catalog name's first part (h100) in what was recorded.
    if (isinstance(real_model, str) and isinstance(sim_model, str)
            and _family(sim_model) not in _family(real_model.rsplit("/", 1)[-1])):
        found.append(f"the real run served {real_model}, the simulation {sim_model}")
    real_gpu, sim_gpu = _real_gpu(real), summary.get("hardware")
    if (real_gpu is not None and isinstance(sim_gpu, str)
            and _family(sim_gpu.split("-")[0]) not in _family(real_gpu)):
        found.append(f"the real run used {real_gpu}, the simulation {sim_gpu}")
    real_rate, sim_rate = _real_rate(real), _sim_rate(scenario)
    if real_rate is not None and sim_rate is not None:
        same = (real_rate == sim_rate if math.isinf(real_rate) or math.isinf(sim_rate)
                else math.isclose(real_rate, sim_rate, rel_tol=0.01))
        if not same:
            found.append(f"the real run's request rate was {fmt_number(real_rate)} req/s, the "
                         f"simulation's {fmt_number(sim_rate)} req/s")
    return found


def _real_distributions(real: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """Per-request TTFT/TPOT/E2E (ms) and pooled ITL (ms) from --save-detailed arrays."""
    ttfts, itls = real.get("ttfts"), real.get("itls")
    out_lens = real.get("output_lens")
    if not isinstance(ttfts, list) or not isinstance(itls, list) or not isinstance(out_lens,
                                                                                   list):
        return None
    errors = real.get("errors") or [""] * len(ttfts)
    ttft, tpot, e2e, pooled = [], [], [], []
    # load_real checked that the arrays are one entry per request each.
    for t, gaps, n, err in zip(ttfts, itls, out_lens, errors, strict=True):
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


def _cell(value: float | None) -> str:
    return fmt_number(value)


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
        err_text = "n/a" if err is None else fmt_percent(err / 100, signed=True)
        lines.append(f"{row.label:<38}{_cell(row.real):>11}{_cell(row.sim):>11}{err_text:>11}")
    lines.append("=" * width)
    return "\n".join(lines)
