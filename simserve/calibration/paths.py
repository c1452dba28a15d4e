"""Where the measured data, the shipped profiles and the validation scenarios are (all found
through `simserve.resources`, so they resolve the same in a checkout and an installed wheel)."""

from __future__ import annotations

from pathlib import Path

from simserve.resources import measured_data_dir, profiles_dir, scenarios_dir

__all__ = [
    "DATA_DIR",
    "DEFAULT_REPORT_DIR",
    "DISTSERVE_ENGINE_DATA",
    "GROUND_TRUTH_DIR",
    "PROFILES_DIR",
    "SHIPPED_DATA",
    "VALIDATION_SCENARIOS",
]

DATA_DIR = measured_data_dir()
PROFILES_DIR = profiles_dir()
# `simserve validate` writes REPORT.md and figures/ here, relative to the working directory (in
# a checkout, run from its root, that is the repository's calibration/ folder).
DEFAULT_REPORT_DIR = Path("calibration")
VALIDATION_SCENARIOS = scenarios_dir("validation")

# DistServe's fitted step-latency coefficients of its OWN engine (the `*_distserve.yaml` profiles
# that price its prefill and decode instances); "distserve" below is its fit of vLLM.
DISTSERVE_ENGINE_DATA = DATA_DIR / "distserve" / "profiler-a100-80g.distserve.json"

# The measured data shipped with the repository, by format ("distserve-engine": the same format
# as "distserve", for DistServe's own engine).
SHIPPED_DATA: dict[str, Path] = {
    "splitwise": DATA_DIR / "splitwise" / "perf_model.csv",
    "vidur": DATA_DIR / "vidur" / "linear_ops.csv",
    "allreduce": DATA_DIR / "vidur" / "all_reduce.csv",
    "distserve": DATA_DIR / "distserve" / "profiler-a100-80g.vllm.json",
    "distserve-engine": DISTSERVE_ENGINE_DATA,
}
GROUND_TRUTH_DIR = DATA_DIR / "distserve" / "ground_truth_opt13b_sharegpt"
