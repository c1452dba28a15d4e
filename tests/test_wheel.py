"""The built wheel works outside the checkout: it is built, installed into a fresh virtual
environment, and its commands run from an empty directory that holds no repository files.

This is what `pip install simserve` gives a user: the scenarios the commands default to, the
anti-pattern bases, the case-study presets, the validation scenarios, the shipped profiles and
the measured data must all be inside the package (found through `simserve.resources`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CALIBRATED = """\
name: calibrated
model: opt-13b
hardware: a100-80gb-sxm
cost_model: {kind: calibrated, profile: a100-80gb-sxm_opt-13b_tp1_vllm}
workload:
  num_requests: 40
  arrival: {process: poisson, rate: 2.0}
  lengths: {dist: fixed, prompt_len: 256, output_len: 32}
"""

# Everything the commands read at run time, checked from inside the installed package.
PACKAGED_FILES_CHECK = """\
from simserve.antipatterns.catalog import SCENARIOS_DIR
from simserve.calibration.paths import GROUND_TRUTH_DIR, SHIPPED_DATA, VALIDATION_SCENARIOS
from simserve.costmodel.select import profile_names
from simserve.experiments.casestudy import PRESETS
from simserve.resources import default_scenario, scenarios_dir
import simserve
assert "site-packages" in simserve.__file__, simserve.__file__
assert default_scenario().is_file() and scenarios_dir("bench.yaml").is_file()
assert all(p.path.is_file() for p in PRESETS.values())
assert len(list(SCENARIOS_DIR.glob("*.yaml"))) >= 2
assert all(p.is_file() for p in SHIPPED_DATA.values()), SHIPPED_DATA
assert len(list(GROUND_TRUTH_DIR.glob("*.csv"))) >= 8
assert len(list(VALIDATION_SCENARIOS.glob("*.yaml"))) >= 2
assert len(profile_names()) >= 20
from simserve.resources import kernels_dir
assert (kernels_dir("vllm", "h100-80gb-sxm") / "meta.yaml").is_file()
assert (kernels_dir("vllm", "engine_loop.yaml")).is_file()
from simserve.resources import measured_data_dir
assert scenarios_dir("traces", "mooncake-conversation.yaml").is_file()
assert measured_data_dir("traces", "mooncake", "conversation_trace_first500.jsonl").is_file()
print("packaged files ok")
"""


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the wheel built from this checkout installed (pip may reuse its
    cache for the dependencies)."""
    work = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
          str(wheels), str(ROOT)], cwd=work, env=env)
    (wheel,) = wheels.glob("simserve-*.whl")
    venv = work / "venv"
    # NOTE: a venv without its own pip, filled by this interpreter's pip: the same install,
    # without the seconds ensurepip takes.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work, env=env)
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
          "--quiet", str(wheel)], cwd=work, env=env, timeout=600)
    return venv, env


def test_wheel_carries_what_the_commands_read(installed, tmp_path):
    venv, env = installed
    out = _run([str(venv / "bin" / "python"), "-c", PACKAGED_FILES_CHECK], cwd=tmp_path,
               env=env)
    assert "packaged files ok" in out


def test_wheel_commands_run_from_an_empty_directory(installed, tmp_path):
    venv, env = installed
    simserve = str(venv / "bin" / "simserve")
    assert _run([simserve, "--version"], cwd=tmp_path, env=env).startswith("simserve ")
    out = _run([simserve, "run"], cwd=tmp_path, env=env)
    assert "run directory: runs/default" in out
    assert (tmp_path / "runs" / "default" / "summary.json").is_file()
    out = _run([simserve, "bench", "--requests", "1000"], cwd=tmp_path, env=env)
    assert "simulated requests/s" in out
    out = _run([simserve, "antipatterns", "--quick", "--only", "BF1", "--jobs", "2"],
               cwd=tmp_path, env=env)
    assert "BF1" in out and "report:" in out
    # A scenario of the package that names its trace relative to itself.
    mooncake = _run([str(venv / "bin" / "python"), "-c", "from simserve.resources import "
                     "scenarios_dir; print(scenarios_dir('traces', 'mooncake-conversation.yaml'))"],
                    cwd=tmp_path, env=env).strip()
    out = _run([simserve, "run", mooncake, "--set", "workload.num_requests=20"], cwd=tmp_path,
               env=env)
    assert (tmp_path / "runs" / "mooncake-conversation" / "summary.json").is_file()
    (tmp_path / "calibrated.yaml").write_text(CALIBRATED)
    out = _run([simserve, "run", "calibrated.yaml"], cwd=tmp_path, env=env)
    assert "calibrated" in out and (tmp_path / "runs" / "calibrated" / "summary.json").is_file()


def test_wheel_runs_the_user_policy_example(installed, tmp_path):
    """The example of a user-defined policy ships with its Python file, found relative to
    the scenario inside the installed package."""
    venv, env = installed
    example = _run([str(venv / "bin" / "python"), "-c", "from simserve.resources import "
                    "scenarios_dir; print(scenarios_dir('policies', 'example.yaml'))"],
                   cwd=tmp_path, env=env).strip()
    _run([str(venv / "bin" / "simserve"), "run", example, "--set", "workload.num_requests=40",
          "--out", "example"], cwd=tmp_path, env=env)
    summary = json.loads((tmp_path / "example" / "summary.json").read_text())
    assert summary["policy"] == "shortest_prompt_first"
