"""Runs, run directories and (later) sweeps, capacity search and the anti-pattern catalog."""

from simserve.experiments.run import RunOutput, run_scenario, seed_streams, write_run_dir

__all__ = ["RunOutput", "run_scenario", "seed_streams", "write_run_dir"]
