"""The worker side of a sweep: run one task (a run or a capacity search) in any process, write
its point directory, and return its summary row.
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from simserve import __version__
from simserve.config import Scenario, scenario_from_mapping, scenario_to_mapping
from simserve.experiments.atomic import write_dir_atomically
from simserve.experiments.capacity import (
    CapacityResult,
    CapacitySettings,
    search_capacity,
    summary_with_extras,
)
from simserve.experiments.run import run_scenario, write_run_dir
from simserve.experiments.sweep.layout import CAPACITY_FILE
from simserve.experiments.sweep.spec import table_cell
from simserve.metrics.summary import flat_summary


def run_row(prefix: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    """One summary row: the run's identifying columns, then every summary key as a cell (a
    request class's as `class.<name>.<key>`)."""
    row = dict(prefix)
    for key, value in flat_summary(summary).items():
        if key not in row:
            row[key] = table_cell(value)
    return row


def capacity_row(prefix: Mapping[str, Any], result: CapacityResult,
                 num_seeds: int) -> dict[str, Any]:
    """One capacity row: the point, the capacity (total, per GPU with the GPUs the point's
    cluster occupies, per dollar with its price per hour) and its bracket, then the mean over
    seeds of every numeric summary key at the capacity rate."""
    row = dict(prefix)
    row.update(
        {
            "capacity_rps": result.capacity_rps,
            "capacity_per_gpu_rps": result.capacity_per_gpu_rps,
            "num_gpus": result.num_gpus,
            "capacity_per_usd": result.capacity_per_usd,
            "usd_per_hour": result.usd_per_hour,
            "capacity_low_rps": result.low_rps,
            "capacity_high_rps": result.high_rps,
            "capacity_status": result.status,
            "slo_rule": result.rule,
            "tolerance": result.tolerance,
            "num_probes": len(result.probes),
            "num_seeds": num_seeds,
        }
    )
    probe = result.at_capacity()
    if probe is not None:
        flat = [flat_summary(s) for s in probe.summaries]
        for key in flat[0]:
            column = [s.get(key) for s in flat]
            if key in row or not all(is_number(v) for v in column):
                continue
            row[key] = float(np.mean(np.asarray(column, dtype=np.float64)))
    return row


def is_number(value: Any) -> bool:
    """An int or float cell (booleans are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _write_capacity_dir(result: CapacityResult, scenario: Scenario, out: Path) -> None:
    """A capacity point's directory: its scenario.yaml and capacity.json, written atomically."""
    def write(tmp: Path) -> None:
        mapping = {"simserve_version": __version__, **scenario_to_mapping(scenario)}
        (tmp / "scenario.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False))
        (tmp / CAPACITY_FILE).write_text(json.dumps(capacity_document([result]), indent=2) + "\n")

    write_dir_atomically(out, write)


def capacity_document(results: Sequence[CapacityResult]) -> dict[str, Any]:
    """The content of capacity.json: one result per SLO rule searched."""
    return {"simserve_version": __version__, "results": [r.to_mapping() for r in results]}


def execute_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Run one sweep task (a plain mapping) and return a small result; never raises.

    Kinds: `run` (simulate, write the run directory, return the summary row) and `capacity`
    (search, write capacity.json, return the capacity row). Failures come back as a traceback
    string.
    """
    t0 = time.perf_counter()
    try:
        scenario = scenario_from_mapping(task["scenario"])
        kind = task["kind"]
        out = Path(task["out_dir"])
        if kind == "run":
            output = run_scenario(scenario)
            summary = summary_with_extras(output)
            write_run_dir(dataclasses.replace(output, summary=summary), out)
            row = run_row(task["prefix"], summary)
        elif kind == "capacity":
            settings = CapacitySettings.from_mapping(task["capacity"])
            result = search_capacity(scenario, settings)
            _write_capacity_dir(result, scenario, out)
            row = capacity_row(task["prefix"], result, len(settings.seeds))
        else:
            raise ValueError(f"unknown task kind {kind!r}")
        return {"id": task["id"], "row": row, "wall_s": time.perf_counter() - t0}
    except Exception:
        return {"id": task["id"], "error": traceback.format_exc(),
                "wall_s": time.perf_counter() - t0}
