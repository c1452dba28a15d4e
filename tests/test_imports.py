"""Commands import only what they use: `simserve run` and `simserve bench` load no scipy, no
matplotlib and no calibration code (each costs tenths of a second and tens of MiB per call)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("scipy", "matplotlib", "pyarrow", "tqdm", "simserve.calibration.fit",
         "simserve.calibration.calibrate", "simserve.plots")

PROBE = """
import json, sys
from simserve.cli import main
rc = main(sys.argv[1:])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("scipy", "matplotlib",
      "pyarrow", "tqdm") or m.startswith(("simserve.calibration.", "simserve.plots")))))
"""


@pytest.mark.parametrize("argv", [
    ["run", "scenarios/default.yaml", "--set", "workload.num_requests=50"],
    ["bench", "--requests", "200"],
])
def test_command_imports_nothing_heavy(argv, tmp_path):
    if argv[0] == "run":
        argv = [*argv, "--out", str(tmp_path / "run")]
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert not [m for m in loaded if m.startswith(HEAVY)], loaded


def test_import_simserve_is_light():
    out = subprocess.run(
        [sys.executable, "-c", "import simserve, sys; print(sorted(sys.modules))"],
        check=True, capture_output=True, text=True).stdout
    assert "numpy" not in out and "simpy" not in out
