"""The sweep directory on disk: summary tables (CSV and parquet) and their per-point aggregates,
finished runs read back, and the directory's state file, checks and setup.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simserve import __version__
from simserve.errors import InputError
from simserve.experiments.atomic import temporary_sibling
from simserve.experiments.capacity import (
    CapacityResult,
    Probe,
    cluster_gpus,
    cluster_price,
    replication_seeds,
)
from simserve.experiments.sweep.layout import (
    CAPACITY_FILE,
    FORMAT_VERSION,
    POINTS_DIR,
    RUN_MARKER,
    SPEC_FILE,
    STATE_FILE,
)
from simserve.experiments.sweep.spec import SweepPlan, SweepRun
from simserve.experiments.sweep.worker import capacity_row, is_number, run_row

# Columns that identify a row rather than measure it.
ID_COLUMNS = ("run_id", "point", "replication", "seed")


def write_text_atomically(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename, so readers never see half of it."""
    tmp = temporary_sibling(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def _format_cell(value: Any) -> str:
    """A CSV cell: floats in shortest round-trip form, None as empty, booleans as true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else ""
    return str(value)


def _parse_cell(text: str) -> Any:
    """Inverse of `_format_cell`."""
    if text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of the rows, in order of first appearance."""
    return list(dict.fromkeys(k for row in rows for k in row))


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The rows as CSV text with a header line."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def read_csv_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a summary CSV with numbers, booleans and empty cells (None) parsed back."""
    import csv

    with Path(path).open(newline="") as fh:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _arrow_column(values: list[Any]) -> Any:
    """One typed parquet column: bool, int64, float64, or string for anything else."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.int64())
    if present and all(is_number(v) for v in present):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array([None if v is None else _format_cell(v) for v in values], type=pa.string())


def write_table(rows: Sequence[Mapping[str, Any]], csv_path: Path,
                parquet_path: Path | None) -> list[str]:
    """Write rows as CSV (and parquet when pyarrow is installed), each atomically; returns
    notes for the user (e.g. parquet skipped)."""
    columns = _columns(rows)
    write_text_atomically(csv_path, _csv_text(rows, columns))
    if parquet_path is None:
        return []
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return [f"{parquet_path.name} not written: pyarrow is not installed"]
    table = pa.table({c: _arrow_column([row.get(c) for row in rows]) for c in columns})
    tmp = temporary_sibling(parquet_path)
    pq.write_table(table, tmp)
    os.replace(tmp, parquet_path)
    return []


def _t_quantile(n: int) -> float:
    """Student's t 97.5% quantile with n - 1 degrees of freedom (95% two-sided intervals)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def aggregate_rows(rows: Sequence[Mapping[str, Any]], axis_keys: Sequence[str]) -> list[dict]:
    """Per point: the axes, the number of seeds, and `<key>_mean` / `<key>_ci95` (half-width of
    the t-based 95% confidence interval over seeds) of every numeric key."""
    by_point: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_point.setdefault(int(row["point"]), []).append(row)
    skip = set(ID_COLUMNS) | set(axis_keys)
    out = []
    for point in sorted(by_point):
        group = by_point[point]
        agg: dict[str, Any] = {"point": point}
        for key in axis_keys:
            agg[key] = group[0].get(key)
        agg["num_seeds"] = len(group)
        for key in _columns(group):
            if key in skip:
                continue
            values = [r.get(key) for r in group]
            numbers = [float(v) for v in values if is_number(v)]
            if not numbers or any(v is not None and not is_number(v) for v in values):
                continue
            data = np.asarray(numbers)
            agg[f"{key}_mean"] = float(np.mean(data))
            agg[f"{key}_ci95"] = (
                float(_t_quantile(data.size) * np.std(data, ddof=1) / math.sqrt(data.size))
                if data.size > 1 else None
            )
        out.append(agg)
    return out


def row_from_disk(run: SweepRun, plan: SweepPlan, sweep_dir: Path) -> dict[str, Any] | None:
    """The row of a finished run, rebuilt from its directory (None if not finished)."""
    out = sweep_dir / POINTS_DIR / run.run_id
    if plan.capacity is None:
        marker = out / RUN_MARKER
        if not marker.is_file():
            return None
        return run_row(run.prefix(), json.loads(marker.read_text()))
    marker = out / CAPACITY_FILE
    if not marker.is_file():
        return None
    data = json.loads(marker.read_text())["results"][0]
    probes = tuple(_probe_from_mapping(p) for p in data["probes"])
    # NOTE: capacity.json files written before num_gpus was recorded: the same number from the
    # point's scenario, so a resumed sweep's rows match an uninterrupted one's.
    num_gpus = data.get("num_gpus") or cluster_gpus(run.scenario)
    usd_per_hour = data["usd_per_hour"] if "usd_per_hour" in data else cluster_price(run.scenario)
    result = CapacityResult(
        rule=data["rule"], capacity_rps=data["capacity_rps"], low_rps=data["low_rps"],
        high_rps=data["high_rps"], status=data["status"], tolerance=data["tolerance"],
        probes=probes, num_gpus=num_gpus, usd_per_hour=usd_per_hour,
    )
    return capacity_row(run.prefix(), result, len(plan.capacity.seeds))


def _probe_from_mapping(data: Mapping[str, Any]) -> Probe:
    """A capacity probe read back from capacity.json."""
    return Probe(rate=data["rate"], passed=data["passed"], values=data["values"],
                 summaries=tuple(data["summaries"]))


def _state(plan: SweepPlan) -> dict[str, Any]:
    """The content of sweep.json: what the directory holds and the hash resume checks."""
    spec = plan.spec
    return {
        "format": FORMAT_VERSION,
        "name": spec.name,
        "spec_hash": plan.spec_hash,
        "simserve_version": __version__,
        "source": spec.source,
        "mode": plan.mode,
        "axes": list(spec.axis_keys),
        "replications": spec.replications,
        "root_seed": spec.root_seed,
        "seeds": replication_seeds(spec.root_seed, spec.replications),
        "slo": spec.slo or (spec.capacity or {}).get("slo"),
        "capacity": None if plan.capacity is None else plan.capacity.to_mapping(),
        "num_runs": len(plan.runs),
        "run_ids": [r.run_id for r in plan.runs],
    }


def check_sweep_dir(plan: SweepPlan, sweep_dir: Path, resume: bool) -> None:
    """Refuse a sweep directory that is not this sweep's (read-only; writes nothing)."""
    if not sweep_dir.exists():
        return
    if not sweep_dir.is_dir():
        raise InputError("exists and is not a directory", field="--out", source=str(sweep_dir))
    state_file = sweep_dir / STATE_FILE
    if not resume:
        if any(sweep_dir.iterdir()):
            hint = ("pass --resume to continue it" if state_file.is_file()
                    else "choose another --out")
            raise InputError(f"already exists and is not empty; {hint}", field="--out",
                             source=str(sweep_dir))
        return
    if not state_file.is_file():
        if any(sweep_dir.iterdir()):
            raise InputError("is not a sweep directory (no sweep.json); refusing to resume "
                             "into it", field="--out", source=str(sweep_dir))
        return
    try:
        state = json.loads(state_file.read_text())
        old_hash = state["spec_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError("has an unreadable sweep.json; refusing to resume into it",
                         field="--out", source=str(sweep_dir)) from None
    if old_hash != plan.spec_hash:
        raise InputError(
            f"was written by a different sweep spec ({state.get('name')!r}, spec hash "
            f"{str(old_hash)[:12]}, this one {plan.spec_hash[:12]}); choose another --out",
            field="--resume", source=str(sweep_dir),
        )


def init_sweep_dir(plan: SweepPlan, sweep_dir: Path) -> None:
    """Create the directory (spec and state files once) and clear leftovers of killed writes."""
    (sweep_dir / POINTS_DIR).mkdir(parents=True, exist_ok=True)
    if not (sweep_dir / STATE_FILE).is_file():
        write_text_atomically(sweep_dir / SPEC_FILE, plan.spec.text)
        write_text_atomically(sweep_dir / STATE_FILE, json.dumps(_state(plan), indent=2) + "\n")
    # Leftovers of workers killed mid-write (temporary or replaced directories).
    for entry in (sweep_dir / POINTS_DIR).iterdir():
        if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
            shutil.rmtree(entry, ignore_errors=True)
