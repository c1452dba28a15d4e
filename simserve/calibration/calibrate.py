"""From measured data to profile YAML files: fit each (GPU, model, TP) group, hold back a share
of its points to measure the error on unseen shapes, record the envelope, and write the profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from simserve import __version__
from simserve.calibration.datasets import (
    LinearData,
    StepData,
    detect_format,
    load_distserve,
    load_splitwise,
    load_steps_csv,
    load_vidur_linear,
)
from simserve.calibration.fit import (
    envelope_of,
    error_stats,
    fit_linear,
    fit_steps,
    holdout_mask,
    inside_envelope,
    merged_envelope,
    predict_linear,
    predict_steps,
)
from simserve.catalog import Catalog, load_catalog
from simserve.costmodel.calibrated import Profile, profile_to_mapping
from simserve.errors import InputError
from simserve.experiments.atomic import write_file_atomically

__all__ = [
    "CalibrationOutcome",
    "calibrate_linear",
    "calibrate_steps",
    "load_measured",
    "profile_name",
    "write_profile",
]

HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class CalibrationOutcome:
    """One fitted profile with its train and held-back errors per regime."""

    profile: Profile
    train: dict[str, dict[str, float]]
    holdout: dict[str, dict[str, float]]
    holdout_in_envelope: dict[str, dict[str, float]]


def load_measured(
    path: str | Path, fmt: str = "auto", catalog: Catalog | None = None, gpu: str | None = None
) -> list[StepData] | list[LinearData]:
    """The step (or linear-layer) groups of one measured-data file."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "splitwise":
        return load_splitwise(path, catalog)
    if fmt == "distserve":
        return load_distserve(path, catalog)
    if fmt == "steps":
        return load_steps_csv(path, catalog)
    if fmt == "vidur":
        return load_vidur_linear(path, gpu)
    raise InputError(f"unknown format {fmt!r}", field="--format")


def profile_name(gpu: str, model: str, tp: int | str, engine: str) -> str:
    """The file stem of a profile: gpu_model_tpN_engine."""
    return f"{gpu}_{model}_tp{tp}_{engine}".replace("/", "-")


