"""The fidelity report: step-level errors per dataset (held-back 20%), cross-validation across TP
degrees and models, the end-to-end replay of real vLLM runs and of real disaggregated DistServe
runs; writes calibration/REPORT.md and its figures.

Everything is recomputed from the shipped data with fixed seeds, so the report is reproducible
byte for byte (`simserve validate`). Step-level fits here use the same procedure as
`simserve calibrate`; the replay uses the shipped profiles under calibration/profiles/.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simserve.calibration.calibrate import (
    HOLDOUT_FRACTION,
    calibrate_linear,
    calibrate_steps,
)
from simserve.calibration.consistency import (
    ConsistencyReport,
    distserve_markdown,
    run_consistency_checks,
    splitwise_markdown,
)
from simserve.calibration.datasets import (
    LinearData,
    StepData,
    load_allreduce,
    load_distserve,
    load_splitwise,
    load_vidur_linear,
)
from simserve.calibration.disaggregated import (
    DisaggregatedReport,
    disaggregated_figure,
    disaggregated_markdown,
    disaggregated_targets,
    run_disaggregated_validation,
)
from simserve.calibration.fit import (
    error_stats,
    fit_linear,
    fit_steps,
    predict_linear,
    predict_steps,
)
from simserve.calibration.online import (
    ONLINE_TERM,
    OnlineReport,
    online_markdown,
    run_online_validation,
    vllm_traces,
)
from simserve.calibration.paths import CALIBRATION_DIR, PROFILES_DIR, SHIPPED_DATA
from simserve.calibration.replay import (
    REPLAY_METRICS,
    ReplayResult,
    replay_trace,
    tpot_ratio_per_request,
    trace_rate,
)
from simserve.catalog import Catalog, load_catalog
from simserve.costmodel.calibrated import load_profile, predict_ms, step_terms

__all__ = [
    "DERIVED_PROFILE",
    "DERIVED_VLLM_PROFILE",
    "DISTSERVE_PROFILE",
    "DatasetReport",
    "ValidationReport",
    "run_validation",
    "write_report",
]

DISTSERVE_PROFILE = "a100-80gb-sxm_opt-13b_tp1_vllm"
DERIVED_PROFILE = "a100-80gb-sxm_opt-13b_tp1_derived"
# OPT-13B at TP1 derived from one coefficient set fitted on DistServe's vLLM formula for OPT-66B
# at TP 2, 3, 4 and 8 (`simserve calibrate --pool-tp`): same engine and GPU, another model.
DERIVED_VLLM_PROFILE = "a100-80gb-sxm_opt-13b_tp1_derived-vllm"
STEP_TARGET_PCT = 5.0
LOTO_TARGET_PCT = 15.0
E2E_TARGET_PCT = 15.0


@dataclass
class DatasetReport:
    """Step-level results of one dataset: pooled predictions and per-group errors."""

    name: str
    predicted: list[np.ndarray] = field(default_factory=list)
    measured: list[np.ndarray] = field(default_factory=list)
    regimes: list[np.ndarray] = field(default_factory=list)
    held: list[np.ndarray] = field(default_factory=list)
    inside: list[np.ndarray] = field(default_factory=list)
    groups: list[tuple[str, dict, dict]] = field(default_factory=list)  # key, train, holdout
    notes: list[str] = field(default_factory=list)

    def pooled(self, which: str) -> dict[str, dict[str, float]]:
        """Errors pooled over the dataset's groups: 'train', 'holdout' or 'holdout_in'."""
        pred, meas = np.concatenate(self.predicted), np.concatenate(self.measured)
        reg, held = np.concatenate(self.regimes), np.concatenate(self.held)
        mask = {"train": ~held, "holdout": held,
                "holdout_in": held & np.concatenate(self.inside)}[which]
        return error_stats(pred[mask], meas[mask], reg[mask])


@dataclass
class ValidationReport:
    """Everything REPORT.md shows."""

    datasets: dict[str, DatasetReport]
    loto: list[dict]  # leave one TP out
    lomo: list[dict]  # leave one model out (Vidur)
    derived_vs_distserve: dict[str, dict[str, float]]
    replays: dict[str, list[ReplayResult]]  # profile label -> runs
    profile_notes: dict[str, str]
    # The KV capacity and online per-sequence time read from the vLLM runs, with their checks.
    online: OnlineReport | None = None
    # The replay of DistServe's real disaggregated runs.
    disaggregated: DisaggregatedReport | None = None
    # Model-free checks of the step data (why some step targets cannot be met).
    consistency: ConsistencyReport | None = None


# --------------------------------------------------------------------------- step level


