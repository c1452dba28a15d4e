"""`simserve casestudy specdec`: the speculative-decoding case study from the command line."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from simserve.formatting import fmt_number

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction) -> dict[str, Handler]:
    """Add the `casestudy` command (with its `specdec` study) to the CLI."""
    from simserve.experiments.casestudy import DEFAULT_PRESET, PRESETS

    cs = subparsers.add_parser(
        "casestudy", help="reproducible case studies (report + figures)",
        description="Run a case study and write its report.md and figures.",
    )
    studies = cs.add_subparsers(dest="study", required=True)
    spec = studies.add_parser(
        "specdec",
        help="speculative decoding with and without, over a sweep of arrival rates",
        description="Speculative decoding with and without, over a sweep of arrival rates: "
        "report.md and seven figures.",
    )
    spec.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                      help=f"scenario family (default: {DEFAULT_PRESET})")
    spec.add_argument("--out", default=None,
                      help="output directory (default: runs/casestudy-specdec-<preset>)")
    # Hidden, as the catalog's: `--quick` (fewer rates, coarser capacities, the same
    # conclusions) and the test-only `--size tiny` (mechanics only).
    spec.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    spec.add_argument("--size", choices=("tiny",), default=None, help=argparse.SUPPRESS)
    spec.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="override a field of the preset scenario (both systems), e.g. "
                      "--set engine.speculative.acceptance.alpha=0.8")
    spec.add_argument("--seed", type=int, default=None, help="override the scenario seed")
    spec.add_argument("--verbose", action="store_true", help="print every simulated run")
    spec.add_argument("--jobs", type=int, default=None,
                      help="parallel simulation processes (default: all cores)")
    return {"casestudy": _cmd_casestudy}


def _cmd_casestudy(args: argparse.Namespace) -> int:
    from simserve.errors import InputError
    from simserve.experiments.atomic import claim_output_dir
    from simserve.experiments.casestudy import run_specdec
    from simserve.experiments.casestudy_report import CASE_STUDY_DIR, specdec_writer

    overrides = list(args.overrides)
    if args.seed is not None:
        if args.seed < 0:
            raise InputError(f"must be >= 0, got {args.seed}", field="--seed")
        overrides.append(f"seed={args.seed}")
    size = args.size or ("quick" if args.quick else "full")
    suffix = "" if size == "full" else f"-{size}"
    out = (Path(args.out) if args.out is not None
           else Path("runs") / f"casestudy-specdec-{args.preset}{suffix}")

    def progress(message: str) -> None:
        if args.verbose or not message.startswith("  "):
            sys.stderr.write(message + "\n")
            sys.stderr.flush()

    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"must be >= 1, got {args.jobs}", field="--jobs")
    # Claimed before minutes of simulation: an unwritable or foreign --out fails now.
    with claim_output_dir(out, CASE_STUDY_DIR) as claim:
        t0 = time.perf_counter()
        study = run_specdec(args.preset, size=size, overrides=overrides,
                            progress=progress, jobs=args.jobs)
        command = "simserve casestudy specdec " + shlex.join(
            [f"--preset={args.preset}", *(["--quick"] if args.quick else []),
             *([f"--size={args.size}"] if args.size else []),
             *(f"--set={o}" for o in args.overrides),
             *([f"--seed={args.seed}"] if args.seed is not None else [])]
        )
        claim.write(specdec_writer(study, command))
    print(_headline(study))
    print(f"case study: {out}/report.md ({len(study.records)} runs, "
          f"{fmt_number(time.perf_counter() - t0)} s wall-clock)")
    return 0


def _headline(study: object) -> str:
    """A few key numbers for the console."""
    from simserve.experiments.casestudy import BASELINE, RULES, SPEC, SpecDecStudy, crossings
    from simserve.formatting import fmt_number, fmt_ratio

    assert isinstance(study, SpecDecStudy)
    sp = study.speedup(SPEC)
    down = [c for c, d in crossings(*study.steady(SPEC, sp)) if d == "down"]
    first = study.saturation_rps(SPEC) < study.saturation_rps(BASELINE)
    cross = (fmt_number(down[0], "req/s") if down else "none below saturation"
             + (" (speculation saturates first: it loses by the load it carries)" if first
                else ""))
    caps = ", ".join(
        f"{rule.label}: {fmt_number(study.capacities[rule.key][BASELINE].value)} vs "
        f"{fmt_number(study.capacities[rule.key][SPEC].value)}"
        for rule in RULES
    )
    return (f"speedup of mean E2EL at {fmt_number(study.rates[0], 'req/s')}: {fmt_ratio(sp[0])}; "
            f"crossover: {cross}\ncapacity no spec vs spec (req/s): {caps}")
