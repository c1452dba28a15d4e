"""Policy sweeps: a YAML spec of axes over any scenario field, expanded into validated runs,
executed as independent tasks on a backend, stored one directory per point, resumable.

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
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from simserve import __version__
from simserve.config import (
    Scenario,
    apply_overrides,
    load_scenario,
    scenario_from_mapping,
    scenario_to_mapping,
)
from simserve.errors import InputError
from simserve.experiments.atomic import write_dir_atomically
from simserve.experiments.capacity import (
    CapacityResult,
    CapacitySettings,
    Probe,
    check_capacity_scenario,
    check_rule,
    cluster_gpus,
    parse_slo_rule,
    replication_seeds,
    run_summary,
    search_capacity,
    summary_with_extras,
)
from simserve.experiments.run import run_scenario, write_run_dir
from simserve.resolve import resolve
from simserve.yaml_lines import read_yaml_file

__all__ = [
    "SPEC_FILE",
    "STATE_FILE",
    "SUMMARY_CSV",
    "SweepOutcome",
    "SweepPlan",
    "SweepRun",
    "SweepSpec",
    "TaskRunner",
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

SPEC_FILE = "sweep.yaml"
STATE_FILE = "sweep.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
BY_POINT_CSV = "summary_by_point.csv"
BY_POINT_PARQUET = "summary_by_point.parquet"
ERRORS_FILE = "errors.json"
POINTS_DIR = "points"
CAPACITY_FILE = "capacity.json"
RUN_MARKER = "summary.json"
FORMAT_VERSION = 1

_SPEC_KEYS = (
    "name", "description", "base", "scenario", "set", "grid", "zip", "replications",
    "root_seed", "capacity", "slo",
)
_CAPACITY_KEYS = ("slo", "tolerance", "low", "high", "max_probes")
_PATH_FIELDS = ("workload.trace", "catalog")
# Columns that identify a row rather than measure it.
ID_COLUMNS = ("run_id", "point", "replication", "seed")


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep spec: base scenario mapping (paths resolved), axes and replications."""

    name: str
    source: str
    text: str
    base: dict[str, Any]
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    zips: tuple[tuple[tuple[str, tuple[Any, ...]], ...], ...]
    replications: int
    root_seed: int
    capacity: dict[str, Any] | None
    slo: str | None
    lines: dict[str, int]
    zip_first: bool = False

    def factors(self) -> list[tuple[tuple[str, tuple[Any, ...]], ...]]:
        """The product's factors in the order the spec writes `grid` and `zip`: one per grid
        axis, one per zip group (its axes advance together)."""
        grid = [((key, values),) for key, values in self.grid]
        zips = list(self.zips)
        return zips + grid if self.zip_first else grid + zips

    @property
    def axis_keys(self) -> tuple[str, ...]:
        """Dotted fields the sweep varies, in product order (the first varies slowest)."""
        return tuple(key for factor in self.factors() for key, _ in factor)


@dataclass(frozen=True)
class SweepRun:
    """One task of a sweep: a run of one seed at one point, or one point's capacity search."""

    run_id: str
    point: int
    replication: int | None
    axes: tuple[tuple[str, Any], ...]
    scenario: Scenario

    def prefix(self) -> dict[str, Any]:
        """The identifying columns of this run's summary row."""
        row: dict[str, Any] = {"run_id": self.run_id, "point": self.point}
        if self.replication is not None:
            row["replication"] = self.replication
        for key, value in self.axes:
            row[key] = _cell(value)
        return row


@dataclass(frozen=True)
class SweepPlan:
    """Every run of a sweep, validated, with the hash that identifies the spec's results."""

    spec: SweepSpec
    runs: tuple[SweepRun, ...]
    capacity: CapacitySettings | None
    spec_hash: str

    @property
    def mode(self) -> str:
        """`runs` (one run per point and seed) or `capacity` (one search per point)."""
        return "capacity" if self.capacity is not None else "runs"

    def task(self, run: SweepRun, sweep_dir: Path) -> dict[str, Any]:
        """The plain mapping a worker needs for `run` (picklable, backend-neutral)."""
        return {
            "id": run.run_id,
            "kind": "run" if self.capacity is None else "capacity",
            "scenario": scenario_to_mapping(run.scenario),
            "prefix": run.prefix(),
            "out_dir": str(sweep_dir / POINTS_DIR / run.run_id),
            "capacity": None if self.capacity is None else self.capacity.to_mapping(),
        }