def _step_dataset(name: str, groups: Sequence[StepData], catalog: Catalog) -> DatasetReport:
    from simserve.calibration.fit import envelope_of, holdout_mask, inside_envelope

    rep = DatasetReport(name)
    for g in groups:
        out = calibrate_steps(g, catalog=catalog)
        held = holdout_mask(g.regimes, HOLDOUT_FRACTION, 0)
        # Predictions of the model fitted WITHOUT the held-back rows (as in calibrate_steps).
        trial = fit_steps([g.subset(~held)], catalog)
        rep.predicted.append(predict_steps(trial.coefficients, g, catalog))
        rep.measured.append(g.time_ms)
        rep.regimes.append(g.regimes)
        rep.held.append(held)
        rep.inside.append(inside_envelope(envelope_of(g.subset(~held)), g))
        rep.groups.append((g.key, out.train, out.holdout))
        for note in g.notes:
            if note not in rep.notes:
                rep.notes.append(note)
    return rep


def _vidur_dataset(groups: Sequence[LinearData], catalog: Catalog) -> DatasetReport:
    from simserve.calibration.fit import holdout_mask

    rep = DatasetReport("vidur")
    by_gpu: dict[str, list[LinearData]] = defaultdict(list)
    for g in groups:
        by_gpu[g.gpu].append(g)
    for gpu, gs in sorted(by_gpu.items()):
        out = calibrate_linear(gs, catalog=catalog)
        helds = [holdout_mask(np.full(len(g), "linear"), HOLDOUT_FRACTION, 0) for g in gs]
        trial = fit_linear([g.subset(~h) for g, h in zip(gs, helds, strict=True)], catalog)
        for g, h in zip(gs, helds, strict=True):
            rep.predicted.append(predict_linear(trial.coefficients, g, catalog))
            rep.measured.append(g.time_ms)
            rep.regimes.append(np.full(len(g), "linear", dtype=object))
            rep.held.append(h)
            # Vidur's grid is dense; a held-back point lies inside the trained token range.
            rep.inside.append(np.ones(len(g), dtype=bool))
        rep.groups.append((gpu, out.train, out.holdout))
    return rep


def _loto_steps(dataset: str, groups: Sequence[StepData], catalog: Catalog) -> list[dict]:
    """Leave one TP degree out: fit on the other TP degrees of the same GPU and model."""
    rows = []
    by_key: dict[tuple[str, str], list[StepData]] = defaultdict(list)
    for g in groups:
        by_key[(g.gpu, g.model)].append(g)
    for (gpu, model), gs in sorted(by_key.items()):
        if len(gs) < 2:
            continue
        for held in gs:
            others = [g for g in gs if g is not held]
            fit = fit_steps(others, catalog)
            pred = predict_steps(fit.coefficients, held, catalog)
            rows.append({"dataset": dataset, "gpu": gpu, "model": model, "held_out": f"tp{held.tp}",
                         "trained_on": ",".join(f"tp{g.tp}" for g in others),
                         "errors": error_stats(pred, held.time_ms, held.regimes)})
    return rows


def _loo_linear(groups: Sequence[LinearData], catalog: Catalog) -> tuple[list[dict], list[dict]]:
    """Vidur: leave one model out and leave one TP degree out, per GPU."""
    lomo, loto = [], []
    by_gpu: dict[str, list[LinearData]] = defaultdict(list)
    for g in groups:
        by_gpu[g.gpu].append(g)
    for gpu, gs in sorted(by_gpu.items()):
        for held in gs:
            fit = fit_linear([g for g in gs if g is not held], catalog)
            pred = predict_linear(fit.coefficients, held, catalog)
            lomo.append({"dataset": "vidur", "gpu": gpu, "held_out": held.model,
                         "errors": error_stats(pred, held.time_ms,
                                               np.full(len(held), "linear", dtype=object))})
        tps = sorted({int(t) for g in gs for t in np.unique(g.tp)})
        for tp in tps:
            train = [g.subset(g.tp != tp) for g in gs if (g.tp != tp).any()]
            test = [g.subset(g.tp == tp) for g in gs if (g.tp == tp).any()]
            if not train or not test:
                continue
            fit = fit_linear(train, catalog)
            pred = np.concatenate([predict_linear(fit.coefficients, g, catalog) for g in test])
            meas = np.concatenate([g.time_ms for g in test])
            loto.append({"dataset": "vidur", "gpu": gpu, "model": "all", "held_out": f"tp{tp}",
                         "trained_on": ",".join(f"tp{t}" for t in tps if t != tp),
                         "errors": error_stats(pred, meas,
                                               np.full(meas.size, "linear", dtype=object))})
    return lomo, loto


