"""The memory a run needs is estimated before anything is allocated, and a run that cannot fit
is refused with one line saying how much it would need.

The estimate's constants are measured on the engine. To re-measure them (after the engine's
records change), run `.venv/bin/python -m pytest -m bench tests/test_memory.py -s`: it prints
the fit of peak RSS over requests and engine steps and checks the shipped constants against
fresh runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simserve.cli import main
from simserve.config import LengthsConfig, load_scenario
from simserve.errors import InputError
from simserve.experiments.memory import (
    BASE_BYTES,
    BYTES_PER_REQUEST,
    BYTES_PER_STEP,
    FIT_ERROR,
    available_memory_bytes,
    check_run_memory,
    estimate_run_bytes,
    least_run_bytes,
    mean_output_tokens,
)

ROOT = Path(__file__).resolve().parent.parent


def test_estimate_grows_with_requests_and_steps():
    assert estimate_run_bytes(0, 0) == BASE_BYTES
    assert estimate_run_bytes(1000, 0) == BASE_BYTES + 1000 * BYTES_PER_REQUEST
    assert estimate_run_bytes(1000, 10) - estimate_run_bytes(1000, 0) == 10 * BYTES_PER_STEP
    # The least a run needs: every step decodes as many tokens as it can.
    assert least_run_bytes(1000, 256, 256) == pytest.approx(
        (1 - FIT_ERROR) * estimate_run_bytes(1000, 1000))
    assert mean_output_tokens(LengthsConfig(dist="uniform", output_len=100,
                                            range_ratio=0.5)) == 100.0
    assert mean_output_tokens(LengthsConfig(dist="trace")) == 1.0
    available = available_memory_bytes()
    assert available is None or available > 0


def test_a_run_that_cannot_fit_is_refused_saying_how_much_it_needs():
    with pytest.raises(InputError) as info:
        check_run_memory(10**7, 256, 256, available=2**30)
    message = info.value.one_line()
    assert message.startswith("workload.num_requests: 10,000,000 requests of about 256 output")
    assert "need at least 4.458 GiB of memory; 1 GiB is available" in message
    check_run_memory(10**6, 256, 256, available=2**30)  # fits


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
    assert "need at least" in done.stderr and "GiB is available" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_check_counts_every_pool_and_speculative_width(tmp_path, monkeypatch):
    seen = []

    def record(num_requests, mean_output, max_tokens_per_step, available=None):
        seen.append((num_requests, mean_output, max_tokens_per_step))

    monkeypatch.setattr("simserve.experiments.memory.check_run_memory", record)
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nengine:\n  max_num_seqs: 64\n  speculative: {method: eagle, "
                    "num_speculative_tokens: 3}\nworkload:\n  num_requests: 500\n"
                    "  lengths: {dist: fixed, output_len: 40}\n")
    load_scenario(path)
    assert seen[-1] == (500, 40.0, 64 * 4)
    path.write_text("name: x\ncluster:\n  mode: disaggregated\n  decode: {max_num_seqs: 512}\n")
    load_scenario(path)
    assert seen[-1] == (200, 128.0, 512)


def test_bench_requests_too_large_is_refused_naming_the_flag(capsys):
    assert main(["bench", "--requests", str(10**10)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("simserve: error: --requests: 10,000,000,000 requests")
    assert "need at least" in err


# --------------------------------------------------------------------------- re-measuring

MEASURE = """
import json, resource, sys
from simserve.config import scenario_from_mapping
from simserve.experiments.run import run_scenario
import simserve.engine.simulation, simserve.metrics  # noqa: F401
n, out, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run = run_scenario(scenario_from_mapping({"name": "m", "workload": {
    "num_requests": n, "arrival": {"process": "poisson", "rate": rate},
    "lengths": {"dist": "fixed", "prompt_len": 256, "output_len": out}}}))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "steps": len(run.result.steps), "bytes": (peak - base) * 1024}))
"""


@pytest.mark.bench
def test_measured_memory_matches_the_estimate():
    rows = []
    for n in (20_000, 80_000, 200_000):
        for out in (16, 256, 1024):
            for rate in (5.0, 1000.0):  # a light load (many small steps) and a saturated one
                done = subprocess.run([sys.executable, "-c", MEASURE, str(n), str(out),
                                       str(rate)], capture_output=True, text=True, check=True,
                                      timeout=900)
                rows.append(json.loads(done.stdout))
    n = np.array([r["n"] for r in rows], float)
    steps = np.array([r["steps"] for r in rows], float)
    measured = np.array([r["bytes"] for r in rows], float)
    design = np.column_stack([np.ones_like(n), n, steps])
    fit, *_ = np.linalg.lstsq(design / measured[:, None], np.ones_like(measured), rcond=None)
    print(f"\nfit: BASE_BYTES {fit[0] / 2**20:.1f} MiB, BYTES_PER_REQUEST {fit[1]:.0f}, "
          f"BYTES_PER_STEP {fit[2]:.0f}")
    estimated = np.array([estimate_run_bytes(int(a), b) for a, b in zip(n, steps, strict=True)])
    errors = estimated / measured - 1
    print("relative error of the shipped constants:", np.round(errors, 2))
    # The refusal uses (1 - FIT_ERROR) x the estimate: that must never exceed what a run
    # takes. Small runs are dominated by the noisy fixed part, which the estimate overstates.
    assert np.all(errors > -FIT_ERROR)
    large = measured > 200 * 2**20
    assert np.all(np.abs(errors[large]) < FIT_ERROR)
