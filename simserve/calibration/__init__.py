"""Calibration: fit the calibrated cost model to measured latencies, validate it, compare runs.

`datasets` loads measured files (splitwise, Vidur, DistServe, the profiler's CSV) into step
tables; `fit` fits the physical terms of `simserve.costmodel.calibrated` on relative error;
`calibrate` writes profile YAML files; `validate` writes calibration/REPORT.md; `replay` replays
real serving runs; `compare` puts a real `vllm bench serve` result beside a simserve run.

The names below are imported on first use (PEP 562), so commands that never fit anything do
not pay for scipy.optimize.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "FitResult",
    "LinearData",
    "StepData",
    "calibrate_linear",
    "calibrate_steps",
    "fit_linear",
    "fit_steps",
    "load_measured",
]

_HOMES = {
    "FitResult": "fit",
    "LinearData": "datasets",
    "StepData": "datasets",
    "calibrate_linear": "calibrate",
    "calibrate_steps": "calibrate",
    "fit_linear": "fit",
    "fit_steps": "fit",
    "load_measured": "calibrate",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
