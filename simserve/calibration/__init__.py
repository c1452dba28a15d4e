"""Calibration: fit the calibrated cost model to measured latencies, validate it, compare runs.

`datasets` loads measured files (splitwise, Vidur, DistServe, the profiler's CSV) into step
tables; `fit` fits the physical terms of `simserve.costmodel.calibrated` on relative error;
`calibrate` writes profile YAML files; `validate` writes calibration/REPORT.md; `replay` replays
real serving runs; `compare` puts a real `vllm bench serve` result beside a simserve run.
"""

from simserve.calibration.calibrate import calibrate_linear, calibrate_steps, load_measured
from simserve.calibration.datasets import LinearData, StepData
from simserve.calibration.fit import FitResult, fit_linear, fit_steps

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