def _key_lines(text: str) -> dict[str, int]:
    """Line numbers of the spec's keys, by path (`grid`, `grid/engine.policy`, ...)."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str, depth: int) -> None:
        if isinstance(node, yaml.MappingNode) and depth < 4:
            for key_node, value_node in node.value:
                path = f"{prefix}/{key_node.value}" if prefix else str(key_node.value)
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path, depth + 1)
        elif isinstance(node, yaml.SequenceNode) and depth < 4:
            for i, item in enumerate(node.value):
                walk(item, f"{prefix}/{i}", depth + 1)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "", 0)
    return lines


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping (in place); a missing section is created so that the
    scenario loader reports the unknown key by name."""
    parts = key.split(".")
    if any(not p for p in parts):
        raise InputError(f"{key!r} is not a dotted field name", field=key)
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise InputError(f"{prefix} is a value, not a section with fields", field=key)
        node = child
    node[parts[-1]] = value


def _resolve_path_value(key: str, value: Any, base_dir: Path) -> Any:
    """A trace or catalog path written relative to `base_dir`, made absolute; other values as is."""
    if key in _PATH_FIELDS and isinstance(value, str) and not Path(value).is_absolute():
        return str((base_dir / value).resolve())
    return value


def _values(raw: Any, where: str, source: str, line: int | None) -> tuple[Any, ...]:
    """An axis's values: a non-empty YAML list."""
    if not isinstance(raw, list) or not raw:
        raise InputError(
            f"axis values must be a non-empty list, got {raw!r}", field=where, source=source,
            line=line,
        )
    return tuple(raw)


def _axes(
    raw: Any, section: str, source: str, lines: dict[str, int]
) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """The axes of a `grid` or `zip` mapping: (dotted field, values) in the order written."""
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(
            "must be a mapping of dotted fields to lists of values", field=section, source=source,
            line=lines.get(section.replace(".", "/")),
        )
    axes = []
    for key, values in raw.items():
        path = f"{section.replace('.', '/')}/{key}"
        axes.append((str(key), _values(values, f"{section}.{key}", source, lines.get(path))))
    return tuple(axes)


