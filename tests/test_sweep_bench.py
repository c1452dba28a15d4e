"""Sweep scaling benchmark (deselected by default; `pytest -m bench -s tests/test_sweep_bench.py`).

200 small runs (Llama-3-8B roofline, 100 requests of synthetic lengths, 4 policies x 5 rates x
10 seeds) one by one in this process, on a 2-worker local pool, and on a 2-CPU local Ray
instance; plus Ray's round trip for a no-op task. Prints wall times, the speed-up and the Ray
overhead per task.

Measured on the 2-core dev machine with nothing else running (2026-11): one by one 22.0-24.4 s,
2 workers 10.9-12.6 s (1.8-2.05x, median 1.9x); Ray on a local 2-CPU instance within -7..+19 ms
per task of the pool (median +3 ms on these ~110 ms runs), a no-op Ray task 0.8-1.0 ms, and
3-6.5 s to start the local Ray instance.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from simserve.experiments.backends import RayBackend, available_cpus
from simserve.experiments.pool import RunPool
from simserve.experiments.sweep import load_sweep_spec, plan_sweep, run_sweep

ROOT = Path(__file__).resolve().parent.parent

SPEC = f"""\
name: bench_200
base: {ROOT / "scenarios" / "default.yaml"}
set:
  workload.num_requests: 100
  workload.trace: null
  workload.lengths: {{dist: uniform, prompt_len: 1024, output_len: 128, range_ratio: 0.5}}
  metrics.warmup_s: 1.0
  metrics.cooldown_s: 1.0
grid:
  engine.policy: [static, prefill_first, mixed, chunked_prefill]
  workload.arrival.rate: [2, 4, 8, 12, 16]
replications: 10
"""


def measure(tmp: Path, with_ray: bool = True) -> dict[str, float]:
    """Wall-clock seconds of the 200-run sweep per backend, and Ray's per-task overhead."""
    (tmp / "spec.yaml").write_text(SPEC)
    plan = plan_sweep(load_sweep_spec(tmp / "spec.yaml"))
    assert len(plan.runs) == 200
    out: dict[str, float] = {"load_avg_1min": os.getloadavg()[0]}
    summaries = {}
    for name, jobs in (("serial_s", 1), ("local2_s", 2)):
        t0 = time.perf_counter()
        with RunPool(jobs) as pool:
            run_sweep(plan, tmp / name, pool)
        out[name] = time.perf_counter() - t0
        summaries[name] = (tmp / name / "summary.csv").read_bytes()
    assert summaries["serial_s"] == summaries["local2_s"]
    out["speedup_2_workers"] = out["serial_s"] / out["local2_s"]
    if with_ray:
        import ray

        t0 = time.perf_counter()
        with RunPool(backend=RayBackend(jobs=2)) as pool:
            out["ray_init_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            run_sweep(plan, tmp / "ray", pool)
            out["ray2_s"] = time.perf_counter() - t1

            @ray.remote(num_cpus=1)
            def noop(task: dict) -> dict:
                return {"id": task["id"]}

            ray.get([noop.remote({"id": i}) for i in range(20)])  # warm the workers
            t2 = time.perf_counter()
            ray.get([noop.remote({"id": i}) for i in range(1000)])
            out["ray_noop_task_ms"] = (time.perf_counter() - t2)  # 1000 tasks -> ms each
        assert (tmp / "ray" / "summary.csv").read_bytes() == summaries["serial_s"]
        out["ray_overhead_per_task_ms"] = (out["ray2_s"] - out["local2_s"]) / 200 * 1000
    return out


@pytest.mark.bench
def test_two_workers_halve_a_200_run_sweep(tmp_path):
    with_ray = True
    try:
        import ray  # noqa: F401
    except ImportError:
        with_ray = False
    result = measure(tmp_path, with_ray=with_ray)
    for key, value in result.items():
        print(f"{key:28s} {value:10.3f}")
    if available_cpus() >= 2:
        assert result["speedup_2_workers"] > 1.6


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for key, value in measure(Path(d), with_ray="--no-ray" not in sys.argv).items():
            print(f"{key:28s} {value:10.3f}")
