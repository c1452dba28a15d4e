"""Running a sweep: send a plan's unfinished tasks to a run pool, collect their rows with a
progress bar, and write the summary tables.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simserve.experiments.pool import RunPool
from simserve.experiments.sweep.layout import (
    BY_POINT_CSV,
    BY_POINT_PARQUET,
    ERRORS_FILE,
    POINTS_DIR,
    SUMMARY_CSV,
    SUMMARY_PARQUET,
)
from simserve.experiments.sweep.spec import SweepPlan, SweepRun
from simserve.experiments.sweep.store import (
    aggregate_rows,
    check_sweep_dir,
    init_sweep_dir,
    row_from_disk,
    write_table,
    write_text_atomically,
)
from simserve.experiments.sweep.worker import execute_task
from simserve.progress import progress_bar


@dataclass(frozen=True)
class SweepOutcome:
    """What a sweep call did: rows of every finished run, failures, counts and wall time."""

    sweep_dir: Path
    rows: list[dict[str, Any]]
    by_point: list[dict[str, Any]] | None
    errors: dict[str, str]
    num_resumed: int
    num_ran: int
    wall_s: float
    notes: list[str]


def run_sweep(
    plan: SweepPlan,
    sweep_dir: str | Path,
    pool: RunPool,
    *,
    resume: bool = False,
    progress: bool = False,
    checked: bool = False,
) -> SweepOutcome:
    """Run every unfinished run of `plan` on `pool`'s workers (each writes its run's
    directory and returns its summary row), then write the summary tables.

    A run is finished when its directory is complete (it was renamed into place atomically),
    so after a kill at any moment `resume=True` reruns exactly the unfinished ones and the
    summary comes out the same as an uninterrupted sweep's.
    """
    sweep_dir = Path(sweep_dir)
    t0 = time.perf_counter()
    if not checked:
        check_sweep_dir(plan, sweep_dir, resume)
    init_sweep_dir(plan, sweep_dir)
    rows: dict[str, dict[str, Any]] = {}
    pending: list[SweepRun] = []
    for run in plan.runs:
        row = row_from_disk(run, plan, sweep_dir)
        if row is None:
            stale = sweep_dir / POINTS_DIR / run.run_id
            if stale.exists():
                shutil.rmtree(stale)
            pending.append(run)
        else:
            rows[run.run_id] = row
    num_resumed = len(rows)
    errors: dict[str, str] = {}
    # Absolute paths: workers (Ray's especially) need not share this process's directory.
    tasks = [plan.task(run, sweep_dir.resolve()) for run in pending]
    bar = progress_bar(len(plan.runs), desc="sweep", unit="run", enabled=progress,
                       initial=num_resumed)
    try:
        for result in pool.imap_unordered(execute_task, tasks):
            if "error" in result:
                errors[result["id"]] = result["error"]
                bar.set_postfix(failed=len(errors))
            else:
                rows[result["id"]] = result["row"]
            bar.update(1)
    finally:
        bar.close()
    ordered = [rows[r.run_id] for r in plan.runs if r.run_id in rows]
    notes = write_table(ordered, sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_PARQUET)
    by_point = None
    if plan.capacity is None and plan.spec.replications > 1:
        by_point = aggregate_rows(ordered, plan.spec.axis_keys)
        notes += write_table(by_point, sweep_dir / BY_POINT_CSV, sweep_dir / BY_POINT_PARQUET)
    errors_file = sweep_dir / ERRORS_FILE
    if errors:
        write_text_atomically(errors_file, json.dumps(errors, indent=2, sort_keys=True) + "\n")
    elif errors_file.exists():
        errors_file.unlink()
    return SweepOutcome(
        sweep_dir=sweep_dir, rows=ordered, by_point=by_point, errors=errors,
        num_resumed=num_resumed, num_ran=len(tasks), wall_s=time.perf_counter() - t0,
        notes=notes,
    )


def count_finished(plan: SweepPlan, sweep_dir: Path) -> int:
    """How many runs of `plan` already have a complete directory under `sweep_dir`."""
    return sum(row_from_disk(r, plan, sweep_dir) is not None for r in plan.runs)