def load_sweep_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read and check a sweep spec file; `overrides` (`KEY=VALUE`) apply to the base scenario."""
    path = Path(path)
    data, text = read_yaml_file(path, "sweep spec")
    if not isinstance(data, dict):
        raise InputError("a sweep spec must be a YAML mapping", source=str(path))
    source = str(path)
    lines = _key_lines(text)
    for key in data:
        if key not in _SPEC_KEYS:
            raise InputError(
                f"unknown key (known: {', '.join(_SPEC_KEYS)})", field=str(key), source=source,
                line=lines.get(str(key)),
            )
    spec_dir = path.resolve().parent

    # Base scenario: a file (relative to the spec) or an inline mapping.
    if ("base" in data) == ("scenario" in data):
        raise InputError("give exactly one of 'base' (a scenario file) or 'scenario' (inline)",
                         source=source)
    if "base" in data:
        if not isinstance(data["base"], str):
            raise InputError("must be a path to a scenario YAML file", field="base",
                             source=source, line=lines.get("base"))
        base_path = Path(data["base"])
        base_path = base_path if base_path.is_absolute() else spec_dir / base_path
        base = scenario_to_mapping(load_scenario(base_path))
    else:
        inline = data["scenario"]
        if not isinstance(inline, dict):
            raise InputError("must be a scenario mapping", field="scenario", source=source,
                             line=lines.get("scenario"))
        inline = json.loads(json.dumps(inline))  # a deep copy of plain data
        for key in _PATH_FIELDS:
            node: Any = inline
            for part in key.split(".")[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            last = key.split(".")[-1]
            if isinstance(node, dict) and last in node:
                node[last] = _resolve_path_value(key, node[last], spec_dir)
        try:
            base = scenario_to_mapping(scenario_from_mapping(inline))
        except InputError as exc:
            field = exc.field or ""
            raise InputError(exc.message, field=f"scenario.{field}" if field else "scenario",
                             source=source, line=lines.get("scenario")) from None

    fixed = data.get("set") or {}
    if not isinstance(fixed, Mapping):
        raise InputError("must be a mapping of dotted fields to values", field="set",
                         source=source, line=lines.get("set"))
    # The spec's `set`, then the command line's --set (which wins; its relative paths are
    # relative to the working directory, as for `simserve run`).
    cli_keys = [item.partition("=")[0].strip() for item in overrides]
    try:
        for key, value in fixed.items():
            _set_dotted(base, str(key), _resolve_path_value(str(key), value, spec_dir))
        base = apply_overrides(base, list(overrides))
        for key in cli_keys:
            section: Any = base
            for part in key.split(".")[:-1]:
                section = section.get(part) if isinstance(section, dict) else None
            if isinstance(section, dict) and key in _PATH_FIELDS:
                last = key.split(".")[-1]
                section[last] = _resolve_path_value(key, section.get(last), Path.cwd())
        base = scenario_to_mapping(scenario_from_mapping(base))
    except InputError as exc:
        field = exc.field or ""

        def names(key: str) -> bool:
            return field == key or field.startswith(f"{key}.")

        if any(names(k) for k in cli_keys):
            raise exc.located("--set", None) from None
        matches = [k for k in fixed if names(str(k))]
        line = lines.get(f"set/{matches[0]}") if matches else lines.get("set")
        raise InputError(exc.message, field=f"set.{field}" if field else "set", source=source,
                         line=line) from None

    grid = _axes(data["grid"], "grid", source, lines) if "grid" in data else ()
    zips_raw = data.get("zip")
    zips: list[tuple[tuple[str, tuple[Any, ...]], ...]] = []
    if zips_raw is not None:
        groups = zips_raw if isinstance(zips_raw, list) else [zips_raw]
        for i, group in enumerate(groups):
            section = "zip" if not isinstance(zips_raw, list) else f"zip.{i}"
            axes = _axes(group, section, source, lines)
            lengths = {len(v) for _, v in axes}
            if len(lengths) > 1:
                raise InputError(
                    "paired axes must have the same number of values (got "
                    + ", ".join(f"{k}: {len(v)}" for k, v in axes) + ")",
                    field=section, source=source, line=lines.get(section.replace(".", "/")),
                )
            zips.append(axes)
    keys = [k for k, _ in grid] + [k for g in zips for k, _ in g]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InputError(f"axis {repeated[0]!r} appears more than once", source=source)

    replications = data.get("replications", 1)
    if isinstance(replications, bool) or not isinstance(replications, int) or replications < 1:
        raise InputError(f"must be an integer >= 1, got {replications!r}", field="replications",
                         source=source, line=lines.get("replications"))
    if "seed" in keys and replications != 1:
        raise InputError("'seed' is an axis, so replications must be 1", field="replications",
                         source=source, line=lines.get("replications"))
    root_seed = data.get("root_seed", base.get("seed", 0))
    if isinstance(root_seed, bool) or not isinstance(root_seed, int) or root_seed < 0:
        raise InputError(f"must be an integer >= 0, got {root_seed!r}", field="root_seed",
                         source=source, line=lines.get("root_seed"))

    capacity = data.get("capacity")
    if capacity is not None:
        if not isinstance(capacity, Mapping) or "slo" not in capacity:
            raise InputError("must be a mapping with at least 'slo' (e.g. slo: sarathi:200)",
                             field="capacity", source=source, line=lines.get("capacity"))
        for key in capacity:
            if key not in _CAPACITY_KEYS:
                raise InputError(f"unknown key (known: {', '.join(_CAPACITY_KEYS)})",
                                 field=f"capacity.{key}", source=source,
                                 line=lines.get(f"capacity/{key}"))
        if "workload.arrival.rate" in keys:
            raise InputError(
                "a capacity sweep searches the arrival rate: remove workload.arrival.rate from "
                "the axes", field="capacity", source=source, line=lines.get("capacity"))
        capacity = dict(capacity)
    slo = data.get("slo")
    if slo is not None and not isinstance(slo, str):
        raise InputError("must be an SLO rule string, e.g. sarathi:200", field="slo",
                         source=source, line=lines.get("slo"))
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise InputError("must be a non-empty string without '/'", field="name", source=source,
                         line=lines.get("name"))
    order = list(data)
    zip_first = "zip" in data and "grid" in data and order.index("zip") < order.index("grid")
    return SweepSpec(
        name=name, source=source, text=text, base=base, grid=grid, zips=tuple(zips),
        replications=replications, root_seed=root_seed, capacity=capacity, slo=slo,
        lines=lines, zip_first=zip_first,
    )


def _axis_line(spec: SweepSpec, key: str) -> int | None:
    """The spec line that names axis `key`, for error messages."""
    for prefix in ("grid", "zip"):
        if f"{prefix}/{key}" in spec.lines:
            return spec.lines[f"{prefix}/{key}"]
    for path, line in spec.lines.items():
        if path.startswith("zip/") and path.endswith(f"/{key}"):
            return line
    return None


def _scenario_at(spec: SweepSpec, assignment: Sequence[tuple[str, Any]]) -> Scenario:
    """The validated scenario of one point: the base with the point's axis values set."""
    data = json.loads(json.dumps(spec.base))
    spec_dir = Path(spec.source).resolve().parent
    key = ""
    try:
        for key, value in assignment:
            _set_dotted(data, key, _resolve_path_value(key, value, spec_dir))
        return scenario_from_mapping(data)
    except InputError as exc:
        where = ", ".join(f"{k}={v!r}" for k, v in assignment)
        line = _axis_line(spec, exc.field or key) or _axis_line(spec, key)
        field = exc.field or key
        raise InputError(f"{exc.message} (at {where})", field=field, source=spec.source,
                         line=line) from None