def _relpath(path: str) -> str:
    """A path relative to the working directory when it lies below it (portable profiles)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def calibrate_steps(
    data: StepData | Sequence[StepData],
    *,
    catalog: Catalog | None = None,
    holdout: float = HOLDOUT_FRACTION,
    seed: int = 0,
    name: str | None = None,
) -> CalibrationOutcome:
    """Fit one step group, or pool several TP degrees of one (GPU, model, engine) into one
    coefficient set: errors on a held-back share of each group, then a final fit on all points.
    """
    catalog = catalog or load_catalog()
    groups = [data] if isinstance(data, StepData) else sorted(data, key=lambda g: g.tp)
    first = groups[0]
    if len({(g.gpu, g.model, g.engine) for g in groups}) > 1 or \
            len({g.tp for g in groups}) < len(groups):
        raise InputError("pooling needs distinct TP degrees of one (GPU, model, engine); got "
                         + ", ".join(f"{g.key} ({g.engine})" for g in groups))
    helds = [holdout_mask(g.regimes, holdout, seed) if holdout > 0
             else np.zeros(len(g), bool) for g in groups]
    trains = [g.subset(~h) for g, h in zip(groups, helds, strict=True)]
    trial = fit_steps(trains, catalog)
    envelope_train = merged_envelope([envelope_of(t) for t in trains])
    pred = np.concatenate([predict_steps(trial.coefficients, g, catalog) for g in groups])
    held = np.concatenate(helds)
    measured = np.concatenate([g.time_ms for g in groups])
    regimes = np.concatenate([g.regimes for g in groups])
    inside = held & np.concatenate([inside_envelope(envelope_train, g) for g in groups])
    train_err = error_stats(pred[~held], measured[~held], regimes[~held])
    held_err = error_stats(pred[held], measured[held], regimes[held])
    held_in_err = error_stats(pred[inside], measured[inside], regimes[inside])
    final = fit_steps(groups, catalog) if held.any() else trial
    final_pred = np.concatenate([predict_steps(final.coefficients, g, catalog) for g in groups])
    all_err = error_stats(final_pred, measured, regimes)
    fit_info = {
        **final.describe(),
        "errors_pct": {k: {"mape": v["mape_pct"], "max": v["max_err_pct"], "n": v["n"]}
                       for k, v in all_err.items()},
        "holdout": {
            "fraction": holdout,
            "seed": seed,
            "errors_pct": {k: {"mape": v["mape_pct"], "max": v["max_err_pct"], "n": v["n"]}
                           for k, v in held_err.items()},
        },
        "created_by": f"simserve {__version__}",
    }
    tps = tuple(g.tp for g in groups)
    source = {"dataset": first.dataset, "file": _relpath(first.source),
              "num_points": int(measured.size),
              "notes": list(dict.fromkeys(n for g in groups for n in g.notes))}
    profile = Profile(
        name=name or profile_name(first.gpu, first.model, "-".join(map(str, tps)), first.engine),
        gpu=first.gpu,
        model=first.model,
        tp=tps[0],
        engine=first.engine,
        coefficients=final.coefficients,
        envelope=merged_envelope([envelope_of(g) for g in groups]),
        source=source,
        fit=fit_info,
        pooled_tps=tps if len(tps) > 1 else (),
    )
    return CalibrationOutcome(profile, train_err, held_err, held_in_err)


def calibrate_linear(
    groups: Sequence[LinearData],
    *,
    catalog: Catalog | None = None,
    holdout: float = HOLDOUT_FRACTION,
    seed: int = 0,
) -> CalibrationOutcome:
    """One linear-layer profile per GPU from Vidur groups (all models and TP degrees)."""
    catalog = catalog or load_catalog()
    gpus = {g.gpu for g in groups}
    if len(gpus) != 1:
        raise InputError(f"calibrate_linear needs one GPU, got {sorted(gpus)}")
    gpu = gpus.pop()
    helds = [holdout_mask(np.full(len(g), "linear"), holdout, seed) for g in groups]
    trial = fit_linear([g.subset(~h) for g, h in zip(groups, helds, strict=True)], catalog)
    preds = [predict_linear(trial.coefficients, g, catalog) for g in groups]
    pred = np.concatenate(preds)
    meas = np.concatenate([g.time_ms for g in groups])
    held = np.concatenate(helds)
    labels = np.full(meas.size, "linear", dtype=object)
    train_err = error_stats(pred[~held], meas[~held], labels[~held])
    held_err = error_stats(pred[held], meas[held], labels[held])
    final = fit_linear(list(groups), catalog)
    final_pred = np.concatenate([predict_linear(final.coefficients, g, catalog) for g in groups])
    all_err = error_stats(final_pred, meas, labels)
    keep = ("step_overhead_ms", "mfu", "mbu", "ridge_sharpness")
    coefficients = {k: v for k, v in final.coefficients.items() if k in keep}
    coefficients["launch_overhead_ms_per_layer"] = coefficients.pop("step_overhead_ms")
    profile = Profile(
        name=f"{gpu}_linear_vidur",
        gpu=gpu,
        model="*",
        tp=0,
        engine="vidur",
        kind="linear",
        coefficients=coefficients,
        envelope=None,
        source={"dataset": "vidur", "file": _relpath(groups[0].source),
                "models": sorted({g.model for g in groups}),
                "tp": sorted({int(t) for g in groups for t in np.unique(g.tp)}),
                "max_num_tokens": int(max(g.num_tokens.max() for g in groups)),
                "num_points": int(meas.size),
                "note": "per-layer time of the four linear projections (QKV, O, up, down)"},
        fit={**final.describe(),
             "errors_pct": {k: {"mape": v["mape_pct"], "max": v["max_err_pct"], "n": v["n"]}
                            for k, v in all_err.items()},
             "holdout": {"fraction": holdout, "seed": seed,
                         "errors_pct": {k: {"mape": v["mape_pct"], "max": v["max_err_pct"],
                                            "n": v["n"]} for k, v in held_err.items()}},
             "created_by": f"simserve {__version__}"},
    )
    return CalibrationOutcome(profile, train_err, held_err, held_err)


def write_profile(profile: Profile, out_dir: str | Path) -> Path:
    """Write `<out_dir>/<name>.yaml` (atomically: temp file then rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{profile.name}.yaml"
    header = (
        f"# simserve cost profile {profile.name}: written by `simserve calibrate` or "
        "`simserve derive-profile`; regenerate rather than edit.\n"
    )
    text = header + yaml.safe_dump(_plain(profile_to_mapping(profile)), sort_keys=False,
                                   width=100)
    return write_file_atomically(path, text)


def _plain(value: Any) -> Any:
    """numpy scalars and tuples to plain YAML types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
