"""Where the repository keeps measured data, profiles and the fidelity report."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CALIBRATION_DIR",
    "DATA_DIR",
    "DISTSERVE_ENGINE_DATA",
    "GROUND_TRUTH_DIR",
    "PROFILES_DIR",
    "REPO_ROOT",
    "SHIPPED_DATA",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CALIBRATION_DIR = REPO_ROOT / "calibration"
DATA_DIR = CALIBRATION_DIR / "data"
PROFILES_DIR = CALIBRATION_DIR / "profiles"

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