def _derived_vs_distserve(catalog: Catalog, distserve: Sequence[StepData]) -> dict:
    """Step-level error of each derived OPT-13B profile against DistServe's formula grid."""
    target = next((g for g in distserve if g.model == "opt-13b" and g.tp == 1), None)
    out = {}
    for name in (DERIVED_PROFILE, DERIVED_VLLM_PROFILE):
        path = PROFILES_DIR / f"{name}.yaml"
        if not path.is_file() or target is None:
            continue
        prof = load_profile(path)
        terms = step_terms(target.arch, catalog.gpu(target.gpu), 1, target.shapes)
        out[name] = error_stats(predict_ms(prof.coefficients, terms), target.time_ms,
                                target.regimes)
    return out


# --------------------------------------------------------------------------- run everything


def run_validation(*, replay: bool = True, catalog: Catalog | None = None) -> ValidationReport:
    """Compute every number of the report from the shipped data and profiles."""
    catalog = catalog or load_catalog()
    splitwise = load_splitwise(SHIPPED_DATA["splitwise"], catalog)
    distserve = load_distserve(SHIPPED_DATA["distserve"], catalog)
    distserve_engine = load_distserve(SHIPPED_DATA["distserve-engine"], catalog)
    vidur = load_vidur_linear(SHIPPED_DATA["vidur"])
    datasets = {
        "splitwise": _step_dataset("splitwise", splitwise, catalog),
        "distserve": _step_dataset("distserve", distserve, catalog),
        "distserve-engine": _step_dataset("distserve-engine", distserve_engine, catalog),
        "vidur": _vidur_dataset(vidur, catalog),
    }
    lomo, vidur_loto = _loo_linear(vidur, catalog)
    loto = _loto_steps("splitwise", splitwise, catalog) + _loto_steps("distserve", distserve,
                                                                        catalog) + vidur_loto
    replays: dict[str, list[ReplayResult]] = {}
    notes = {}
    online = None
    if replay:
        traces = vllm_traces()
        # NOTE: the derived profiles are the no-OPT-13B-data baselines, so they get nothing fitted
        # to these runs' timings: no online term.
        for label, name, overrides in (
            ("distserve", DISTSERVE_PROFILE, []),
            ("derived", DERIVED_PROFILE, [f"cost_model.{ONLINE_TERM}=0"]),
            ("derived-vllm", DERIVED_VLLM_PROFILE, [f"cost_model.{ONLINE_TERM}=0"]),
        ):
            if not (PROFILES_DIR / f"{name}.yaml").is_file():
                continue
            replays[label] = [replay_trace(t, profile=name, overrides=overrides) for t in traces]
            notes[label] = name
        online = run_online_validation(traces)
    disaggregated = run_disaggregated_validation() if replay else None
    consistency = run_consistency_checks(splitwise, vidur, distserve, SHIPPED_DATA["distserve"],
                                         load_allreduce(SHIPPED_DATA["allreduce"]))
    return ValidationReport(datasets, loto, lomo, _derived_vs_distserve(catalog, distserve),
                            replays, notes, online, disaggregated, consistency)


# --------------------------------------------------------------------------- figures