def _cell(value: Any) -> Any:
    """A table cell: plain scalars as they are (numpy ones converted), anything else as sorted
    JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _capacity_settings(spec: SweepSpec) -> CapacitySettings | None:
    """The spec's `capacity` section as search settings (None for a sweep of runs)."""
    if spec.capacity is None:
        return None
    cap = spec.capacity
    line = spec.lines.get("capacity")
    try:
        rule = parse_slo_rule(cap["slo"])
        return CapacitySettings(
            rule=rule,
            seeds=tuple(replication_seeds(spec.root_seed, spec.replications)),
            tolerance=float(cap.get("tolerance", 0.02)),
            low=None if cap.get("low") is None else float(cap["low"]),
            high=None if cap.get("high") is None else float(cap["high"]),
            max_probes=int(cap.get("max_probes", 60)),
        )
    except (InputError, TypeError, ValueError) as exc:
        message = exc.message if isinstance(exc, InputError) else str(exc)
        raise InputError(message, field="capacity", source=spec.source, line=line) from None


def plan_sweep(spec: SweepSpec) -> SweepPlan:
    """Expand the axes into runs and validate every run's scenario before anything runs."""
    # Each grid value alone first, so a bad value is reported against its own axis; zipped
    # axes vary together (e.g. cluster.mode with its pools), so each zipped tuple is checked.
    for key, values in spec.grid:
        for value in values:
            _scenario_at(spec, [(key, value)])
    for group in spec.zips:
        for i in range(len(group[0][1])):
            _scenario_at(spec, [(key, values[i]) for key, values in group])
    factors = [
        [tuple((key, values[i]) for key, values in factor) for i in range(len(factor[0][1]))]
        for factor in spec.factors()
    ]
    points = [tuple(itertools.chain.from_iterable(combo)) for combo in itertools.product(*factors)]
    capacity = _capacity_settings(spec)
    seeded_axis = "seed" in spec.axis_keys
    seeds = replication_seeds(spec.root_seed, spec.replications)
    width = max(4, len(str(len(points) - 1)))
    rep_width = max(2, len(str(spec.replications - 1)))
    runs: list[SweepRun] = []
    key_cache: dict[str, frozenset[str]] = {}
    point_mappings: list[dict[str, Any]] = []
    for index, assignment in enumerate(points):
        scenario = _scenario_at(spec, assignment)
        _check_point(spec, scenario, assignment)
        point_mappings.append(scenario_to_mapping(scenario))
        if capacity is not None:
            try:
                check_rule(capacity.rule, scenario, key_cache)
                check_capacity_scenario(scenario)
            except InputError as exc:
                raise InputError(exc.message, field=f"capacity.{exc.field or 'slo'}",
                                 source=spec.source, line=spec.lines.get("capacity")) from None
            runs.append(SweepRun(f"p{index:0{width}d}", index, None, assignment, scenario))
            continue
        for rep in range(spec.replications):
            seeded = scenario if seeded_axis else dataclasses.replace(scenario, seed=seeds[rep])
            run_id = f"p{index:0{width}d}-r{rep:0{rep_width}d}"
            runs.append(SweepRun(run_id, index, rep, assignment, seeded))
    if spec.slo is not None:
        try:
            rule = parse_slo_rule(spec.slo)
            if runs:
                check_rule(rule, runs[0].scenario, key_cache)
        except InputError as exc:
            raise InputError(exc.message, field="slo", source=spec.source,
                             line=spec.lines.get("slo")) from None
    return SweepPlan(spec=spec, runs=tuple(runs), capacity=capacity,
                     spec_hash=_plan_hash(runs, point_mappings, capacity))


