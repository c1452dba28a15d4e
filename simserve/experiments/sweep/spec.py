"""Sweep specs: read a YAML spec of axes over scenario fields and expand it into a validated
plan of runs, with the hash that identifies its results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from simserve.config import (
    CLASS_FIELDS,
    PATH_FIELDS,
    Scenario,
    apply_overrides,
    check_file_name,
    load_scenario,
    resolve_path_value,
    scenario_from_mapping,
    scenario_to_mapping,
    set_dotted,
)
from simserve.errors import InputError
from simserve.experiments.capacity import (
    CapacitySettings,
    check_capacity_scenario,
    check_rule,
    parse_slo_rule,
    replication_seeds,
)
from simserve.experiments.sweep.layout import FORMAT_VERSION, POINTS_DIR
from simserve.formatting import fmt_number
from simserve.resolve import resolve
from simserve.yaml_lines import compose_yaml, read_yaml_file

_SPEC_KEYS = (
    "name", "description", "base", "scenario", "set", "grid", "zip", "replications",
    "root_seed", "capacity", "slo",
)
_CAPACITY_KEYS = ("slo", "tolerance", "low", "high", "max_probes")
MAX_SWEEP_RUNS = 1_000_000


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
            row[key] = table_cell(value)
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
        root = compose_yaml(text)
    except InputError:
        return lines
    if root is not None:
        walk(root, "", 0)
    return lines


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
        for key in (*PATH_FIELDS, *CLASS_FIELDS):
            node: Any = inline
            for part in key.split(".")[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            last = key.split(".")[-1]
            if isinstance(node, dict) and last in node:
                node[last] = resolve_path_value(key, node[last], spec_dir)
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
            set_dotted(base, str(key), resolve_path_value(str(key), value, spec_dir))
        base = apply_overrides(base, list(overrides))
        for key in cli_keys:
            section: Any = base
            for part in key.split(".")[:-1]:
                section = section.get(part) if isinstance(section, dict) else None
            if isinstance(section, dict) and key in (*PATH_FIELDS, *CLASS_FIELDS):
                last = key.split(".")[-1]
                section[last] = resolve_path_value(key, section.get(last), Path.cwd())
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
    if not isinstance(name, str):
        raise InputError(f"must be a string, got {name!r}", field="name", source=source,
                         line=lines.get("name"))
    try:
        check_file_name(name, "name")  # the default sweep directory is runs/sweeps/<name>
    except InputError as exc:
        raise exc.located(source, lines.get("name")) from None
    num_runs = math.prod([len(values) for _key, values in grid]
                         + [len(group[0][1]) for group in zips])
    num_runs *= replications if capacity is None else 1
    if num_runs > MAX_SWEEP_RUNS:
        # Refused before the plan lists them: a typo must not fill the memory.
        raise InputError(f"the sweep has {fmt_number(num_runs)} runs (points x replications), "
                         f"more than {fmt_number(MAX_SWEEP_RUNS)}; split it", source=source)
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
            set_dotted(data, key, resolve_path_value(key, value, spec_dir))
        return scenario_from_mapping(data)
    except InputError as exc:
        where = ", ".join(f"{k}={v!r}" for k, v in assignment)
        line = _axis_line(spec, exc.field or key) or _axis_line(spec, key)
        field = exc.field or key
        raise InputError(f"{exc.message} (at {where})", field=field, source=spec.source,
                         line=line) from None


def table_cell(value: Any) -> Any:
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
            [r.run_id, r.point, [[k, table_cell(v)] for k, v in r.axes], r.scenario.seed]
            for r in runs
        ],
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
