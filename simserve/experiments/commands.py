"""CLI subcommands `sweep`, `capacity` and `plot` (registered through `cli.COMMAND_MODULES`).

Parse, validate everything, then run and print: bad input (an unknown axis field, a value of
the wrong type, an unreachable Ray address, a sweep directory from another spec) is refused
with one line and exit code 2 before any run starts or any file is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simserve.errors import InputError
from simserve.formatting import fmt_number, fmt_percent

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], int]

KEY_METRICS = ("request_throughput", "p99_ttft_ms", "p99_tbt_ms", "median_scheduling_delay_ms")
MAX_TABLE_ROWS = 40


def register(subparsers: Any) -> dict[str, Handler]:
    """Add the sweep, capacity and plot subcommands; return their handlers by name."""
    sweep = subparsers.add_parser(
        "sweep", help="run a sweep spec: grids/zips over scenario fields x seeds (resumable)",
        description="Run every point of a sweep spec (see scenarios/sweeps/) and write one "
        "directory per run plus summary.csv/summary.parquet.",
    )
    sweep.add_argument("spec", help="sweep spec YAML")
    sweep.add_argument("--backend", default="local", choices=("local", "ray"),
                       help="local process pool (default) or Ray")
    sweep.add_argument("--address", default=None,
                       help="Ray cluster address (HOST:PORT, ray://HOST:PORT or auto; default: "
                       "$RAY_ADDRESS, else start a local Ray instance)")
    sweep.add_argument("--jobs", type=int, default=None,
                       help="parallel workers (default: all cores; Ray: tasks in flight)")
    sweep.add_argument("--resume", action="store_true",
                       help="continue a sweep directory: skip finished runs, rerun the rest")
    sweep.add_argument("--out", default=None, help="sweep directory (default: runs/sweeps/<name>)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a base-scenario field")
    sweep.add_argument("--dry-run", action="store_true",
                       help="validate and list the runs without running them")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")

    cap = subparsers.add_parser(
        "capacity", help="largest arrival rate meeting an SLO rule (bisection)",
        description="Bisect the arrival rate for the largest one whose runs meet the rule. "
        "Rules: sarathi[:TBT_MS[:DELAY_MS]] (P99 TBT and median scheduling delay), "
        "etalon[:RATE] (P99 deadline-miss rate), attainment[:FRACTION] (needs metrics.slo), "
        "class_attainment[:FRACTION] (every workload class meets its own SLO), or "
        "KEY<=VALUE / KEY>=VALUE on summary keys, joined by commas.",
    )
    cap.add_argument("scenario", help="scenario YAML file")
    cap.add_argument("--slo", dest="rules", action="append", required=True, metavar="RULE",
                     help="SLO rule (repeat to search under several rules)")
    cap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override any scenario field")
    cap.add_argument("--seed", type=int, default=None, help="root seed (default: scenario seed)")
    cap.add_argument("--replications", type=int, default=1,
                     help="seeds per rate; the rule is judged on their mean (default 1)")
    cap.add_argument("--tolerance", type=float, default=0.02,
                     help="relative width of the final bracket (default 0.02)")
    cap.add_argument("--low", type=float, default=None, help="a rate known to meet the rule")
    cap.add_argument("--high", type=float, default=None, help="a rate known to fail it")
    cap.add_argument("--jobs", type=int, default=None,
                     help="parallel simulation processes (default: all cores)")
    cap.add_argument("--out", default=None, help="write capacity.json and scenario.yaml here")

    plot = subparsers.add_parser(
        "plot", help="figures of a sweep directory (latency vs rate, capacity, Pareto)",
    )
    plot.add_argument("sweep_dir", help="a sweep directory (with summary.csv)")
    plot.add_argument("--out", default=None, help="figure directory (default: SWEEP_DIR/plots)")
    plot.add_argument("--slo", default=None, help="SLO rule to draw (default: the sweep's)")
    plot.add_argument("--x", default=None, help="x axis (default: workload.arrival.rate)")
    plot.add_argument("--metric", dest="metrics", action="append", default=None,
                      help="metric panel (repeatable; default: the rule's keys, P99 TTFT, "
                      "P99 TBT, median scheduling delay, mean TPOT)")
    plot.add_argument("--per", default="auto", choices=("auto", "gpu", "usd"),
                      help="capacity figure: per GPU where GPU counts differ (auto, default), "
                      "always per GPU, or per dollar of GPU rental, ranked (capacity sweeps)")
    return {"sweep": _cmd_sweep, "capacity": _cmd_capacity, "plot": _cmd_plot}


# --------------------------------------------------------------------------- sweep


def _fmt(value: Any) -> str:
    """A table cell for the console: numbers as every report prints them (`fmt_number`)."""
    if isinstance(value, float):
        return fmt_number(value)
    return "n/a" if value is None else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _short(key: str) -> str:
    """The last part of a dotted field, for column headers."""
    return key.split(".")[-1]


def _results_table(outcome: Any, plan: Any, metrics: Sequence[str]) -> str:
    """The console table of a finished sweep: per point, mean ± 95% CI with replications."""
    axes = list(plan.spec.axis_keys)
    if plan.mode == "capacity":
        header = [_short(a) for a in axes] + ["capacity (req/s)", "per GPU (req/s)", "GPUs",
                                              "per $ (req/USD)", "bracket", "status", "probes"]
        body = [
            [_fmt(r.get(a)) for a in axes]
            + [_fmt(r.get("capacity_rps")), _fmt(r.get("capacity_per_gpu_rps")),
               _fmt(r.get("num_gpus")), _fmt(r.get("capacity_per_usd")),
               f"[{_fmt(r.get('capacity_low_rps'))}, {_fmt(r.get('capacity_high_rps'))}]",
               str(r.get("capacity_status")), str(r.get("num_probes"))]
            for r in outcome.rows
        ]
    elif outcome.by_point is not None:
        header = [_short(a) for a in axes] + ["seeds"] + [f"{m} (±95%)" for m in metrics]
        body = []
        for r in outcome.by_point:
            cells = [_fmt(r.get(a)) for a in axes] + [str(r.get("num_seeds"))]
            for m in metrics:
                mean, ci = r.get(f"{m}_mean"), r.get(f"{m}_ci95")
                cells.append(f"{_fmt(mean)} ± {_fmt(ci)}" if ci is not None else _fmt(mean))
            body.append(cells)
    else:
        header = [_short(a) for a in axes] + ["seed"] + list(metrics)
        body = [[_fmt(r.get(a)) for a in axes] + [str(r.get("seed"))]
                + [_fmt(r.get(m)) for m in metrics] for r in outcome.rows]
    more = len(body) - MAX_TABLE_ROWS
    text = _table(header, body[:MAX_TABLE_ROWS])
    return text + (f"\n... {more} more rows in summary.csv" if more > 0 else "")


def _noun(plan: Any) -> str:
    """What the sweep's tasks are called on the console."""
    return "runs" if plan.mode == "runs" else "capacity searches"