def _figures(rep: ValidationReport, fig_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    colors = {"prefill": "tab:blue", "decode": "tab:orange", "mixed": "tab:green",
              "linear": "tab:purple"}
    for name, ds in rep.datasets.items():
        fig, ax = plt.subplots(figsize=(5.2, 5))
        pred, meas = np.concatenate(ds.predicted), np.concatenate(ds.measured)
        reg, held = np.concatenate(ds.regimes), np.concatenate(ds.held)
        for regime in ("prefill", "decode", "mixed", "linear"):
            for is_held, marker in ((False, "o"), (True, "x")):
                m = (reg == regime) & (held == is_held)
                if m.any():
                    ax.scatter(meas[m], pred[m], s=14 if is_held else 9, marker=marker,
                               color=colors[regime], alpha=0.9 if is_held else 0.35,
                               label=f"{regime} ({'held back' if is_held else 'fitted'})")
        lo, hi = float(min(meas.min(), pred.min())), float(max(meas.max(), pred.max()))
        xs = np.array([lo, hi])
        ax.plot(xs, xs, "k-", lw=0.8)
        ax.plot(xs, xs * 1.05, "k:", lw=0.6)
        ax.plot(xs, xs / 1.05, "k:", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        unit = "per-layer linear time" if name == "vidur" else "step time"
        ax.set_xlabel(f"measured {unit} (ms)")
        ax.set_ylabel(f"predicted {unit} (ms)")
        held_all = ds.pooled("holdout").get("all", {})
        ax.set_title(f"{name}: held-back MAPE {held_all.get('mape_pct', float('nan')):.1f}% "
                     "(dotted: ±5%)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        path = fig_dir / f"parity_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

    # Cross-validation bars.
    rows = rep.loto + rep.lomo
    if rows:
        fig, ax = plt.subplots(figsize=(10, 5))
        labels = [f"{r['dataset']} {r['gpu'].split('-')[0]} "
                  f"{'' if r.get('model', 'all') == 'all' else r['model'] + ' '}"
                  f"without {r['held_out'][:16]}" for r in rows]
        vals = [r["errors"]["all"]["mape_pct"] for r in rows]
        kinds = ["tab:red" if r in rep.lomo else "tab:gray" for r in rows]
        ax.bar(range(len(rows)), vals, color=kinds)
        ax.axhline(LOTO_TARGET_PCT, color="k", ls="--", lw=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, fontsize=6, rotation=65, ha="right")
        ax.set_ylabel("MAPE on the held-out TP degree / model (%)")
        ax.set_title("Cross-validation (gray: leave one TP out, red: leave one model out; "
                     "dashed: 15%)", fontsize=9)
        fig.tight_layout()
        path = fig_dir / "crossval.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

    # End-to-end replay.
    if rep.replays:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
        first = next(iter(rep.replays.values()))
        rates = [trace_rate(r.trace) for r in first]
        panels = (("TTFT p50", "TTFT p50 (ms)", False), ("TTFT p90", "TTFT p90 (ms)", True),
                  ("TPOT mean", "mean TPOT (ms)", False))
        for ax, (label, ylabel, logy) in zip(axes, panels, strict=True):
            ax.plot(rates, [r.measured[label] for r in first], "ko-", label="measured (vLLM)")
            for (name, runs), style in zip(rep.replays.items(), ("s--", "^:", "v-."), strict=False):
                ax.plot(rates, [r.simulated[label] for r in runs], style,
                        label=f"simserve ({name} profile)")
            if rep.online is not None:
                ax.plot(rates, [r.simulated[label] for r in rep.online.profile_only], "x-.",
                        color="tab:gray", label="simserve (distserve profile, no online term)")
            ax.set_xlabel("arrival rate (req/s)")
            ax.set_ylabel(ylabel)
            if logy:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle("OPT-13B on one A100-80GB, vLLM v0: replay of the measured runs", fontsize=10)
        fig.tight_layout()
        path = fig_dir / "replay.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

        fig, axes = plt.subplots(1, len(first), figsize=(3.2 * len(first), 3.4), sharey=True)
        for i, ax in enumerate(np.atleast_1d(axes)):
            meas = np.sort(np.loadtxt(first[i].trace, delimiter=",", skiprows=1, usecols=3))
            ax.plot(meas / 1e3, np.linspace(0, 1, meas.size), "k-", lw=1.4,
                    label="measured (vLLM)")
            for (name, runs), style in zip(rep.replays.items(), ("--", ":", "-."), strict=False):
                sim = np.sort(_sim_ttfts(runs[i].output))
                ax.plot(sim / 1e3, np.linspace(0, 1, sim.size), style, lw=1.2,
                        label=f"simserve ({name})")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("TTFT (s)")
            ax.set_title(f"{trace_rate(first[i].trace):g} req/s", fontsize=9)
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel("fraction of requests")
        np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower right")
        fig.suptitle("TTFT distribution, measured vs replayed", fontsize=10)
        fig.tight_layout()
        path = fig_dir / "replay_ttft_cdf.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    if rep.disaggregated is not None:
        written.append(disaggregated_figure(rep.disaggregated, fig_dir))
    return written


def _sim_ttfts(output: object) -> np.ndarray:
    """Simulated per-request TTFT (ms) of the served requests."""
    res = output.result  # type: ignore[attr-defined]
    ttft = (res.first_token_at - res.arrived_at) * 1e3
    return ttft[np.isfinite(ttft)]


def _decoding_concurrency(run: ReplayResult) -> tuple[float, float]:
    """Mean number of requests past their first token: measured (Little's law) and simulated."""
    data = np.genfromtxt(run.trace, delimiter=",", names=True)
    end = float((data["arrival_s"] + data["latency_ms"] / 1e3).max())
    measured = float(((data["latency_ms"] - data["ttft_ms"]) / 1e3).sum() / end)
    res = run.output.result
    sim_end = float(np.nanmax(res.finished_at))
    simulated = float(np.nansum(res.finished_at - res.first_token_at) / sim_end)
    return measured, simulated


# --------------------------------------------------------------------------- markdown


def _fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _err_cell(stats: dict[str, dict[str, float]], regime: str) -> str:
    s = stats.get(regime)
    return f"{s['mape_pct']:.1f} / {s['max_err_pct']:.1f} (n={s['n']})" if s else "–"


def _markdown(rep: ValidationReport, figures: list[str]) -> str:
    lines = [
        "# simserve calibration: fidelity report",
        "",
        "Regenerate with `simserve validate` (recomputes every number and figure from the shipped "
        "data in `calibration/data/` and the profiles in `calibration/profiles/`; deterministic).",
        "",
        "The calibrated cost model keeps DESIGN §4's terms (linear layers as a smooth roofline of "
        "FLOPs and weight reads, prefill attention over query-key pairs, decode attention over KV "
        "bytes, LM head, TP all-reduce, per-step, per-prefill and per-sequence overheads) and fits "
        "their efficiencies and constants by least squares on RELATIVE error "
        "(`simserve/costmodel/calibrated.py`, `simserve/calibration/fit.py`).",
        "",
        "## 1. Step level: held-back 20% per dataset",
        "",
        "Each (GPU, model, TP) group is fitted on 80% of its distinct step shapes (per regime, "
        "seed 0) and scored on the other 20%. Errors are MAPE / max |error| in %; "
        f"target: MAPE <= {STEP_TARGET_PCT:.0f}% in-envelope on the held-back rows.",
        "",
        "| dataset | regime | fitted rows | held back (all) | held back, inside the train "
        "envelope | target met |",
        "|---|---|---|---|---|---|",
    ]
    for name, ds in rep.datasets.items():
        train, held, held_in = ds.pooled("train"), ds.pooled("holdout"), ds.pooled("holdout_in")
        for regime in ("prefill", "decode", "mixed", "linear", "all"):
            if regime not in train:
                continue
            met = held_in.get(regime, {}).get("mape_pct")
            ok = "yes" if met is not None and met <= STEP_TARGET_PCT else "**no**"
            lines.append(f"| {name} | {regime} | {_err_cell(train, regime)} | "
                         f"{_err_cell(held, regime)} | {_err_cell(held_in, regime)} | {ok} |")
    lines += ["", "Per group (held-back MAPE / max %, all regimes):", ""]
    lines += ["| dataset | group | prefill | decode | linear |", "|---|---|---|---|---|"]
    for name, ds in rep.datasets.items():
        for key, _train, held in ds.groups:
            lines.append(f"| {name} | {key} | {_err_cell(held, 'prefill')} | "
                         f"{_err_cell(held, 'decode')} | {_err_cell(held, 'linear')} |")
    lines += ["", "Data notes:", ""]
    for name, ds in rep.datasets.items():
        for note in ds.notes:
            lines.append(f"- {name}: {note}")
    lines += [
        "- splitwise: the prefill rows are not mutually consistent at TP4/TP8 (table below); "
        "the decode rows are (a few % apart between measuring campaigns of one shape).",
        "- distserve: the 'measurements' are DistServe's own fitted formula evaluated on the "
        "vLLM v0 operating grid (prefill batches up to 2048 tokens, decode batches up to 256, "
        "contexts up to 2048, <= 60k KV tokens); the error is the cost of expressing their "
        "formula (affine prefill with a quadratic term, a decode law that switches at batch 95) "
        "in simserve's physical terms.",
        "- distserve-engine: the same for DistServe's OWN engine (profiles `*_distserve.yaml`); "
        "its prefill grid goes up to 32768 tokens per step (DistServe's "
        "`--context-max-tokens-per-batch`, inside the range its coefficients were profiled on). "
        "At TP1 its affine prefill law starts below its one-sequence decode step (intercept "
        "18.1 ms vs 20.0 ms) yet adds the per-token cost on top of that intercept up to 32k "
        "tokens; in simserve a prefill step costs at least a decode step (both read the weights), "
        "so the fit trades the smallest prefills (1-4 prompts of 16-32 tokens) against the large "
        "ones and the TP1 prefill error sits there.",
        "- vidur: per-layer time of the four linear projections; one coefficient set per GPU for "
        "all 8 models and TP 1-8. The residual is mostly GEMM tile/wave quantisation around the "
        "roofline ridge (64-1024 tokens), which a smooth model cannot follow.",
        "",
    ]
    if rep.consistency is not None:
        held = {key: _err_cell(h, "prefill") for key, _t, h in rep.datasets["splitwise"].groups}
        lines += splitwise_markdown(rep.consistency, held)
    if "parity_splitwise.png" in figures:
        lines += ["![parity splitwise](figures/parity_splitwise.png) "
                  "![parity distserve](figures/parity_distserve.png) "
                  + ("![parity distserve-engine](figures/parity_distserve-engine.png) "
                     if "parity_distserve-engine.png" in figures else "")
                  + "![parity vidur](figures/parity_vidur.png)", ""]

    lines += [
        "## 2. Cross-validation",
        "",
        f"Leave one TP degree out (fit on the other TP degrees of the same GPU and model, "
        f"predict the held-out one; target MAPE <= {LOTO_TARGET_PCT:.0f}%) and leave one model "
        "out (Vidur: fit on 7 (A100) or 5 (H100) models, predict the 8th/6th).",
        "",
        "| kind | dataset | GPU | model | held out | trained on | prefill | decode | linear "
        "| all | target met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, rows in (("leave one TP out", rep.loto), ("leave one model out", rep.lomo)):
        for r in rows:
            e = r["errors"]
            ok = "yes" if e["all"]["mape_pct"] <= LOTO_TARGET_PCT else "**no**"
            lines.append(
                f"| {kind} | {r['dataset']} | {r['gpu']} | {r.get('model', 'all')} | "
                f"{r['held_out']} | {r.get('trained_on', 'others')} | {_err_cell(e, 'prefill')} "
                f"| {_err_cell(e, 'decode')} | {_err_cell(e, 'linear')} | "
                f"{_err_cell(e, 'all')} | {ok} |")
    if rep.consistency is not None:
        model = rep.consistency.distserve.model
        missed = [int(r["held_out"][2:]) for r in rep.loto
                  if r["dataset"] == "distserve" and r["model"] == model
                  and r["errors"]["all"]["mape_pct"] > LOTO_TARGET_PCT]
        lines += ["", *distserve_markdown(rep.consistency, missed)]
    if "crossval.png" in figures:
        lines += ["", "![cross-validation](figures/crossval.png)"]
    lines += [""]

    lines += [
        "## 3. OPT-13B on A100: three ways to get a profile",
        "",
        "There are no raw step measurements of OPT-13B on A100. Three profiles are shipped:",
        "",
        f"- `{DISTSERVE_PROFILE}` (used by `scenarios/validation/opt13b-a100-vllm.yaml`): "
        "simserve's "
        "terms fitted to DistServe's vLLM step-latency formula for OPT-13B on A100-80GB "
        "(`profiler-a100-80g.vllm.json`: prefill ms = a + b sum q + c sum q^2; decode ms = a + b "
        "sum(context+1) + c batch, coefficients switching at batch 95), evaluated on the vLLM v0 "
        "operating grid;",
        f"- `{DERIVED_PROFILE}`: no OPT-13B data at all: the efficiencies and engine constants "
        "fitted on splitwise's Llama-2-70B TP2 A100 measurements applied to OPT-13B's roofline "
        "terms (`simserve derive-profile`): same GPU, another model and another engine;",
        f"- `{DERIVED_VLLM_PROFILE}`: no OPT-13B data either: one coefficient set fitted on "
        "DistServe's vLLM formula for OPT-66B at TP 2, 3, 4 and 8 together (`simserve "
        "calibrate --pool-tp`), applied to OPT-13B at TP1: same GPU and engine, another model "
        "and another TP degree.",
        "",
    ]
    if rep.derived_vs_distserve:
        lines += ["Step level, each derived profile against DistServe's OPT-13B formula on the "
                  "same grid (MAPE / max %):", ""]
        lines += [f"- `{name}`: prefill {_err_cell(d, 'prefill')}, decode "
                  f"{_err_cell(d, 'decode')}" for name, d in rep.derived_vs_distserve.items()]
        lines.append("")

    if rep.replays:
        lines += [
            "## 4. End to end: replay of the real vLLM runs",
            "",
            "Each shipped run (`calibration/data/distserve/ground_truth_opt13b_sharegpt/"
            "vllm-<N>-<rate>.csv`: OPT-13B, one A100-80GB, vLLM v0, ShareGPT, Poisson) is "
            "replayed with its exact arrival times and prompt/output lengths through "
            "`prefill_first` with the limits of DistServe's vLLM launcher (max_num_seqs 1024, "
            "max_num_batched_tokens 16384, block 16). Step costs come from the OPT-13B "
            "profiles (fitted to offline step data, not to these runs). Two settings of the "
            "served engine are read from the runs, as the next subsection shows: the KV "
            f"capacity ({first_blocks(rep)} blocks of 16 tokens) and, for the DistServe "
            f"profile only, one online time per running sequence per step "
            f"(`{ONLINE_TERM}`). The 4 req/s run is in no fit. "
            f"Target: p50 TTFT and mean TPOT within {E2E_TARGET_PCT:.0f}% at 1-3 req/s; the "
            "saturation knee reproduced.",
            "",
        ]
        if rep.online is not None and "distserve" in rep.replays:
            lines += online_markdown(rep.online, rep.replays["distserve"])
        for name, runs in rep.replays.items():
            lines += [f"### Profile `{rep.profile_notes[name]}`", "",
                      "| run | rate | metric | measured (ms) | simulated (ms) | error |",
                      "|---|---|---|---|---|---|"]
            for r in runs:
                rate = trace_rate(r.trace)
                for label, *_ in REPLAY_METRICS:
                    err = r.error_pct(label)
                    bold = (label in ("TTFT p50", "TPOT mean") and rate <= 3
                            and abs(err) > E2E_TARGET_PCT)
                    cell = f"**{err:+.1f}%**" if bold else f"{err:+.1f}%"
                    lines.append(f"| {Path(r.trace).name} | {rate:g} | {label} | "
                                 f"{r.measured[label]:.1f} | {r.simulated[label]:.1f} | {cell} |")
            lines.append("")
            lines += ["Load seen by the decode phase (mean number of requests past their first "
                      "token; measured by Little's law from the per-request latencies):", "",
                      "| rate | measured | simulated | simulated preemptions |",
                      "|---|---|---|---|"]
            for r in runs:
                m, s = _decoding_concurrency(r)
                lines.append(f"| {trace_rate(r.trace):g} | {m:.1f} | {s:.1f} | "
                             f"{r.output.summary.get('num_preemptions', 0)} |")
            lines.append("")
        lines += knee_paragraph(rep)
        lines += misses_paragraph(rep)
        if "replay.png" in figures:
            lines += ["", "![replay](figures/replay.png)", "",
                      "![TTFT CDF](figures/replay_ttft_cdf.png)", ""]
    if rep.disaggregated is not None:
        figure = "replay_disaggregated.png" if "replay_disaggregated.png" in figures else None
        lines += disaggregated_markdown(rep.disaggregated, figure)
    lines += verdict(rep)
    return "\n".join(lines) + "\n"


def first_blocks(rep: ValidationReport) -> str:
    """KV blocks of the first replay (same for all: same scenario)."""
    for runs in rep.replays.values():
        return str(runs[0].output.summary.get("num_gpu_blocks"))
    return "n/a"


def knee_paragraph(rep: ValidationReport) -> list[str]:
    """What happens between 3 and 4 req/s, in numbers."""
    out = ["### The saturation knee", ""]
    for name, runs in rep.replays.items():
        by_rate = {trace_rate(r.trace): r for r in runs}
        if 3.0 in by_rate and 4.0 in by_rate:
            r3, r4 = by_rate[3.0], by_rate[4.0]
            out.append(
                f"- `{rep.profile_notes[name]}`: p90 TTFT {r3.simulated['TTFT p90'] / 1e3:.2f} s "
                f"at 3 req/s -> {r4.simulated['TTFT p90'] / 1e3:.1f} s at 4 req/s (measured "
                f"{r3.measured['TTFT p90'] / 1e3:.2f} s -> {r4.measured['TTFT p90'] / 1e3:.1f} s); "
                f"mean TPOT at 4 req/s {r4.simulated['TPOT mean']:.0f} ms (measured "
                f"{r4.measured['TPOT mean']:.0f} ms); {r4.output.summary.get('num_preemptions')} "
                "recompute preemptions.")
    out += [
        "",
        "At 4 req/s the offered decode work exceeds what the GPU can serve, so requests pile up. "
        "Like real vLLM, simserve admits a new prefill only when the paged KV cache has blocks "
        "for it, so the queue forms in front of admission: TTFT grows by tens of seconds while "
        "TPOT stays bounded by the largest batch the KV cache holds. A simulator without a KV "
        "limit (DistServe's own, which predicts ~0.5 s p90 TTFT at 4 req/s) admits everyone and "
        "moves the delay into TPOT instead.",
        "",
    ]
    return out


def misses_paragraph(rep: ValidationReport) -> list[str]:
    """Where the shipped replay still misses, with the numbers that locate the cause."""
    runs = rep.replays.get("distserve")
    if not runs:
        return []
    misses = [(trace_rate(r.trace), label, r.error_pct(label)) for r in runs
              for label in ("TTFT p50", "TPOT mean")
              if trace_rate(r.trace) <= 3 and abs(r.error_pct(label)) > E2E_TARGET_PCT]
    out = ["### Where the replay still misses, and why", ""]
    if not misses:
        return [*out, "Every p50 TTFT and mean TPOT at 1-3 req/s is within the target.", ""]
    out.append("Outside the target at 1-3 req/s: " + "; ".join(
        f"{label} at {rate:g} req/s ({err:+.1f}%)" for rate, label, err in misses) + ".")
    out.append("")
    missed = {(rate, label) for rate, label, _ in misses}
    if any(label == "TPOT mean" for _, label in missed):
        out += [
            "The TPOT misses follow the spread between runs shown above: a run whose decode "
            "steps carry several milliseconds more fixed time than the others (the 2 req/s "
            "one) cannot be matched by a setting shared by all runs. Request by request "
            "(simulated / measured TPOT, every request with more than one output token; "
            "`tpot_ratio_per_request`):",
            "",
            "| rate | p10 | p25 | median | p75 | p90 | median, first / middle / last third of "
            "the arrivals |",
            "|---|---|---|---|---|---|---|",
        ]
        for run in runs:
            ratio, arrived_s = tpot_ratio_per_request(run)
            q = np.percentile(ratio, [10, 25, 50, 75, 90])
            thirds = [float(np.median(ratio[i])) for i in
                      np.array_split(np.argsort(arrived_s, kind="stable"), 3)]
            out.append(f"| {trace_rate(run.trace):g} | " + " | ".join(f"{x:.2f}" for x in q)
                       + " | " + " / ".join(f"{x:.2f}" for x in thirds) + " |")
        out += [
            "",
            "A missed run whose requests are all off by about the same factor, early and late "
            "alike, while the runs at lower and at higher load are not, is slower as a whole; "
            "an effect of the load would have to vanish both below and above it.",
            "",
        ]
    return out


def verdict(rep: ValidationReport) -> list[str]:
    """The targets and whether each was met, from the numbers above."""
    out = ["## 6. Targets", "", "| target | achieved | met |", "|---|---|---|"]
    for name, ds in rep.datasets.items():
        held_in = ds.pooled("holdout_in")
        for regime in ("prefill", "decode", "linear"):
            if regime in held_in:
                v = held_in[regime]["mape_pct"]
                out.append(f"| step MAPE <= 5% held back, in envelope: {name} {regime} | "
                           f"{v:.1f}% | {'yes' if v <= STEP_TARGET_PCT else 'no'} |")
    for r in rep.loto:
        v = r["errors"]["all"]["mape_pct"]
        out.append(f"| leave-one-TP-out <= 15%: {r['dataset']} {r['gpu']} {r.get('model')} "
                   f"{r['held_out']} | {v:.1f}% | {'yes' if v <= LOTO_TARGET_PCT else 'no'} |")
    for name, runs in rep.replays.items():
        for r in runs:
            rate = trace_rate(r.trace)
            if rate > 3:
                continue
            for label in ("TTFT p50", "TPOT mean"):
                v = r.error_pct(label)
                # Two decimals where one would round onto the target and hide the verdict.
                cell = f"{v:+.2f}%" if round(abs(v), 1) == E2E_TARGET_PCT else f"{v:+.1f}%"
                out.append(f"| e2e {label} within 15% at {rate:g} req/s ({name} profile) | "
                           f"{cell} | {'yes' if abs(v) <= E2E_TARGET_PCT else 'no'} |")
        by_rate = {trace_rate(r.trace): r for r in runs}
        if 3.0 in by_rate and 4.0 in by_rate:
            jump_sim = by_rate[4.0].simulated["TTFT p90"] / by_rate[3.0].simulated["TTFT p90"]
            jump_meas = by_rate[4.0].measured["TTFT p90"] / by_rate[3.0].measured["TTFT p90"]
            tpot_ok = by_rate[4.0].simulated["TPOT mean"] < 2 * by_rate[4.0].measured["TPOT mean"]
            ok = jump_sim >= 10 and tpot_ok
            out.append(f"| knee: p90 TTFT jumps >= 10x from 3 to 4 req/s with bounded TPOT "
                       f"({name} profile) | x{jump_sim:.0f} (measured x{jump_meas:.0f}); "
                       f"p90 at 4 req/s {by_rate[4.0].simulated['TTFT p90'] / 1e3:.1f} s "
                       f"(measured {by_rate[4.0].measured['TTFT p90'] / 1e3:.1f} s) | "
                       f"{'yes' if ok else 'no'} |")
    if rep.disaggregated is not None:
        out += disaggregated_targets(rep.disaggregated)
    out.append("")
    return out


def write_report(out_dir: str | Path = CALIBRATION_DIR, *, replay: bool = True) -> Path:
    """Run the validation and write REPORT.md and figures/ under `out_dir`."""
    out_dir = Path(out_dir)
    rep = run_validation(replay=replay)
    figures = _figures(rep, out_dir / "figures")
    path = out_dir / "REPORT.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(_markdown(rep, figures), encoding="utf-8")
    tmp.replace(path)
    return path
