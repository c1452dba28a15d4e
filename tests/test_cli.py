"""The `simserve` command in-process: runs, overrides, determinism, and every bad input."""

from __future__ import annotations

import json
import pstats
from pathlib import Path

import pytest
import yaml

from simserve.cli import main
from simserve.experiments.atomic import MARKER
from simserve.metrics import VLLM_SCALAR_KEYS, VLLM_STAT_METRICS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "scenarios" / "default.yaml"
SMALL = ["workload.num_requests=60", "metrics.warmup_s=0", "metrics.cooldown_s=0"]


def _run(tmp_path, *extra, scenario=DEFAULT, name="out"):
    out = tmp_path / name
    args = ["run", str(scenario), "--out", str(out)]
    for item in SMALL:
        args += ["--set", item]
    return main([*args, *extra]), out


def test_run_default_scenario_writes_run_directory(tmp_path, capsys):
    code, out = _run(tmp_path)
    assert code == 0
    # The marker lists exactly what simserve wrote, so it may replace this directory later.
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER, "requests.csv", "scenario.yaml", "steps.csv", "summary.json"
    ]
    printed = capsys.readouterr().out
    assert "Serving Benchmark Result" in printed and "Mean TTFT (ms):" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 60
    assert summary["policy"] == "chunked_prefill"
    # The resolved scenario is written with its seed and version and reloads as the same run.
    resolved = yaml.safe_load((out / "scenario.yaml").read_text())
    assert resolved["seed"] == 0 and resolved["simserve_version"]
    rows = (out / "requests.csv").read_text().splitlines()
    assert len(rows) == 61


def test_summary_has_vllm_keys(tmp_path):
    _code, out = _run(tmp_path, "--set", "metrics.percentiles=[50,99]")
    summary = json.loads((out / "summary.json").read_text())
    for key in VLLM_SCALAR_KEYS:
        assert key in summary
    for metric in VLLM_STAT_METRICS:
        for stat in ("mean", "median", "std", "p50", "p99"):
            assert isinstance(summary[f"{stat}_{metric}_ms"], float)
    for extra in ("p99_tbt_ms", "mean_scheduling_delay_ms", "mean_normalized_latency_ms",
                  "mean_fluidity_index", "fluid_token_rate", "num_preemptions"):
        assert extra in summary


def test_same_seed_gives_byte_identical_summary(tmp_path):
    _c, a = _run(tmp_path, name="a")
    _c, b = _run(tmp_path, name="b")
    assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()
    assert (a / "requests.csv").read_bytes() == (b / "requests.csv").read_bytes()
    _c, c = _run(tmp_path, "--seed", "1", name="c")
    assert (a / "summary.json").read_bytes() != (c / "summary.json").read_bytes()


def test_set_changes_the_policy(tmp_path):
    _c, out = _run(tmp_path, "--set", "engine.policy=prefill_first")
    assert json.loads((out / "summary.json").read_text())["policy"] == "prefill_first"


def test_rerun_replaces_a_run_dir_but_refuses_other_paths(tmp_path, capsys):
    _c, out = _run(tmp_path)
    code, out = _run(tmp_path)
    assert code == 0 and (out / "summary.json").exists()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code, _ = _run(tmp_path, name="precious")
    assert code == 2
    assert (precious / "notes.txt").read_text() == "keep me"
    assert "refusing to overwrite" in capsys.readouterr().err


def _scenario(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


TRACE_OK = "arrival_s,prompt_len,output_len\n0.0,10,5\n0.5,12,3\n"

BAD_INPUTS = {
    "unknown key": ("engine:\n  max_seqs: 4\n", "engine.max_seqs"),
    "wrong type": ("engine:\n  max_num_seqs: lots\n", "engine.max_num_seqs"),
    "negative rate": ("workload:\n  arrival: {rate: -2}\n", "workload.arrival.rate"),
    "budget below block": (
        "engine: {block_size: 32, max_num_batched_tokens: 16}\n",
        "engine.max_num_batched_tokens",
    ),
    "unknown model": ("model: gpt-17\n", "model"),
    "unknown gpu": ("hardware: tpu-v9\n", "hardware"),
    "missing trace": (
        "workload: {trace: nope.csv, lengths: {dist: trace}, arrival: {rate: 1}}\n",
        "nope.csv",
    ),
    "prompt longer than context": (
        "model: opt-13b\nworkload: {lengths: {dist: fixed, prompt_len: 4096}, "
        "arrival: {rate: 1}}\n",
        "workload.lengths.prompt_len",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    text, needle = BAD_INPUTS[case]
    path = _scenario(tmp_path, text)
    out = tmp_path / "run"
    code = main(["run", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("when,prompt,out\n1,2,3\n", "accepted"),
        ("arrival_s,prompt_len,output_len\n0.0,10,5\n0.5,-3,4\n", "prompt_len"),
    ],
)
def test_bad_trace_file_names_file_and_column(tmp_path, capsys, content, needle):
    trace = tmp_path / "trace.csv"
    trace.write_text(content)
    path = _scenario(tmp_path, "workload:\n  trace: trace.csv\n  num_requests: 2\n"
                     "  arrival: {process: trace}\n  lengths: {dist: trace}\n")
    code = main(["run", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "trace.csv" in err and needle in err
    assert not (tmp_path / "run").exists()


def test_trace_replay_runs(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE_OK)
    path = _scenario(tmp_path, "workload:\n  trace: trace.csv\n  num_requests: 2\n"
                     "  arrival: {process: trace}\n  lengths: {dist: trace}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["completed"] == 2 and summary["total_output_tokens"] == 8


def test_bench_prints_requests_per_second(capsys):
    assert main(["bench", "--requests", "200"]) == 0
    out = capsys.readouterr().out
    assert "simulated requests/s" in out and "steps/s" in out and "events/s" in out


def _bench_counts(out: str) -> tuple[int, int]:
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(lines["engine steps"]), int(lines["engine events"].split()[0])


def test_bench_fast_forward_and_profile(capsys, tmp_path):
    # Light load: runs of identical decode steps between arrivals and finishes.
    argv = ["bench", "--requests", "200", "--set", "workload.arrival.rate=2"]
    profile = tmp_path / "engine.prof"
    assert main([*argv, "--profile", str(profile)]) == 0
    steps, events = _bench_counts(capsys.readouterr().out)
    assert steps > 3 * events
    assert "simulate" in str(pstats.Stats(str(profile)).stats)
    assert main([*argv, "--no-fast-forward"]) == 0
    assert _bench_counts(capsys.readouterr().out) == (steps, steps)


def test_scenario_catalog_file_adds_a_model(tmp_path):
    (tmp_path / "extra.yaml").write_text(
        "models:\n  tiny-7:\n    hf_id: example/tiny-7\n    num_layers: 4\n    hidden_size: 256\n"
        "    num_heads: 4\n    num_kv_heads: 2\n    head_dim: 64\n    intermediate_size: 512\n"
        "    vocab_size: 1000\n    max_model_len: 2048\n    mlp: gated\n"
        "    tied_embeddings: true\n"
    )
    path = _scenario(
        tmp_path,
        "model: tiny-7\ncatalog: extra.yaml\nworkload:\n  num_requests: 5\n"
        "  arrival: {rate: 1}\n  lengths: {dist: fixed, prompt_len: 32, output_len: 4}\n",
    )
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model_id"] == "tiny-7" and summary["completed"] == 5


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "simserve", "--help"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and "run" in proc.stdout