def _cmd_sweep(args: argparse.Namespace) -> int:
    from simserve.experiments.backends import make_backend
    from simserve.experiments.pool import RunPool
    from simserve.experiments.sweep import (
        check_sweep_dir,
        count_finished,
        load_sweep_spec,
        plan_sweep,
        run_sweep,
    )

    spec = load_sweep_spec(args.spec, args.overrides)
    plan = plan_sweep(spec)
    if args.out is not None and not args.out.strip():
        raise InputError("is empty", field="--out")  # Path("") would be the working directory
    out = Path(args.out) if args.out is not None else Path("runs") / "sweeps" / spec.name
    if args.dry_run:
        print(f"sweep {spec.name}: {len(plan.runs)} {_noun(plan)} over "
              f"{', '.join(spec.axis_keys) or 'no axes'}; {spec.replications} seed(s); "
              f"spec hash {plan.spec_hash[:12]}")
        for run in plan.runs[:MAX_TABLE_ROWS]:
            values = ", ".join(f"{_short(k)}={v}" for k, v in run.axes)
            print(f"  {run.run_id}  seed={run.scenario.seed}  {values}")
        if len(plan.runs) > MAX_TABLE_ROWS:
            print(f"  ... {len(plan.runs) - MAX_TABLE_ROWS} more")
        return 0
    from simserve.experiments.atomic import check_writable_dir

    check_sweep_dir(plan, out, args.resume)
    check_writable_dir(out)  # before any run: an unwritable --out is one line, not a traceback
    address = args.address
    if args.backend == "ray" and address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    backend = make_backend(args.backend, jobs=args.jobs, address=address)
    show_progress = not args.no_progress and sys.stderr.isatty()
    finished_before = count_finished(plan, out) if out.exists() else 0
    try:
        with RunPool(backend=backend) as pool:
            print(f"sweep {spec.name}: {len(plan.runs)} {_noun(plan)} "
                  f"({finished_before} already finished) on {pool.describe()} -> {out}",
                  flush=True)
            outcome = run_sweep(plan, out, pool, resume=args.resume,
                                progress=show_progress, checked=True)
    except KeyboardInterrupt:
        done = count_finished(plan, out)
        print(f"sweep interrupted: {done} of {len(plan.runs)} finished and kept; "
              f"continue with: simserve sweep {args.spec} --resume --out {out}", file=sys.stderr)
        raise
    metrics = list(KEY_METRICS)
    if spec.slo:
        from simserve.experiments.capacity import parse_slo_rule

        metrics += [k for k in parse_slo_rule(spec.slo).keys if k not in metrics]
    print(_results_table(outcome, plan, metrics))
    rejecting = [r["run_id"] for r in outcome.rows if (r.get("num_rejected") or 0) > 0]
    if rejecting:
        print(f"note: {len(rejecting)} of {len(outcome.rows)} {_noun(plan)} rejected requests "
              f"(first: {rejecting[0]}; see num_rejected and rejected_reasons in summary.csv): "
              "their metrics cover only the requests served")
    files = ["summary.csv", "summary.parquet"]
    if outcome.by_point is not None:
        files += ["summary_by_point.csv", "summary_by_point.parquet"]
    print(f"{len(outcome.rows)} of {len(plan.runs)} finished ({outcome.num_resumed} resumed, "
          f"{outcome.num_ran - len(outcome.errors)} ran) in {fmt_number(outcome.wall_s)} s; "
          f"wrote {', '.join(files)} in {out}")
    for note in outcome.notes:
        print(f"note: {note}")
    if outcome.errors:
        first_id = sorted(outcome.errors)[0]
        last_line = outcome.errors[first_id].strip().splitlines()[-1]
        print(f"simserve: error: {len(outcome.errors)} run(s) failed (first: {first_id}: "
              f"{last_line}); tracebacks in {out / 'errors.json'}; rerun with --resume",
              file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- capacity


def _cmd_capacity(args: argparse.Namespace) -> int:
    from simserve.config import load_scenario
    from simserve.experiments.atomic import OutputKind, claim_output_dir
    from simserve.experiments.capacity import (
        CapacitySettings,
        check_capacity_scenario,
        check_rule,
        parse_slo_rule,
        replication_seeds,
    )

    options = {"--seed": f"seed={args.seed}"} if args.seed is not None else {}
    scenario = load_scenario(args.scenario, args.overrides, options=options)
    if args.replications < 1:
        raise InputError(f"must be >= 1, got {args.replications}", field="--replications")
    check_capacity_scenario(scenario)
    rules = [parse_slo_rule(text) for text in args.rules]
    cache: dict[str, frozenset[str]] = {}
    for rule in rules:
        check_rule(rule, scenario, cache)
    seeds = tuple(replication_seeds(scenario.seed, args.replications))
    settings_list = []
    for rule in rules:
        try:
            settings_list.append(CapacitySettings(rule=rule, seeds=seeds, tolerance=args.tolerance,
                                                  low=args.low, high=args.high))
        except InputError as exc:
            raise InputError(exc.message, field=f"--{exc.field}") from None
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"must be >= 1, got {args.jobs}", field="--jobs")
    if args.out is None:
        return _capacity_search(args, scenario, settings_list, seeds, None)
    # Claimed before the search: an unwritable or foreign --out fails now, not after it.
    kind = OutputKind("capacity directory", legacy_files=("capacity.json", "scenario.yaml"),
                      legacy_required=("capacity.json", "scenario.yaml"))
    with claim_output_dir(args.out, kind) as claim:
        return _capacity_search(args, scenario, settings_list, seeds, claim)


