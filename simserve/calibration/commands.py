"""CLI subcommands of the calibration package: calibrate, derive-profile, validate, compare,
inspect-run.

Handlers only parse, call the library and print (DESIGN §2: `cli.py` and its command modules
hold no logic); user errors are `InputError`s, which the CLI prints as one line with exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

from simserve.formatting import fmt_number, fmt_percent

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], int]


def register(sub: argparse._SubParsersAction) -> dict[str, Handler]:
    """Add the calibration subcommands to the `simserve` parser."""
    from simserve.calibration.paths import DEFAULT_REPORT_DIR, PROFILES_DIR

    cal = sub.add_parser(
        "calibrate",
        help="fit cost profiles (calibration/profiles/*.yaml) to measured latencies, or "
        "`calibrate kernels`: extract the measured kernel tables (calibration/kernels/)",
        description="Fit the calibrated cost model to measured data: a splitwise perf_model.csv, "
        "a Vidur mlp.csv or linear_ops.csv, a DistServe profiler .json, or the CSV written by "
        "calibration/profile_gpu.py. Writes one profile per (GPU, model, TP) and prints MAPE "
        "and max error per regime. `simserve calibrate kernels [--gpu G] [--framework vllm]` "
        "instead writes the compact kernel tables of the kernel cost model from the installed "
        "aiconfigurator-core package (pip install 'simserve[calibrate]').",
    )
    cal.add_argument("data", nargs="+", help="measured-data files, or `kernels` (extract the "
                     "kernel tables), or `engine-loop` (fit the engine loop on the real runs)")
    cal.add_argument("--framework", default="vllm",
                     help="with `kernels`: the serving framework whose tables to extract")
    cal.add_argument("--format", default="auto",
                     choices=("auto", "splitwise", "distserve", "steps", "vidur"))
    cal.add_argument("--gpu", help="only this GPU (catalog name); for a Vidur mlp.csv: its GPU")
    cal.add_argument("--model", help="only this model (catalog name)")
    cal.add_argument("--tp", type=int, help="only this TP degree")
    cal.add_argument("--pool-tp", action="store_true",
                     help="one profile per (GPU, model, engine) fitted on all its TP degrees "
                          "at once (valid at each), instead of one per TP degree")
    cal.add_argument("--engine", help="engine label for the profile name (default: the data's)")
    cal.add_argument("--name", help="profile name (only when one profile is written)")
    cal.add_argument("--out", default=None, help="output folder (default: "
                     "calibration/profiles; with `kernels`: calibration/kernels)")
    cal.add_argument("--holdout", type=float, default=0.2,
                     help="share of step shapes held back to measure the error (default 0.2)")
    cal.add_argument("--seed", type=int, default=0, help="seed of the held-back split")
    cal.add_argument("--catalog", help="extra catalog YAML (models or GPUs not packaged)")

    der = sub.add_parser(
        "derive-profile",
        help="profile for an uncalibrated model from a calibrated one on the same GPU",
        description="Where the measured kernel tables cover the base profile's GPU and the "
        "model and TP: a profile fitted to the kernel model's step times (engine loop of "
        "--engine-version included). Elsewhere, or with --transfer: the base profile's fitted "
        "efficiencies and engine constants applied to the model's roofline terms. Runs using "
        "either say it is derived.",
    )
    der.add_argument("base", help="step profile (name under calibration/profiles or path)")
    der.add_argument("--model", required=True, help="catalog model to derive for")
    der.add_argument("--tp", type=int, help="TP degree (default: the base profile's)")
    der.add_argument("--linear-from", help="Vidur linear profile of the same GPU whose mfu, "
                     "mbu and ridge replace the base's")
    der.add_argument("--name", help="profile name")
    der.add_argument("--out", default=str(PROFILES_DIR))
    der.add_argument("--catalog", help="extra catalog YAML")
    der.add_argument("--engine-version", choices=("v0", "v1"), default="v1",
                     help="engine loop of the kernel model the profile is fitted to")
    der.add_argument("--transfer", action="store_true",
                     help="carry the base profile's coefficients (the old derivation) even "
                     "where kernel tables exist")

    val = sub.add_parser(
        "validate",
        help="regenerate calibration/REPORT.md (step errors, cross-validation, replay)",
    )
    val.add_argument("--out-dir", default=str(DEFAULT_REPORT_DIR),
                     help="where REPORT.md and figures/ go (default: ./calibration/)")
    val.add_argument("--no-replay", action="store_true", help="skip the end-to-end replays")

    cmp_ = sub.add_parser(
        "compare",
        help="real `vllm bench serve --save-result` JSON vs a simserve run directory",
    )
    cmp_.add_argument("real", help="vllm bench serve --save-result JSON, SGLang bench_serving "
                      "result, or a served run's per-request CSV (arrival_s, prompt_len, "
                      "output_len, ttft_ms, latency_ms)")
    cmp_.add_argument("run_dir", help="simserve run directory (simserve run --out)")
    cmp_.add_argument("--index", type=int, default=None,
                      help="which result of a file holding several, one JSON per line "
                      "(0 = the first, -1 = the last)")

    ins = sub.add_parser(
        "inspect-run",
        help="KV capacity and decode step of a real served run, from its per-request timings",
        description="Read a served run's per-request CSV (arrival_s, prompt_len, output_len, "
        "ttft_ms, latency_ms) and print its measured KV occupancy (whose flat top, when "
        "admission stalled on a full cache, is the engine's num_gpu_blocks) and its decode "
        "step (fixed + per running sequence) from a regression on the concurrency each request "
        "met. With --scenario, the scenario's step and KV capacity are printed beside them.",
    )
    ins.add_argument("run", help="per-request CSV of a real served run")
    ins.add_argument("--block-size", type=int, default=16, help="KV block size (default 16)")
    ins.add_argument("--scenario", help="scenario whose cost model and KV capacity to compare")
    return {"calibrate": _calibrate, "derive-profile": _derive, "validate": _validate,
            "compare": _compare, "inspect-run": _inspect_run}


def _fmt_errors(errors: dict[str, dict[str, float]]) -> str:
    parts = []
    regimes = ("linear",) if "linear" in errors else ("prefill", "decode", "mixed")
    for regime in regimes:
        e = errors.get(regime)
        parts.append(f"{regime} {fmt_percent(e['mape_pct'] / 100):>6} / "
                     f"{fmt_percent(e['max_err_pct'] / 100):>6}" if e else
                     f"{regime}    n/a")
    return "  ".join(parts)


def _calibrate(args: argparse.Namespace) -> int:
    from simserve.calibration.calibrate import (
        calibrate_linear,
        calibrate_steps,
        load_measured,
        write_profile,
    )
    from simserve.calibration.datasets import LinearData, StepData
    from simserve.calibration.paths import PROFILES_DIR
    from simserve.catalog import load_catalog
    from simserve.errors import InputError
    from simserve.experiments.atomic import check_writable_dir

    if args.data == ["kernels"] and not Path("kernels").exists():
        return _calibrate_kernels(args)
    if args.data == ["engine-loop"] and not Path("engine-loop").exists():
        return _calibrate_engine_loop()
    args.out = str(PROFILES_DIR) if args.out is None else args.out
    catalog = load_catalog(args.catalog)
    check_writable_dir(args.out)  # before the fits, not after them
    groups = []
    for path in args.data:
        groups += load_measured(path, args.format, catalog, args.gpu)
    linear = [g for g in groups if isinstance(g, LinearData)]
    steps = [g for g in groups if not isinstance(g, LinearData)]

    def keep(g: object) -> bool:
        gpu, model = getattr(g, "gpu", ""), getattr(g, "model", "")
        return ((args.gpu is None or gpu.casefold() == args.gpu.casefold())
                and (args.model is None or model.casefold() == args.model.casefold())
                and (args.tp is None or getattr(g, "tp", None) == args.tp))

    steps = [g for g in steps if keep(g)]
    linear = [g for g in linear if args.gpu is None or g.gpu.casefold() == args.gpu.casefold()]
    if not steps and not linear:
        raise InputError("no data left after the --gpu/--model/--tp filters",
                         source=", ".join(args.data))
    if args.engine:
        steps = [dataclasses.replace(g, engine=args.engine) for g in steps]
    fits: list[list[StepData]] = [[g] for g in steps]
    if args.pool_tp:
        pooled: dict[tuple[str, str, str], list[StepData]] = {}
        for g in steps:
            pooled.setdefault((g.gpu, g.model, g.engine), []).append(g)
        fits = list(pooled.values())
    if args.name and len(fits) + (1 if linear else 0) > 1:
        raise InputError("--name needs exactly one (GPU, model, TP) group, or one (GPU, model, "
                         "engine) with --pool-tp", field="--name")
    print(f"{'profile':<52} MAPE / max error per regime (held back {fmt_percent(args.holdout)})")
    for group in fits:
        out = calibrate_steps(group, catalog=catalog, holdout=args.holdout, seed=args.seed,
                              name=args.name)
        path = write_profile(out.profile, args.out)
        print(f"{out.profile.name:<52} fit:      {_fmt_errors(out.train)}")
        if out.holdout:
            print(f"{'':<52} held back: {_fmt_errors(out.holdout)}")
        print(f"{'':<52} -> {path}")
    gpus = sorted({g.gpu for g in linear})
    for gpu in gpus:
        out = calibrate_linear([g for g in linear if g.gpu == gpu], catalog=catalog,
                               holdout=args.holdout, seed=args.seed)
        path = write_profile(out.profile, args.out)
        print(f"{out.profile.name:<52} fit:      {_fmt_errors(out.train)}")
        print(f"{'':<52} held back: {_fmt_errors(out.holdout)}")
        print(f"{'':<52} -> {path}")
    return 0


def _calibrate_kernels(args: argparse.Namespace) -> int:
    from simserve.calibration.kernel_extract import AIC_PACKAGE, AIC_VERSION, extract_kernels

    written = extract_kernels(args.out, gpus=[args.gpu] if args.gpu else None,
                              framework=args.framework)
    for gpu, files in written.items():
        size_kb = sum(f.stat().st_size for f in files) / 1024
        print(f"{gpu:<16} {len(files)} files, {fmt_number(size_kb)} KiB -> {files[0].parent}")
    print(f"from {AIC_PACKAGE} {AIC_VERSION} (Apache-2.0); latencies in us")
    return 0


def _calibrate_engine_loop() -> int:
    from simserve.calibration.engine_loop_fit import fit_loop, loop_runs, write_loop_terms

    runs = loop_runs()
    fits = []
    for version in ("v0", "v1"):
        fit = fit_loop(version, [r for r in runs if r.version == version and r.fit])
        fits.append(fit)
        terms = ", ".join(f"{k} {fmt_number(v)}" for k, v in fit.terms.items())
        print(f"{version}: {terms}  (fitted on {', '.join(fit.fitted_on)})")
    print(f"-> {write_loop_terms(fits)}")
    return 0


def _derive(args: argparse.Namespace) -> int:
    from simserve.calibration.calibrate import write_profile
    from simserve.catalog import load_catalog
    from simserve.costmodel.calibrated import derive_profile, load_profile
    from simserve.costmodel.select import find_profile
    from simserve.experiments.atomic import check_writable_dir

    catalog = load_catalog(args.catalog)
    check_writable_dir(args.out)
    base = load_profile(find_profile(args.base))
    linear = load_profile(find_profile(args.linear_from)) if args.linear_from else None
    tp = args.tp or base.tp
    model = catalog.model(args.model)
    if not args.transfer and linear is None:
        from simserve.calibration.derive_kernels import derive_from_kernels
        from simserve.config import EngineConfig
        from simserve.errors import InputError

        try:
            out = derive_from_kernels(catalog.gpu(base.gpu), model, tp, name=args.name,
                                      base=base.name,
                                      engine=EngineConfig(version=args.engine_version))
        except InputError as exc:
            print(f"note: {exc.message}; carrying {base.name}'s coefficients instead")
        else:
            path = write_profile(out.profile, args.out)
            held = out.holdout.get("all", {})
            print(f"derived {out.profile.name}: fitted to the kernel model of {base.gpu} "
                  f"(engine loop {args.engine_version}); held-back error against it "
                  f"{fmt_percent(held.get('mape_pct', float('nan')) / 100)} MAPE -> {path}")
            print("note: nothing was measured for this model; runs using it say so")
            return 0
    profile = derive_profile(base, model, tp, name=args.name, linear=linear)
    path = write_profile(profile, args.out)
    print(f"derived {profile.name} from {base.name} (fitted on {base.model}, {base.tp_label}) "
          f"-> {path}")
    print("note: nothing was measured for this model; runs using it say so")
    return 0


def _validate(args: argparse.Namespace) -> int:
    import sys

    from simserve.calibration.report import write_report
    from simserve.experiments.atomic import check_writable_dir

    check_writable_dir(args.out_dir, "--out-dir")  # an empty one is refused, not taken as "."

    def progress(message: str) -> None:
        print(f"validate {message}", file=sys.stderr, flush=True)

    path = write_report(Path(args.out_dir), replay=not args.no_replay, progress=progress)
    print(f"wrote {path} and {Path(path).parent / 'figures'}/")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import warnings

    from simserve.calibration.compare import (
        compare,
        format_comparison,
        load_real,
        load_run,
        mismatches,
    )
    from simserve.errors import InputWarning
    from simserve.yaml_lines import parse_yaml, read_yaml_text

    real = load_real(args.real, args.index)
    summary, requests = load_run(args.run_dir)
    scenario = None
    scenario_path = Path(args.run_dir) / "scenario.yaml"
    if scenario_path.is_file():
        scenario, _node = parse_yaml(read_yaml_text(scenario_path, "scenario file"),
                                     str(scenario_path))
    for sentence in mismatches(real, summary, scenario if isinstance(scenario, dict) else None):
        warnings.warn(InputWarning(f"{sentence}: compare like with like"), stacklevel=1)
    rows = compare(real, summary, requests)
    print(format_comparison(rows, args.real, args.run_dir))
    r_done, s_done = real.get("completed"), summary.get("completed")
    if r_done is not None and s_done is not None and r_done != s_done:
        print(f"note: the runs completed different numbers of requests ({r_done} real, "
              f"{s_done} simulated): compare like with like")
    return 0


def _inspect_run(args: argparse.Namespace) -> int:
    from simserve.calibration.occupancy import measured_kv_occupancy
    from simserve.calibration.online import scenario_decode_step_ms
    from simserve.calibration.step_regression import fit_decode_step
    from simserve.config import load_scenario
    from simserve.errors import InputError
    from simserve.resolve import resolve

    if args.block_size < 1:
        raise InputError(f"must be >= 1, got {args.block_size}", field="--block-size")
    # The scenario first: a bad one is refused before anything is printed.
    resolved = resolve(load_scenario(args.scenario)) if args.scenario else None
    occ = measured_kv_occupancy(args.run, args.block_size)
    step = fit_decode_step(args.run)
    peak = occ.peak_blocks
    print(f"run {args.run}")
    print(f"  KV occupancy: peak {peak} blocks of {args.block_size} tokens; "
          f"{fmt_percent(occ.share_of_time_above(0.95 * peak))} of the run within 5% of it "
          "(a long stay there means admission stalled on a full cache: the peak is the "
          "engine's capacity)")
    print(f"  decode step: {fmt_number(step.fixed_ms)} ms + {fmt_number(step.per_seq_ms)} ms per "
          f"running sequence (regression over {step.num_requests} requests, MAPE "
          f"{fmt_percent(step.mape_pct / 100)}); mean batch {fmt_number(step.mean_batch)}, "
          f"mean context {fmt_number(step.mean_context_tokens)} tokens")
    if resolved is not None:
        at_mean = step.mean_step_ms
        simulated = scenario_decode_step_ms(resolved.cost_model, step.mean_batch,
                                            step.mean_context_tokens)
        print(f"  scenario {args.scenario}: decode step at that batch and context "
              f"{fmt_number(simulated)} ms (run: {fmt_number(at_mean)} ms, "
              f"{fmt_percent(simulated / at_mean - 1, signed=True)}); "
              f"KV capacity {resolved.limits.num_blocks} blocks (run's peak: {peak})")
    return 0
