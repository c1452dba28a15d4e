"""Hostile and careless input files: alias bombs, huge files, duplicate keys, YAML 1.2 numbers,
non-finite values, empty scenarios, names used as paths, re-running a run's own scenario.yaml,
and errors that name their file and line. Each test is the regression test of one defect."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from simserve.catalog import load_catalog
from simserve.cli import main
from simserve.config import load_scenario
from simserve.errors import InputError, InputWarning
from simserve.experiments.sweep import load_sweep_spec
from simserve.yaml_lines import MAX_YAML_BYTES, MAX_YAML_VALUES, parse_yaml

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--set", "workload.num_requests=30", "--set", "metrics.warmup_s=0",
         "--set", "metrics.cooldown_s=0"]


def alias_bomb(levels: int = 9, width: int = 9, prefix: str = "") -> str:
    """A document of about 1 KB whose aliases expand to width**levels values."""
    lines = [f"{prefix}a0: &a0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"{prefix}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def _write(folder: Path, text: str, name: str = "s.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("simserve: error: ") and err.count("\n") == 1, err
    return err


# --------------------------------------------------------------------------- alias bombs, size


@pytest.mark.parametrize("command", ["run", "check", "sweep", "catalog"])
def test_an_alias_bomb_is_refused_not_expanded(tmp_path, command):
    # The defect: `run` and `check` of this 1 KB file grew to gigabytes and never ended. Run
    # in a child process with a time limit, so a regression fails instead of hanging the suite.
    bomb = alias_bomb()
    assert len(bomb) < 1100 and MAX_YAML_VALUES < 9**9
    if command == "catalog":
        scenario = _write(tmp_path, "name: x\ncatalog: cat.yaml\n")
        _write(tmp_path, "gpus:\n" + alias_bomb(prefix="  "), "cat.yaml")
        args = ["run", str(scenario)]
    else:
        path = _write(tmp_path, bomb + "name: x\n")
        args = [command, str(path)]
    done = subprocess.run([sys.executable, "-m", "simserve", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "aliases expand to more than" in done.stderr and done.stderr.count("\n") == 1


def test_recursive_aliases_and_deep_nesting_are_refused():
    with pytest.raises(InputError, match="refers to a node that contains it"):
        parse_yaml("a: &x {b: *x}\n", "f.yaml")
    with pytest.raises(InputError, match="nested too deeply"):
        parse_yaml("[" * 3000 + "]" * 3000, "f.yaml")


def test_a_file_over_the_size_bound_is_refused_unread(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    path.write_text("name: x\n" + "# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    err = _error(["run", str(path)], capsys)
    assert "more than the 1024 KiB" in err and str(path) in err
    err = _error(["check", str(path)], capsys)
    assert "more than the 1024 KiB" in err


# --------------------------------------------------------------------------- duplicate keys


def test_a_duplicate_key_is_refused_naming_both_lines(tmp_path, capsys):
    path = _write(tmp_path, "name: x\nseed: 1\nengine:\n  max_num_seqs: 4\nseed: 2\n")
    err = _error(["run", str(path)], capsys)
    assert f"{path}:5: duplicate key 'seed' (lines 2 and 5)" in err


def test_a_repeated_grid_in_a_sweep_spec_no_longer_drops_an_axis(tmp_path):
    spec = _write(tmp_path, f"name: s\nbase: {ROOT / 'scenarios' / 'default.yaml'}\n"
                  "grid:\n  engine.policy: [mixed, chunked_prefill]\n"
                  "grid:\n  workload.arrival.rate: [1, 2]\n", "spec.yaml")
    with pytest.raises(InputError, match=r"duplicate key 'grid' \(lines 3 and 5\)"):
        load_sweep_spec(spec)


def test_merge_keys_may_repeat_what_they_merge():
    data, _ = parse_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert data["other"] == {"x": 1, "y": 3}


# --------------------------------------------------------------------------- numbers


def test_yaml_1_2_floats_are_numbers(tmp_path):
    path = _write(tmp_path, "name: x\nworkload:\n  num_requests: 1e2\n"
                  "  arrival: {process: poisson, rate: 1e308}\n"
                  "metrics: {stall_threshold_ms: 2.5E+2}\n")
    scenario = load_scenario(path, ["cost_model.mfu=5e-1"])
    assert scenario.workload.arrival.rate == 1e308 and scenario.workload.num_requests == 100
    assert scenario.metrics.stall_threshold_ms == 250.0 and scenario.cost_model.mfu == 0.5


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_non_finite_numbers_are_refused(tmp_path, capsys, value):
    path = _write(tmp_path, f"name: x\nworkload:\n  arrival: {{process: poisson, rate: {value}}}\n")
    err = _error(["run", str(path)], capsys)
    assert f"{path}:3: workload.arrival.rate: expected a finite number" in err
    err = _error(["run", str(ROOT / "scenarios" / "default.yaml"), "--set",
                  f"cost_model.mfu={value}"], capsys)
    assert "--set: cost_model.mfu: expected a finite number" in err


# --------------------------------------------------------------------------- empty, names


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n", "---\n"])
def test_an_empty_scenario_is_refused_not_run_as_defaults(tmp_path, capsys, text):
    path = _write(tmp_path, text)
    err = _error(["run", str(path), "--out", str(tmp_path / "out")], capsys)
    assert "scenario file is empty" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../../x", "", ".", "..", ".hidden", "a/b", " pad",
                                  "tab\there", "x" * 101])
def test_a_scenario_name_must_be_a_plain_directory_name(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, f"name: {json.dumps(name)}\n")
    err = _error(["run", str(path), *SMALL], capsys)
    assert f"{path}:1: name: must be a plain directory name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_a_sweep_name_is_checked_the_same_way(tmp_path):
    spec = _write(tmp_path, f"name: ../up\nbase: {ROOT / 'scenarios' / 'default.yaml'}\n"
                  "grid:\n  seed: [1, 2]\n", "spec.yaml")
    with pytest.raises(InputError, match="plain directory name"):
        load_sweep_spec(spec)


# --------------------------------------------------------------------------- re-running


def test_a_runs_own_scenario_yaml_reruns_byte_identically(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["run", "--out", str(first), *SMALL]) == 0
    assert main(["run", str(first / "scenario.yaml"), "--out", str(second)]) == 0
    for name in ("summary.json", "scenario.yaml", "requests.csv", "steps.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_a_scenario_from_another_version_runs_with_a_warning(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "r"), *SMALL]) == 0
    text = (tmp_path / "r" / "scenario.yaml").read_text()
    old = _write(tmp_path, text.replace("simserve_version: ", "simserve_version: 0.0.1-was-"))
    with pytest.warns(InputWarning, match="written by simserve 0.0.1-was-"):
        load_scenario(old)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert main(["run", str(old), "--out", str(tmp_path / "again")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("simserve: warning: ") and "may give different numbers" in err
    bad = _write(tmp_path, "name: x\nsimserve_version: [1]\n", "bad.yaml")
    with pytest.raises(InputError, match="simserve_version: expected a version string"):
        load_scenario(bad)


# --------------------------------------------------------------------------- located errors

LOCATED = {
    "unknown model": ("name: x\nmodel: nope\n", ":2: model: unknown model 'nope'"),
    "unknown GPU": ("name: x\nhardware: nope\n", ":2: hardware: unknown GPU 'nope'"),
    "unknown profile": ("name: x\ncost_model:\n  kind: calibrated\n  profile: nope\n",
                        ":4: cost_model.profile: unknown profile 'nope'"),
    "TP not dividing heads": ("name: x\nmodel: llama-3-8b\ntp: 3\n", ":3: tp: tp=3 does not"),
    "weights do not fit": ("name: x\nmodel: llama-2-70b\nhardware: l40s\n",
                           ":2: engine.gpu_memory_utilization: llama-2-70b weights"),
}


@pytest.mark.parametrize("case", sorted(LOCATED))
def test_catalog_errors_name_the_file_and_line(tmp_path, capsys, case):
    text, expected = LOCATED[case]
    path = _write(tmp_path, text)
    err = _error(["run", str(path)], capsys)
    assert f"{path}{expected}" in err, err


def test_flag_errors_name_the_flag_not_set(capsys):
    err = _error(["run", "--seed", "-1"], capsys)
    assert "simserve: error: --seed: must be >= 0, got -1" in err
    err = _error(["bench", "--requests", "0"], capsys)
    assert "simserve: error: --requests: must be >= 1" in err
    err = _error(["capacity", str(ROOT / "scenarios" / "default.yaml"), "--slo", "sarathi",
                  "--seed", "-2"], capsys)
    assert "--seed: must be >= 0" in err
    err = _error(["casestudy", "specdec", "--seed", "-3"], capsys)
    assert "--seed: must be >= 0" in err


def test_catalog_file_errors_keep_their_own_location(tmp_path):
    _write(tmp_path, "gpus:\n  g1:\n    memory_gib: 80\n    memory_gib: 81\n", "cat.yaml")
    with pytest.raises(InputError, match=r"cat.yaml:4: duplicate key 'memory_gib'"):
        load_catalog(tmp_path / "cat.yaml")


# --------------------------------------------------------------------------- fuzzing's findings


def test_control_characters_never_break_the_one_line(tmp_path, capsys):
    # Found by tests/test_fuzz.py: a key holding a line break made a two-line error.
    path = _write(tmp_path, 'name: x\n"bad\\nkey": 1\n')
    err = _error(["run", str(path)], capsys)
    assert "bad\\nkey: unknown key" in err
    nul = _write(tmp_path, "name: x\x00\n", "nul.yaml")
    err = _error(["run", str(nul)], capsys)
    assert "invalid YAML: character '\\x00' is not allowed" in err


def test_integers_too_large_for_a_float_are_refused_not_overflowing(tmp_path):
    # Found by tests/test_fuzz.py: math.isfinite(10**400) raises OverflowError.
    catalog = _write(tmp_path, "gpus:\n  g:\n    memory_gib: " + "9" * 400 + "\n    "
                     "mem_bandwidth_gbps: 1\n    bf16_tflops: 1\n    fp8_tflops: 1\n    "
                     "interconnect: pcie4\n    interconnect_gbps: 1\n", "cat.yaml")
    with pytest.raises(InputError, match=r"gpus\.g\.memory_gib: must be a finite number"):
        load_catalog(catalog)
    scenario = _write(tmp_path, "name: x\nworkload:\n  arrival: {process: poisson, rate: "
                      + "9" * 400 + "}\n")
    with pytest.raises(InputError, match=r"workload\.arrival\.rate: expected a finite number"):
        load_scenario(scenario)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("tp", float("nan"), "tp: must be an integer >= 1"),
    ("tp", float("inf"), "tp: must be an integer >= 1"),
    ("tp", None, "tp: must be an integer >= 1"),
    ("source", 1, "source: must be a mapping"),
    ("fit", "0", "fit: must be a mapping"),
    ("kind", "other", "kind: must be step or linear"),
    ("envelope", {"max_num_tokens": float("inf")}, "envelope.max_num_tokens: must be a number"),
])
def test_a_malformed_profile_is_one_line(tmp_path, key, value, expected):
    # Found by tests/test_fuzz.py: these gave ValueError, TypeError or OverflowError.
    import yaml

    from simserve.costmodel.calibrated import load_profile

    shipped = ROOT / "calibration" / "profiles" / "a100-80gb-sxm_opt-13b_tp1_vllm.yaml"
    data = yaml.safe_load(shipped.read_text())
    data[key] = value
    path = _write(tmp_path, yaml.safe_dump(data), "p.yaml")
    with pytest.raises(InputError, match=expected):
        load_profile(path)


def test_a_sweep_of_too_many_runs_is_refused_before_planning(tmp_path):
    spec = _write(tmp_path, f"name: s\nbase: {ROOT / 'scenarios' / 'default.yaml'}\n"
                  "grid:\n  seed: [1, 2, 3]\nreplications: 1\n", "spec.yaml")
    load_sweep_spec(spec)
    many = _write(tmp_path, f"name: s\nbase: {ROOT / 'scenarios' / 'default.yaml'}\n"
                  "grid:\n  engine.max_num_seqs: [1, 2, 3, 4]\nreplications: 1000000\n",
                  "many.yaml")
    with pytest.raises(InputError, match="the sweep has 4,000,000 runs"):
        load_sweep_spec(many)


# --------------------------------------------------------------------------- extreme magnitudes

GPU = ("gpus:\n  g:\n    memory_gib: {memory}\n    mem_bandwidth_gbps: 3350\n    bf16_tflops: 989\n"
       "    fp8_tflops: 1979\n    interconnect: nvlink4\n    interconnect_gbps: 450\n"
       "    price_usd_per_hour: {price}\n    idle_w: 75\n    tdp_w: 700\n")
FIXED = ("workload:\n  num_requests: 5\n  arrival: {process: poisson, rate: 2}\n"
         "  lengths: {dist: fixed, prompt_len: 100, output_len: 5}\n")


@pytest.mark.parametrize(("memory", "price", "cost", "expected"), [
    # The defects: a ValueError traceback (KV blocks sized as NaN), and `Infinity` in
    # summary.json (not JSON) from a price the cost overflowed with.
    ("1e300", "4", "", r"cat\.yaml:3: gpus\.g\.memory_gib: must be at most 1,000,000"),
    ("80", "1e308", "", r"cat\.yaml:9: gpus\.g\.price_usd_per_hour: must be at most"),
    ("80", "4", "cost: {gpu_hour_usd: {g: 1e308}}\n",
     r"s\.yaml:4: cost\.gpu_hour_usd\.g: must be at most 1,000,000, got 1e\+308"),
])
def test_hardware_and_price_figures_beyond_any_gpu_are_refused(tmp_path, capsys, memory, price,
                                                               cost, expected):
    _write(tmp_path, GPU.format(memory=memory, price=price), "cat.yaml")
    path = _write(tmp_path, "name: x\nhardware: g\ncatalog: cat.yaml\n" + cost + FIXED)
    err = _error(["run", str(path), "--out", str(tmp_path / "run")], capsys)
    assert re.search(expected, err), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["trace arrival", "think time"])
def test_times_near_the_float_limit_run_without_overflow(tmp_path, case):
    # The defect: the engine's fast-forward divided the time to the next event (1e308 s away)
    # by a step time and took int() of an infinite quotient: an OverflowError traceback.
    if case == "trace arrival":
        _write(tmp_path, "arrival_s,prompt_len,output_len\n0,10,5\n1e308,10,5\n", "t.csv")
        workload = ("workload:\n  num_requests: 2\n  trace: t.csv\n  arrival: {process: trace}\n"
                    "  lengths: {dist: trace}\n")
    else:
        workload = FIXED + "  sessions: {turns: 3, think_time_s: 1e307, think_dist: exponential}\n"
    path = _write(tmp_path, "name: x\nmetrics: {warmup_s: 0, cooldown_s: 0}\n" + workload)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(),
                         parse_constant=lambda name: pytest.fail(f"summary.json holds {name}"))
    assert summary["completed"] >= 2


def test_worker_processes_print_simserve_warnings_as_one_line():
    # The defect: sweep and antipatterns workers (spawned) printed a trace notice the Python
    # way, "/path/run.py:115: InputNotice: ..." and the source line below it. A notice (what
    # simserve made of an input) is the command's to say once: workers keep it to themselves;
    # a warning they print as simserve's one line.
    code = ("import os, warnings\n"
            "from simserve.errors import InputNotice, InputWarning\n"
            "from simserve.experiments.backends import init_worker\n"
            "init_worker(os.getppid())\n"
            "warnings.warn(InputNotice('trace: x'))\n"
            "warnings.warn(InputWarning('careful'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "simserve: warning: careful\n"


def test_inspect_run_refuses_a_bad_scenario_or_block_size_before_printing(tmp_path, capsys):
    # The defects: a bad --scenario was read after the run's numbers were printed, and
    # --block-size 0 was reported as the field `block_size`, not the flag.
    run = str(ROOT / "calibration" / "data" / "distserve" / "ground_truth_opt13b_sharegpt"
              / "vllm-100-1.csv")
    binary = tmp_path / "s.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["inspect-run", run, "--scenario", str(binary)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "cannot read scenario file" in err and err.count("\n") == 1
    err = _error(["inspect-run", run, "--block-size", "0"], capsys)
    assert "simserve: error: --block-size: must be >= 1, got 0" in err


def test_a_huge_whole_float_for_an_integer_field_is_named_as_written(tmp_path, capsys):
    # The defect: `num_groups: 1e308` became int(1e308), printed in the error as 309 digits.
    path = _write(tmp_path, "name: x\n" + FIXED + "  prefix: {num_groups: 1e308, shared_len: 8}\n")
    err = _error(["run", str(path)], capsys)
    assert "s.yaml:6: workload.prefix.num_groups: expected an integer, got 1e+308" in err, err
    scenario = load_scenario(_write(tmp_path, "name: x\n" + FIXED.replace("5\n", "5e1\n", 1),
                                    "ok.yaml"))
    assert scenario.workload.num_requests == 50
