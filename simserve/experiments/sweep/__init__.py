"""Policy sweeps: a YAML spec of axes over any scenario field, expanded into validated runs,
executed as independent tasks on a run pool (local processes or Ray), stored one directory per
point, resumable.

A sweep spec (see scenarios/sweeps/) names a base scenario, fixed overrides (`set`), axes
(`grid`: cartesian product; `zip`: paired axes of equal length) over any dotted scenario field,
and `replications`: seeds spawned from `root_seed` (default: the base scenario's seed), the
same seeds at every point so points are compared on common random numbers. With a `capacity`
section every point is a capacity search (DESIGN §5) instead of one run per seed.

Store (`--out DIR`): `sweep.yaml` (the spec as written), `sweep.json` (expanded plan and its
hash, so `--resume` refuses a different spec), `points/<run id>/` (a run directory, or a
capacity directory holding capacity.json; each written atomically by the worker that made it),
`summary.csv`/`summary.parquet` (one row per run: run id, point, replication, the axes' values,
every summary key) and, with replications > 1, `summary_by_point.csv`/`.parquet` (mean and 95%
confidence half-width over seeds of every numeric key). Rows are sorted by run id and floats are
written exactly, so one spec gives the same summary.csv whatever the backend or worker count.

Modules, each importing only those above it: `layout` (the names of the files and folders in
a sweep directory), `spec` (read a spec, expand and validate its plan), `worker` (run one task
in any process), `store` (summary tables, finished runs read back, the directory's state and
checks), `driver` (run a plan's unfinished tasks on a run pool and write the tables).
"""

# Everything the single `sweep` module offered is importable from here unchanged: its public API
# (`__all__`) and its other constants (redundant aliases mark those as re-exports).
from simserve.experiments.sweep.driver import SweepOutcome, count_finished, run_sweep
from simserve.experiments.sweep.layout import BY_POINT_CSV as BY_POINT_CSV
from simserve.experiments.sweep.layout import BY_POINT_PARQUET as BY_POINT_PARQUET
from simserve.experiments.sweep.layout import CAPACITY_FILE as CAPACITY_FILE
from simserve.experiments.sweep.layout import ERRORS_FILE as ERRORS_FILE
from simserve.experiments.sweep.layout import FORMAT_VERSION as FORMAT_VERSION
from simserve.experiments.sweep.layout import POINTS_DIR as POINTS_DIR
from simserve.experiments.sweep.layout import RUN_MARKER as RUN_MARKER
from simserve.experiments.sweep.layout import SPEC_FILE, STATE_FILE, SUMMARY_CSV
from simserve.experiments.sweep.layout import SUMMARY_PARQUET as SUMMARY_PARQUET
from simserve.experiments.sweep.spec import (
    SweepPlan,
    SweepRun,
    SweepSpec,
    load_sweep_spec,
    plan_sweep,
)
from simserve.experiments.sweep.store import ID_COLUMNS as ID_COLUMNS
from simserve.experiments.sweep.store import (
    aggregate_rows,
    check_sweep_dir,
    read_csv_rows,
    write_table,
)
from simserve.experiments.sweep.worker import (
    capacity_document,
    capacity_row,
    execute_task,
    run_row,
)

__all__ = [
    "SPEC_FILE",
    "STATE_FILE",
    "SUMMARY_CSV",
    "SweepOutcome",
    "SweepPlan",
    "SweepRun",
    "SweepSpec",
    "aggregate_rows",
    "capacity_document",
    "capacity_row",
    "check_sweep_dir",
    "count_finished",
    "execute_task",
    "load_sweep_spec",
    "plan_sweep",
    "read_csv_rows",
    "run_row",
    "run_sweep",
    "write_table",
]
