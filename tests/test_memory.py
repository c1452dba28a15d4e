"""The memory a run needs is estimated before anything is allocated, and a run that cannot fit
is refused with one line saying how much it would need.

The estimate's constants are measured on the engine. To re-measure them (after the engine's
records change), run `.venv/bin/python -m pytest -m bench tests/test_memory.py -s`: it prints
the least-squares fit of peak RSS over requests and output tokens and checks the shipped
constants against fresh runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simserve.cli import main
from simserve.config import LengthsConfig, WorkloadConfig
from simserve.errors import InputError
from simserve.experiments.memory import (
    BASE_BYTES,
    BYTES_PER_OUTPUT_TOKEN,
    BYTES_PER_REQUEST,
    available_memory_bytes,
    check_run_memory,
    estimate_run_bytes,
    mean_output_tokens,
)
from simserve.workload import build_workload

ROOT = Path(__file__).resolve().parent.parent


def test_estimate_grows_with_requests_and_output_tokens():
    assert estimate_run_bytes(0, 100) == BASE_BYTES
    assert estimate_run_bytes(1000, 0) == BASE_BYTES + 1000 * BYTES_PER_REQUEST
    assert estimate_run_bytes(1000, 10) - estimate_run_bytes(1000, 0) == pytest.approx(
        1000 * 10 * BYTES_PER_OUTPUT_TOKEN)
    assert mean_output_tokens(LengthsConfig(dist="uniform", output_len=100,
                                            range_ratio=0.5)) == 100.0
    assert mean_output_tokens(LengthsConfig(dist="trace")) is None
    available = available_memory_bytes()
    assert available is None or available > 0


def test_a_run_that_cannot_fit_is_refused_saying_how_much_it_needs():
    with pytest.raises(InputError) as info:
        check_run_memory(10**6, 100, available=2**30)
    message = info.value.one_line()
    assert message.startswith("workload.num_requests: 1,000,000 requests")
    assert "would need about 4.3 GiB of memory; 1.0 GiB is available" in message
    check_run_memory(10**4, 100, available=2**30)  # fits


@pytest.mark.parametrize("num_requests", ["1000000000000", "100000000"])
def test_huge_num_requests_is_one_line_not_a_memory_error(tmp_path, num_requests):
    # The defects: 10**12 gave a MemoryError traceback, 10**8 grew past 2 GB. Run in a child
    # whose address space is capped at 2 GiB, so a regression fails fast instead of swapping.
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: big\nworkload:\n  num_requests: {num_requests}\n")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**31, 2**31)); "
            "from simserve.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "run", str(scenario), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and f"{scenario}:3: workload.num_requests:" in done.stderr
    assert "would need about" in done.stderr and "GiB is available" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_trace_workload_is_checked_with_the_traces_own_lengths(tmp_path, monkeypatch):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_len,output_len\n0,10,1000\n1,10,3000\n")
    seen = {}

    def record(num_requests: int, mean_output: float, available=None) -> None:
        seen.update(num_requests=num_requests, mean_output=mean_output)
        raise InputError("too big", field="workload.num_requests")

    monkeypatch.setattr("simserve.experiments.memory.check_run_memory", record)
    config = WorkloadConfig(num_requests=5000, trace=str(trace),
                            lengths=LengthsConfig(dist="trace"))
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="too big"):
        build_workload(config, rng, rng)
    assert seen == {"num_requests": 5000, "mean_output": 2000.0}


def test_bench_requests_too_large_is_refused(capsys):
    assert main(["bench", "--requests", str(10**9)]) == 2
    err = capsys.readouterr().err
    assert "1,000,000,000 requests" in err and "would need about" in err


# --------------------------------------------------------------------------- re-measuring

MEASURE = """
import json, resource, sys
from simserve.config import scenario_from_mapping
from simserve.experiments.run import run_scenario
import simserve.engine.simulation, simserve.metrics  # noqa: F401
n, out = int(sys.argv[1]), int(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run_scenario(scenario_from_mapping({"name": "m", "workload": {
    "num_requests": n, "arrival": {"process": "poisson", "rate": 30.0},
    "lengths": {"dist": "fixed", "prompt_len": 256, "output_len": out}}}))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "out": out, "bytes": (peak - base) * 1024}))
"""


@pytest.mark.bench
def test_measured_memory_matches_the_estimate():
    runs = [(10_000, 16), (40_000, 16), (80_000, 16), (10_000, 128), (40_000, 128),
            (10_000, 512), (40_000, 512), (20_000, 1024)]
    rows = []
    for n, out in runs:
        done = subprocess.run([sys.executable, "-c", MEASURE, str(n), str(out)],
                              capture_output=True, text=True, check=True, timeout=600)
        rows.append(json.loads(done.stdout))
    n = np.array([r["n"] for r in rows], float)
    out = np.array([r["out"] for r in rows], float)
    measured = np.array([r["bytes"] for r in rows], float)
    design = np.column_stack([np.ones_like(n), n, n * out])
    fit, *_ = np.linalg.lstsq(design, measured, rcond=None)
    print(f"\nfit: BASE_BYTES {fit[0] / 2**20:.1f} MiB, BYTES_PER_REQUEST {fit[1]:.0f}, "
          f"BYTES_PER_OUTPUT_TOKEN {fit[2]:.1f}")
    estimated = np.array([estimate_run_bytes(int(a), b) for a, b in zip(n, out, strict=True)])
    errors = estimated / measured - 1
    print("relative error of the shipped constants:", np.round(errors, 2))
    # The fixed part is noisy (allocator, lazily imported modules); the slopes are not.
    large = measured > 100 * 2**20
    assert np.all(np.abs(errors[large]) < 0.25) and np.all(errors > -0.3)
