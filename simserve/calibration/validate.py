"""The fidelity report: step-level errors per dataset (held-back 20%), cross-validation across TP
degrees and models, the end-to-end replay of real vLLM runs and of real disaggregated DistServe
runs, and model-free checks of the step data: every number of calibration/REPORT.md, computed
here (`simserve/calibration/report.py` writes the report; `report_markdown.py` and
`report_figures.py` render it).

Everything is recomputed from the shipped data with fixed seeds, so the report is reproducible
byte for byte (`simserve validate`). Step-level fits here use the same procedure as
`simserve calibrate`; the replay uses the shipped profiles under calibration/profiles/.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from simserve.calibration.calibrate import (
    HOLDOUT_FRACTION,
    calibrate_linear,
    calibrate_steps,
)
from simserve.calibration.consistency import (
    ConsistencyReport,
    run_consistency_checks,
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
    run_disaggregated_validation,
)
from simserve.calibration.fit import (
    error_stats,
    fit_linear,
    fit_steps,
    predict_linear,
    predict_steps,
)
from simserve.calibration.kernel_validation import KernelReport, run_kernel_validation
from simserve.calibration.online import (
    ONLINE_TERM,
    OnlineReport,
    run_online_validation,
    vllm_traces,
)
from simserve.calibration.paths import PROFILES_DIR, SHIPPED_DATA
from simserve.calibration.replay import (
    ReplayResult,
    replay_trace,
    trace_rate,
)
from simserve.catalog import Catalog, load_catalog
from simserve.costmodel.calibrated import load_profile, predict_ms, step_terms

__all__ = [
    "DERIVED_PROFILE",
    "DERIVED_VLLM_PROFILE",
    "DISTSERVE_PROFILE",
    "E2E_TARGET_PCT",
    "LOTO_TARGET_PCT",
    "STEP_TARGET_PCT",
    "DatasetReport",
    "ValidationReport",
    "run_validation",
]

DISTSERVE_PROFILE = "a100-80gb-sxm_opt-13b_tp1_vllm"
DERIVED_PROFILE = "a100-80gb-sxm_opt-13b_tp1_derived"
# OPT-13B at TP1 derived from one coefficient set fitted on DistServe's vLLM formula for OPT-66B
# at TP 2, 3, 4 and 8 (`simserve calibrate --pool-tp`): same engine and GPU, another model.
DERIVED_VLLM_PROFILE = "a100-80gb-sxm_opt-13b_tp1_derived-vllm"
# The validation scenario with no calibration at all: the roofline's default efficiencies
# (config.CostModelConfig), no profile, no online term; the KV capacity stays the measured one.
UNCALIBRATED_OVERRIDES = ("cost_model.kind=roofline", "cost_model.profile=null",
                          f"cost_model.{ONLINE_TERM}=0")
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
    # The same vLLM replays priced by the roofline's defaults: no measurement at all.
    uncalibrated: tuple[ReplayResult, ...] = ()
    # The kernel cost model (REPORT.md §7).
    kernels: KernelReport | None = None


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


def run_validation(
    *,
    replay: bool = True,
    catalog: Catalog | None = None,
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Compute every number of the report from the shipped data and profiles; `progress` is
    told each phase as it starts (the whole takes seconds to a minute)."""
    phases = 6 if replay else 3
    done = 0

    def phase(text: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(f"[{done}/{phases}] {text}")

    catalog = catalog or load_catalog()
    phase("step-level fits of the measured data (held-back 20%)")
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
    phase("cross-validation across models and TP degrees")
    lomo, vidur_loto = _loo_linear(vidur, catalog)
    loto = _loto_steps("splitwise", splitwise, catalog) + _loto_steps("distserve", distserve,
                                                                        catalog) + vidur_loto
    replays: dict[str, list[ReplayResult]] = {}
    notes = {}
    online = None
    uncalibrated: tuple[ReplayResult, ...] = ()
    if replay:
        phase("replaying the real vLLM runs with each profile")
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
        phase("fitting and checking the online serving term")
        online = run_online_validation(traces)
        uncalibrated = tuple(replay_trace(t, overrides=list(UNCALIBRATED_OVERRIDES))
                             for t in traces)
    disaggregated = None
    if replay:
        phase("replaying the real disaggregated DistServe runs")
        disaggregated = run_disaggregated_validation()
    phase("model-free consistency checks of the step data")
    consistency = run_consistency_checks(splitwise, vidur, distserve, SHIPPED_DATA["distserve"],
                                         load_allreduce(SHIPPED_DATA["allreduce"]))
    profile_replays = {trace_rate(r.trace): r for r in replays.get("distserve", [])}
    kernels = run_kernel_validation(profile_replays, replay=replay)
    return ValidationReport(datasets, loto, lomo, _derived_vs_distserve(catalog, distserve),
                            replays, notes, online, disaggregated, consistency, uncalibrated,
                            kernels)