def _check_point(spec: SweepSpec, scenario: Scenario, assignment) -> None:
    """Catalog checks (KV fit, context length, TP) for one point (seeds do not matter)."""
    try:
        resolve(scenario)
    except InputError as exc:
        where = ", ".join(f"{k}={v!r}" for k, v in assignment) or "the base scenario"
        raise InputError(f"{exc.message} (at {where})", field=exc.field, source=spec.source,
                         line=_axis_line(spec, exc.field or "")) from None


def _plan_hash(runs: Sequence[SweepRun], point_mappings: Sequence[dict[str, Any]],
               capacity: CapacitySettings | None) -> str:
    """sha256 of everything that decides the results: each point's scenario (seed aside) and
    each run's id, axes and seed, and the capacity search settings."""
    payload = {
        "format": FORMAT_VERSION,
        "mode": "capacity" if capacity is not None else "runs",
        "capacity": None if capacity is None else capacity.to_mapping(),
        "points": [{**m, "seed": None} for m in point_mappings],
        "runs": [
            [r.run_id, r.point, [[k, _cell(v)] for k, v in r.axes], r.scenario.seed]
            for r in runs
        ],
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- worker side


def run_row(prefix: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    """One summary row: the run's identifying columns, then every summary key as a cell."""
    row = dict(prefix)
    for key, value in summary.items():
        if key not in row:
            row[key] = _cell(value)
    return row


def capacity_row(prefix: Mapping[str, Any], result: CapacityResult,
                 num_seeds: int) -> dict[str, Any]:
    """One capacity row: the point, the capacity (total and per GPU, with the GPUs the point's
    cluster occupies) and its bracket, then the mean over seeds of every numeric summary key at
    the capacity rate."""
    row = dict(prefix)
    row.update(
        {
            "capacity_rps": result.capacity_rps,
            "capacity_per_gpu_rps": result.capacity_per_gpu_rps,
            "num_gpus": result.num_gpus,
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
        for key in probe.summaries[0]:
            column = [s.get(key) for s in probe.summaries]
            if key in row or not all(_is_number(v) for v in column):
                continue
            row[key] = float(np.mean(np.asarray(column, dtype=np.float64)))
    return row


def _is_number(value: Any) -> bool:
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

    Kinds: `run` (simulate, write the run directory, return the summary row), `capacity`
    (search, write capacity.json, return the capacity row), `summary` (simulate, return the
    summary only: the seeds of a capacity probe). Failures come back as a traceback string.
    """
    t0 = time.perf_counter()
    try:
        scenario = scenario_from_mapping(task["scenario"])
        kind = task["kind"]
        if kind == "summary":
            return {"id": task["id"], "summary": run_summary(scenario),
                    "wall_s": time.perf_counter() - t0}
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


# --------------------------------------------------------------------------- store


def _write_text_atomically(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename, so readers never see half of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
    if present and all(_is_number(v) for v in present):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array([None if v is None else _format_cell(v) for v in values], type=pa.string())


def write_table(rows: Sequence[Mapping[str, Any]], csv_path: Path,
                parquet_path: Path | None) -> list[str]:
    """Write rows as CSV (and parquet when pyarrow is installed), each atomically; returns
    notes for the user (e.g. parquet skipped)."""
    columns = _columns(rows)
    _write_text_atomically(csv_path, _csv_text(rows, columns))
    if parquet_path is None:
        return []
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return [f"{parquet_path.name} not written: pyarrow is not installed"]
    table = pa.table({c: _arrow_column([row.get(c) for row in rows]) for c in columns})
    tmp = parquet_path.with_name(f".{parquet_path.name}.tmp-{os.getpid()}")
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
            numbers = [float(v) for v in values if _is_number(v)]
            if not numbers or any(v is not None and not _is_number(v) for v in values):
                continue
            data = np.asarray(numbers)
            agg[f"{key}_mean"] = float(np.mean(data))
            agg[f"{key}_ci95"] = (
                float(_t_quantile(data.size) * np.std(data, ddof=1) / math.sqrt(data.size))
                if data.size > 1 else None
            )
        out.append(agg)
    return out


def _row_from_disk(run: SweepRun, plan: SweepPlan, sweep_dir: Path) -> dict[str, Any] | None:
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
    result = CapacityResult(
        rule=data["rule"], capacity_rps=data["capacity_rps"], low_rps=data["low_rps"],
        high_rps=data["high_rps"], status=data["status"], tolerance=data["tolerance"],
        probes=probes, num_gpus=num_gpus,
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


def _init_sweep_dir(plan: SweepPlan, sweep_dir: Path) -> None:
    """Create the directory (spec and state files once) and clear leftovers of killed writes."""
    (sweep_dir / POINTS_DIR).mkdir(parents=True, exist_ok=True)
    if not (sweep_dir / STATE_FILE).is_file():
        _write_text_atomically(sweep_dir / SPEC_FILE, plan.spec.text)
        _write_text_atomically(sweep_dir / STATE_FILE, json.dumps(_state(plan), indent=2) + "\n")
    # Leftovers of workers killed mid-write (temporary or replaced directories).
    for entry in (sweep_dir / POINTS_DIR).iterdir():
        if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
            shutil.rmtree(entry, ignore_errors=True)


# --------------------------------------------------------------------------- driver


class TaskRunner(Protocol):
    """A backend: runs `fn` on every task and yields the results as they complete."""

    def imap_unordered(
        self, fn: Callable[[Mapping[str, Any]], dict[str, Any]],
        tasks: Sequence[Mapping[str, Any]],
    ) -> Iterator[dict[str, Any]]: ...

    def describe(self) -> str: ...


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


class _NoProgress:
    """Stands in for a tqdm bar when tqdm is not installed."""

    def update(self, n: int = 1) -> None:
        """Do nothing."""

    def set_postfix(self, **kwargs: Any) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


def _progress(total: int, initial: int, enabled: bool) -> Any:
    """A tqdm bar with rate and ETA on stderr (a no-op one when disabled or without tqdm)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(total=total, initial=initial, unit="run", desc="sweep", file=sys.stderr,
                disable=not enabled, dynamic_ncols=True, smoothing=0.05)


def run_sweep(
    plan: SweepPlan,
    sweep_dir: str | Path,
    backend: TaskRunner,
    *,
    resume: bool = False,
    progress: bool = False,
    checked: bool = False,
) -> SweepOutcome:
    """Run every unfinished run of `plan` on `backend`, then write the summary tables.

    A run is finished when its directory is complete (it was renamed into place atomically),
    so after a kill at any moment `resume=True` reruns exactly the unfinished ones and the
    summary comes out the same as an uninterrupted sweep's.
    """
    sweep_dir = Path(sweep_dir)
    t0 = time.perf_counter()
    if not checked:
        check_sweep_dir(plan, sweep_dir, resume)
    _init_sweep_dir(plan, sweep_dir)
    rows: dict[str, dict[str, Any]] = {}
    pending: list[SweepRun] = []
    for run in plan.runs:
        row = _row_from_disk(run, plan, sweep_dir)
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
    bar = _progress(len(plan.runs), num_resumed, progress)
    try:
        for result in backend.imap_unordered(execute_task, tasks):
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
        _write_text_atomically(errors_file, json.dumps(errors, indent=2, sort_keys=True) + "\n")
    elif errors_file.exists():
        errors_file.unlink()
    return SweepOutcome(
        sweep_dir=sweep_dir, rows=ordered, by_point=by_point, errors=errors,
        num_resumed=num_resumed, num_ran=len(tasks), wall_s=time.perf_counter() - t0,
        notes=notes,
    )


def count_finished(plan: SweepPlan, sweep_dir: Path) -> int:
    """How many runs of `plan` already have a complete directory under `sweep_dir`."""
    return sum(_row_from_disk(r, plan, sweep_dir) is not None for r in plan.runs)

