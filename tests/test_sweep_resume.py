"""Kill a real sweep (SIGKILL, SIGINT) mid-run, resume it, and get the uninterrupted summary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simserve.cli import main

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
name: resumable
seed: 1
cost_model: {kind: constant, step_time_ms: 2.0}
engine: {max_num_seqs: 2, max_num_batched_tokens: 64}
workload:
  num_requests: 800
  arrival: {process: poisson, rate: 100.0}
  lengths: {dist: fixed, prompt_len: 16, output_len: 1}
"""

SPEC = """\
name: resumable_sweep
base: base.yaml
grid:
  engine.max_num_seqs: [1, 2, 3, 4]
  workload.arrival.rate: [100, 200, 300, 400]
replications: 2
"""

NUM_RUNS = 32


def _spec(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def _finished(out: Path) -> int:
    points = out / "points"
    if not points.is_dir():
        return 0
    # Hidden entries are temporary directories of writes in progress (or killed mid-write).
    return sum((p / "summary.json").is_file() for p in points.iterdir()
               if not p.name.startswith("."))


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_and_stop(spec: Path, out: Path, sig: int) -> tuple[subprocess.Popen, list[int]]:
    """Start `simserve sweep` with 2 workers; send `sig` once a few runs have finished."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "simserve", "sweep", str(spec), "--out", str(out), "--jobs", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while _finished(out) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "sweep made no progress"
        time.sleep(0.01)
    workers = _children(proc.pid)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    return proc, workers


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> bytes:
    """summary.csv of the same sweep run without interruption, in this process."""
    tmp = tmp_path_factory.mktemp("reference")
    assert main(["sweep", str(_spec(tmp)), "--out", str(tmp / "out"), "--jobs", "1"]) == 0
    return (tmp / "out" / "summary.csv").read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_sigkill_then_resume_gives_the_uninterrupted_summary(tmp_path, reference, capsys):
    spec, out = _spec(tmp_path), tmp_path / "out"
    proc, workers = _start_and_stop(spec, out, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.csv").exists()
    finished = _finished(out)
    assert 3 <= finished < NUM_RUNS, "the kill should land mid-sweep"
    # The pool workers die with the sweep: none is left writing into its directory.
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)

    assert main(["sweep", str(spec), "--out", str(out), "--resume", "--jobs", "2"]) == 0
    assert f"({finished} resumed, {NUM_RUNS - finished} ran)" in capsys.readouterr().out
    assert (out / "summary.csv").read_bytes() == reference
    assert not any(p.name.startswith(".") for p in (out / "points").iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_sigint_stops_cleanly_and_resume_finishes(tmp_path, reference, capsys):
    spec, out = _spec(tmp_path), tmp_path / "out"
    proc, _workers = _start_and_stop(spec, out, signal.SIGINT)
    _stdout, stderr = proc.communicate()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    assert _finished(out) < NUM_RUNS
    assert main(["sweep", str(spec), "--out", str(out), "--resume"]) == 0
    assert (out / "summary.csv").read_bytes() == reference


def test_an_interrupted_directory_is_not_resumed_without_resume(tmp_path, capsys):
    spec, out = _spec(tmp_path), tmp_path / "out"
    (out / "points").mkdir(parents=True)
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert os.listdir(out) == ["points"]
