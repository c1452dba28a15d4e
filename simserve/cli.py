"""Command line: parse, load, run, store, print; nothing else.

Every user error (`InputError`) becomes one line on stderr and exit code 2, with nothing
written; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

from simserve import __version__
from simserve.config import load_scenario
from simserve.errors import InputError
from simserve.resources import default_scenario, scenarios_dir

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]

# Modules that add subcommands: each has `register(subparsers) -> dict[name, handler]`.
COMMAND_MODULES: tuple[str, ...] = (
    "simserve.calibration.commands",
    "simserve.experiments.commands",
    "simserve.experiments.casestudy_commands",
    "simserve.antipatterns.commands",
)


def _add_scenario_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any scenario field, e.g. --set engine.policy=prefill_first")
    p.add_argument("--seed", type=int, default=None, help="override the scenario seed")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog="simserve",
        description="Discrete-event simulator of LLM inference serving (vLLM-compatible metrics).",
    )
    parser.add_argument("--version", action="version", version=f"simserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Handler] = {"run": _cmd_run, "bench": _cmd_bench}

    run = sub.add_parser("run", help="simulate one scenario and write a run directory")
    run.add_argument("scenario", nargs="?", default=None,
                     help="scenario YAML file (default: the packaged scenarios/default.yaml)")
    _add_scenario_args(run)
    run.add_argument("--out", default=None, help="run directory (default: runs/<scenario name>)")
    run.add_argument("--plots", action="store_true",
                     help="also write PNG figures (step timeline, token timelines, TTFT/TPOT/TBT "
                     "CDFs, KV occupancy) into the run directory")
    run.add_argument("--trace", action="store_true",
                     help="also write trace.json, a Chrome/Perfetto trace of steps and request "
                     "phases (open in ui.perfetto.dev)")

    bench = sub.add_parser("bench", help="simulated requests per wall-clock second")
    bench.add_argument("--scenario", default=None,
                       help="scenario YAML file (default: the packaged scenarios/bench.yaml)")
    bench.add_argument("--requests", type=int, default=None, help="override num_requests")
    _add_scenario_args(bench)
    for name in COMMAND_MODULES:
        handlers.update(importlib.import_module(name).register(sub))
    return parser, handlers


def _overrides(args: argparse.Namespace) -> list[str]:
    items = list(args.overrides)
    if args.seed is not None:
        items.append(f"seed={args.seed}")
    if getattr(args, "requests", None) is not None:
        items.append(f"workload.num_requests={args.requests}")
    return items


def _cmd_run(args: argparse.Namespace) -> int:
    from simserve.experiments.run import run_scenario, write_run_dir
    from simserve.report import format_summary

    scenario = load_scenario(args.scenario or default_scenario(), _overrides(args))
    out_dir = Path(args.out) if args.out else Path("runs") / scenario.name
    t0 = time.perf_counter()
    output = run_scenario(scenario)
    wall_s = time.perf_counter() - t0
    writers: list[Callable[[Path], object]] = []
    if args.plots:
        from simserve.plots import write_run_figures

        writers.append(lambda tmp: write_run_figures(output, tmp))
    if args.trace:
        from simserve.experiments.trace_export import write_trace

        meta = {k: output.summary.get(k) for k in ("scenario", "policy", "model_id", "hardware")}
        # The pool sizes number decode instances after ALL prefill instances, idle ones too.
        pools = ({p.role: p.setup.instances for p in output.resolved.pools}
                 if len(output.resolved.pools) > 1 else None)
        writers.append(lambda tmp: write_trace(output.result, tmp / "trace.json", metadata=meta,
                                               pools=pools))
    written = write_run_dir(output, out_dir, extra_writers=writers)
    print(format_summary(output.summary))
    print(f"run directory: {written}  (simulated in {wall_s:.2f} s wall-clock)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from simserve.experiments.bench import run_bench

    scenario = load_scenario(args.scenario or scenarios_dir("bench.yaml"), _overrides(args))
    print(run_bench(scenario).format())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `simserve` console script; returns the exit code."""
    parser, handlers = _parser()
    args = parser.parse_args(argv)
    try:
        return handlers[args.command](args)
    except InputError as exc:
        print(f"simserve: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simserve: interrupted", file=sys.stderr)
        return 130