def _capacity_search(args: argparse.Namespace, scenario: Any, settings_list: list[Any],
                     seeds: tuple[int, ...], claim: Any) -> int:
    """Bisect each rule's capacity, print the probes, and write `claim` when there is one."""
    from simserve.config import scenario_from_mapping, scenario_to_mapping
    from simserve.experiments.capacity import rate_unit, search_capacity
    from simserve.experiments.pool import RunPool
    from simserve.experiments.sweep import capacity_document

    t0 = time.perf_counter()
    with RunPool(args.jobs) as pool:
        # Every rule's search at once over one pool; each prints its table when it is done,
        # in the order the rules were given.
        results = pool.concurrently([
            lambda settings=settings: search_capacity(scenario, settings,
                                                      run_many=pool.summaries)
            for settings in settings_list
        ])
    unit = rate_unit(scenario)  # with sessions, the arrival rate counts session starts
    per = "sessions" if unit == "sessions/s" else "requests"
    for settings, result in zip(settings_list, results, strict=True):
        rule = settings.rule
        print(f"capacity under {rule.text} ({rule.describe()}), {len(seeds)} seed(s), "
              f"tolerance {fmt_percent(settings.tolerance)}:", flush=True)
        header = [f"rate ({unit})", "meets", *rule.keys]
        widths = [max(12, len(h)) for h in header]
        print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for probe in result.probes:
            cells = [fmt_number(probe.rate), "yes" if probe.passed else "no"]
            cells += [_fmt(probe.values.get(k)) for k in rule.keys]
            print("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
        if result.status.startswith("undefined"):
            print(f"capacity: {result.status} (the rule cannot judge this workload)")
        elif result.capacity_rps is None:
            print(f"capacity: below {_fmt(result.high_rps)} {unit} (no rate tried meets "
                  f"{rule.text}; status {result.status})")
        elif result.status == "above_range":
            print(f"capacity: at least {fmt_number(result.capacity_rps, unit)} "
                  f"({_per_gpu(result, unit)}; "
                  "the highest rate tried still meets the rule)")
        else:
            print(f"capacity: {fmt_number(result.capacity_rps, unit)} ({_per_gpu(result, unit)}; "
                  f"meets at {fmt_number(result.low_rps)}, fails at "
                  f"{fmt_number(result.high_rps)}; status {result.status})")
        if result.capacity_per_usd is not None:
            print(f"per dollar: {fmt_number(result.capacity_per_usd)} {per} per USD at "
                  f"capacity (the cluster's GPUs rent for "
                  f"{fmt_number(result.usd_per_hour, 'USD/h')})")
    print(f"{sum(len(r.probes) for r in results) * len(seeds)} runs in "
          f"{fmt_number(time.perf_counter() - t0)} s")
    if claim is not None:
        import yaml

        from simserve import __version__

        scenario_from_mapping(scenario_to_mapping(scenario))  # round-trip check
        mapping = {"simserve_version": __version__, **scenario_to_mapping(scenario)}

        def write(tmp: Path) -> None:
            (tmp / "scenario.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False))
            (tmp / "capacity.json").write_text(json.dumps(capacity_document(results), indent=2)
                                               + "\n")

        claim.write(write)
        print(f"wrote {Path(args.out) / 'capacity.json'}")
    return 0


def _per_gpu(result: Any, unit: str = "req/s") -> str:
    """'1.07 req/s per GPU, 3 GPUs': the capacity per GPU the cluster occupies (DistServe's
    goodput per GPU under an attainment rule)."""
    per_gpu, gpus = result.capacity_per_gpu_rps, result.num_gpus
    if per_gpu is None:
        return "per GPU: n/a"
    return f"{fmt_number(per_gpu, f'{unit} per GPU')}, {gpus} GPU{'s' if gpus != 1 else ''}"


# --------------------------------------------------------------------------- plot


def _cmd_plot(args: argparse.Namespace) -> int:
    from simserve.plots_sweep import write_sweep_plots

    written = write_sweep_plots(args.sweep_dir, args.out, slo=args.slo, x=args.x,
                                metrics=args.metrics, per=args.per)
    for path in written:
        print(path)
    return 0
