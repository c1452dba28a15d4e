"""CLI subcommands `antipatterns` (run the catalog, write the report) and `check` (lint an
evaluation description against the catalog); registered through `cli.COMMAND_MODULES`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simserve.formatting import fmt_number

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], int]


def register(subparsers: Any) -> dict[str, Handler]:
    """Add the `antipatterns` and `check` subcommands; return their handlers by name."""
    from simserve.antipatterns.catalog import CATALOG

    ids = ", ".join(e.id for e in CATALOG)
    ap = subparsers.add_parser(
        "antipatterns",
        help="rerun scenarios under fair and unfair evaluation setups; report how the "
        "conclusions change",
        description="Run the anti-pattern catalog: each entry runs one scenario under an unfair "
        "and a fair evaluation setup and states both conclusions from the numbers. Writes "
        f"DIR/report.md, DIR/verdicts.json and DIR/figures/<ID>.png. Entries: {ids}.",
    )
    ap.add_argument("--only", nargs="+", metavar="ID", default=None,
                    help="run only these entries (e.g. --only MD1 ES1)")
    ap.add_argument("--out", default=None,
                    help="output directory (default: runs/antipatterns)")
    # A smoke test of the pipeline (coarse brackets): its outcomes may differ from the full
    # run's, so it is not offered in the help; its report says so.
    ap.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0,
                    help="root seed of the replication seeds (default 0)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="parallel simulation processes (default: all cores)")
    # Test-only: seconds per entry, verdict mechanics only.
    ap.add_argument("--size", choices=("tiny",), default=None, help=argparse.SUPPRESS)

    check = subparsers.add_parser(
        "check",
        help="list the evaluation anti-patterns an EVAL.yaml exhibits",
        description="Read a description of an evaluation (systems and their settings, "
        "workload, arrivals, requests, warm-up, metrics, SLOs) and list the anti-patterns it "
        "exhibits, each with the catalog entry that shows why it matters. Exit code: 0 clean, "
        "1 anti-patterns found, 2 bad input. Examples: scenarios/evaluations/.",
    )
    check.add_argument("eval_file", metavar="EVAL.yaml", help="evaluation description")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    return {"antipatterns": _cmd_antipatterns, "check": _cmd_check}


def _cmd_antipatterns(args: argparse.Namespace) -> int:
    from simserve import __version__
    from simserve.antipatterns.catalog import SIZES, get_entries
    from simserve.antipatterns.figures import entry_png
    from simserve.antipatterns.report import (
        REPORT_DIR,
        check_keeps_entries,
        report_writer,
        setup_summary,
    )
    from simserve.antipatterns.runner import CatalogRunner
    from simserve.errors import InputError
    from simserve.experiments.atomic import claim_output_dir

    entries = get_entries(args.only)
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"must be >= 1, got {args.jobs}", field="--jobs")
    if args.seed < 0:
        raise InputError(f"must be >= 0, got {args.seed}", field="--seed")
    size = SIZES[args.size or ("quick" if args.quick else "full")]
    out = (Path(args.out) if args.out is not None
           else Path("runs") / _default_dir(size.name, args.only, entries))
    command = shlex.join(
        ["simserve", "antipatterns",
         *(["--quick"] if args.quick else []), *([f"--size={args.size}"] if args.size else []),
         *(["--only", *[e.id for e in entries]] if args.only else []),
         *([f"--seed={args.seed}"] if args.seed else [])])

    def progress(message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    # NOTE: figures are drawn as their entries finish, while the pool's workers run the rest
    # (drawing them all after the last run left the cores idle for seconds).
    drawn: dict[str, bytes] = {}

    def done(result: dict) -> None:
        drawn[result["id"]] = entry_png(result)
        sys.stdout.write(
            f"{result['id']} {result['outcome']:<9} unfair: {setup_summary(result, 'unfair')}; "
            f"fair: {setup_summary(result, 'fair')} "
            f"[{'as expected' if result['as_expected'] else 'NOT as expected'}, "
            f"{fmt_number(result['wall_s'])} s]\n")
        sys.stdout.flush()

    t0 = time.perf_counter()
    # Claimed before the runs: an unwritable or foreign --out fails now, not after minutes.
    with claim_output_dir(out, REPORT_DIR) as claim:
        check_keeps_entries(out, [e.id for e in entries])
        with CatalogRunner(size, root_seed=args.seed, jobs=args.jobs,
                           progress=progress) as runner:
            runner.pool.say(f"anti-pattern catalog ({size.name}): {len(entries)} entries, "
                            f"seeds {runner.seeds}, {runner.jobs} process(es)")
            results = runner.run_entries(entries, on_done=done)
            verdicts = {
                "simserve_version": __version__,
                "command": command,
                **runner.metadata(),
                "num_runs": runner.num_runs,
                "wall_s": round(time.perf_counter() - t0, 1),
                "entries": results,
            }
        claim.write(report_writer(verdicts, drawn))
    print(f"report: {out / 'report.md'}  ({fmt_number(time.perf_counter() - t0)} s wall-clock)")
    return 0


def _default_dir(size: str, only: list[str] | None, entries: list[Any]) -> str:
    """runs/antipatterns[-quick], or for an `--only` run a directory of its own
    (antipatterns-quick-only-BF1-MD1), so a partial report never replaces the full one."""
    name = "antipatterns" + ("" if size == "full" else f"-{size}")
    if only:
        name += "-only-" + "-".join(e.id for e in entries)
    return name


def _cmd_check(args: argparse.Namespace) -> int:
    import json

    from simserve.antipatterns.checklist import format_findings, lint_file

    findings = lint_file(args.eval_file)
    if args.json:
        print(json.dumps([f.to_mapping() for f in findings], indent=2))
    else:
        print(format_findings(args.eval_file, findings))
    return 1 if findings else 0
