"""Command line: parse, load, run, store, print; nothing else.

Every user error (`InputError`) becomes one line on stderr and exit code 2, with nothing
written; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from simserve import __version__
from simserve.config import load_scenario
from simserve.errors import InputError, show_warning
from simserve.formatting import fmt_number
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
    bench.add_argument("--profile", metavar="FILE", default=None,
                       help="write a cProfile of the engine phase to FILE (python -m pstats FILE)")
    bench.add_argument("--no-fast-forward", dest="fast_forward", action="store_false",
                       help="wait for every engine step as its own event (same results, slower: "
                       "shows what fast-forwarding saves)")
    _add_scenario_args(bench)
    for name in COMMAND_MODULES:
        handlers.update(importlib.import_module(name).register(sub))
    return parser, handlers


def _options(args: argparse.Namespace) -> dict[str, str]:
    """The flags that stand for scenario fields, as overrides (their errors name the flag)."""
    options = {}
    if args.seed is not None:
        options["--seed"] = f"seed={args.seed}"
    if getattr(args, "requests", None) is not None:
        options["--requests"] = f"workload.num_requests={args.requests}"
    return options


def _cmd_run(args: argparse.Namespace) -> int:
    from simserve.experiments.atomic import claim_output_dir
    from simserve.experiments.run import RUN_DIR, run_dir_writer, run_scenario
    from simserve.report import format_summary

    scenario = load_scenario(args.scenario or default_scenario(), args.overrides,
                             options=_options(args))
    out_dir = Path(args.out) if args.out is not None else Path("runs") / scenario.name
    # Claimed before simulating: a directory that cannot be written or is not ours fails now.
    with claim_output_dir(out_dir, RUN_DIR) as claim:
        t0 = time.perf_counter()
        output = run_scenario(scenario, show_progress=True)
        wall_s = time.perf_counter() - t0
        writers: list[Callable[[Path], object]] = []
        if args.plots:
            from simserve.plots import write_run_figures

            writers.append(lambda tmp: write_run_figures(output, tmp))
        if args.trace:
            from simserve.experiments.trace_export import write_trace

            meta = {k: output.summary.get(k) for k in ("scenario", "policy", "model_id",
                                                       "hardware")}
            # The pool sizes number decode instances after ALL prefill instances, idle ones too.
            pools = ({p.role: p.setup.instances for p in output.resolved.pools}
                     if len(output.resolved.pools) > 1 else None)
            writers.append(lambda tmp: write_trace(output.result, tmp / "trace.json",
                                                   metadata=meta, pools=pools))
        claim.write(run_dir_writer(output, writers))
    print(format_summary(output.summary))
    print(f"run directory: {out_dir}  (simulated in {fmt_number(wall_s)} s wall-clock)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from simserve.experiments.bench import run_bench

    scenario = load_scenario(args.scenario or scenarios_dir("bench.yaml"), args.overrides,
                             options=_options(args))
    print(run_bench(scenario, fast_forward=args.fast_forward, profile_to=args.profile).format())
    if args.profile:
        print(f"engine profile: {args.profile}  (python -m pstats {args.profile})")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: temporary output is removed on the way out."""


def _on_sigterm(main_pid: int) -> Callable[[int, object], None]:
    def handle(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:
            # A worker forked after the handler was set: die the default way, at once.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    return handle


def _stdout_failed(exc: OSError) -> int:
    """Standard output cannot be written (closed pipe, full disk): say so once, on stderr, and
    keep Python from failing again when it flushes stdout at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    if isinstance(exc, BrokenPipeError):
        return 141  # as a shell reports a reader that went away (128 + SIGPIPE)
    print(f"simserve: error: cannot write to standard output ({exc.strerror or exc})",
          file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `simserve` console script; returns the exit code."""
    parser, handlers = _parser()
    args = parser.parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm(os.getpid()))
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            code = handlers[args.command](args)
        sys.stdout.flush()
        return code
    except InputError as exc:
        print(f"simserve: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except Terminated:
        print("simserve: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("simserve: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if _is_stdout(exc):
            return _stdout_failed(exc)
        from simserve.experiments.atomic import is_environment_error

        if not is_environment_error(exc):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"simserve: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _is_stdout(exc: OSError) -> bool:
    """Whether `exc` came from writing standard output: it names no file, and stdout still
    refuses a line (a failed write may have dropped what was buffered, so a flush alone can
    succeed)."""
    if isinstance(exc, BrokenPipeError):
        return True
    if exc.filename is not None:
        return False
    try:
        print(file=sys.stdout, flush=True)
    except OSError:
        return True
    return False
