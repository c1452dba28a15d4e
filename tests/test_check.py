"""`simserve check EVAL.yaml`: the shipped examples, one test per check, strict validation and
the command's exit codes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from simserve.antipatterns.catalog import CATALOG
from simserve.antipatterns.checklist import (
    CHECKS,
    ITEMS,
    item_of,
    lint,
    lint_file,
    load_eval,
    parse_eval,
)
from simserve.antipatterns.items import CHECKLIST
from simserve.cli import main
from simserve.errors import InputError

EVALS = Path(__file__).resolve().parents[1] / "scenarios" / "evaluations"
CLEAN = EVALS / "clean.yaml"
BAD = {
    "bad_throughput_paper.yaml": {"BF2", "BF3", "ES1", "ES2", "ES3", "MD1", "MD4"},
    "bad_latency_paper.yaml": {"BF1", "ES2", "ES3", "ES4", "MD1", "MD2", "MD3", "SPEC"},
    "bad_placement_paper.yaml": {"MD5"},
    "bad_specdec_paper.yaml": {"SPEC"},
}


def _clean() -> dict:
    return yaml.safe_load(CLEAN.read_text())


def _ids(data: dict) -> set[str]:
    return {f.id for f in lint(parse_eval(data))}


# --------------------------------------------------------------------------- examples


def test_clean_example_has_no_findings():
    assert lint_file(CLEAN) == []


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_examples_flag_their_anti_patterns(name):
    findings = lint_file(EVALS / name)
    assert {f.id for f in findings} == BAD[name]
    titles = {e.id: e.title for e in CATALOG}
    for f in findings:
        assert f.reason and f.why
        assert f.item in CHECKLIST and f.item == item_of(f.id, f.field)
        if f.id == "SPEC":
            assert f.command == "simserve casestudy specdec" and f.item == "C15"
            continue
        assert f.title == titles[f.id]
        assert f.command == f"simserve antipatterns --only {f.id}"
        # A catalog finding names one of the items its entry illustrates (the flagged field
        # decides which).
        assert f.item in next(e for e in CATALOG if e.id == f.id).checklist


def test_every_anti_pattern_is_flagged_by_some_bad_example():
    assert set().union(*BAD.values()) == set(CHECKS) == {e.id for e in CATALOG} | {"SPEC"}
    assert set(ITEMS) == set(CHECKS)


def test_speculative_decoding_judged_by_tbt_alone():
    # The case study's anti-pattern: a speculating system judged by per-token gaps only.
    spec = {"systems__0__speculative": True, "metrics__reported": ["p99_ttft", "p99_tbt"]}
    assert "SPEC" in _ids(_with(**spec))
    assert "SPEC" in _ids(_with(**{**spec, "metrics__reported": ["p99_ttft", "mean_tpot"]}))
    # A deadline metric judges what readers see: no finding.
    assert "SPEC" not in _ids(_with(**{**spec, "metrics__reported": [
        "p99_ttft", "p99_tbt", "fluid_token_rate"]}))
    assert "SPEC" not in _ids(_with(**{**spec, "metrics__reported": [
        "p99_tbt", "p1_fluidity_index"]}))
    # Without speculation, per-token tails are the right thing to report.
    assert "SPEC" not in _ids(_with(metrics__reported=["p99_ttft", "p99_tbt"]))


# --------------------------------------------------------------------------- one test per check


def _with(**changes) -> dict:
    """The clean example with dotted-path changes (a value of None deletes the key)."""
    data = copy.deepcopy(_clean())
    for dotted, value in changes.items():
        node = data
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return data


def test_bf1_engine_overhead():
    assert "BF1" in _ids(_with(systems__1__cuda_graphs=False))
    assert "BF1" in _ids(_with(systems__1__framework="vllm-0.4.0"))
    assert "BF1" in _ids(_with(systems__0__step_overhead_ms=1.0, systems__1__step_overhead_ms=6.0))
    assert "BF1" not in _ids(_with(systems__1__cuda_graphs=None))  # unknown is not a difference


def test_bf2_asymmetric_tuning():
    assert "BF2" in _ids(_with(systems__1__tuned=False))
    assert "BF2" in _ids(_with(systems__1__tuned=None))
    assert "BF2" not in _ids(_with(systems__0__tuned=False, systems__1__tuned=False))


def test_bf3_unequal_resources():
    assert "BF3" in _ids(_with(systems__1__gpus=2))
    assert "BF3" in _ids(_with(systems__1__gpu_memory_utilization=0.5))
    assert "BF3" in _ids(_with(systems__1__gpu="a100-80gb-sxm"))
    per_gpu = _with(systems__1__gpus=2)
    per_gpu["metrics"]["normalized_per_gpu"] = True
    assert "BF3" not in _ids(per_gpu)


def test_es1_fixed_or_short_lengths():
    assert "ES1" in _ids(_with(workload={"dataset": "random", "lengths": "fixed",
                                         "prompt_len": 512, "output_len": 128}))
    assert "ES1" in _ids(_with(workload__max_prompt_len=512))


def test_es2_single_point_or_no_knee():
    assert "ES2" in _ids(_with(arrival__rates=[4.0]))
    assert "ES2" in _ids(_with(arrival={"process": "offline"}))
    assert "ES2" in _ids(_with(arrival={"process": "closed_loop", "concurrency": [8, 16]}))
    assert "ES2" in _ids(_with(arrival__saturation_rps=None))
    assert "ES2" in _ids(_with(arrival__saturation_rps=40.0))  # sweep stops below the knee


def test_es3_few_requests_or_no_warmup():
    assert "ES3" in _ids(_with(num_requests=200))
    assert "ES3" in _ids(_with(warmup_requests=None))
    assert "ES3" not in _ids(_with(warmup_requests=None, warmup_s=30.0))


def test_es4_smooth_arrivals():
    assert "ES4" in _ids(_with(arrival__process="poisson", arrival__cv=None))
    assert "ES4" in _ids(_with(arrival__process="constant", arrival__cv=None))
    assert "ES4" in _ids(_with(arrival__cv=1.0))
    assert "ES4" in _ids(_with(arrival__cv=None))  # gamma with unknown burstiness
    assert "ES4" not in _ids(_with(arrival={"process": "trace", "rates": [5, 10, 20, 30],
                                           "saturation_rps": 20.0}))


def test_md1_stall_blind_metrics():
    assert "MD1" in _ids(_with(metrics__reported=["mean_normalized_latency", "mean_tpot",
                                                  "capacity"]))
    assert "MD1" not in _ids(_with(metrics__reported=["mean_tpot", "p99_tbt", "capacity"]))
    assert "MD1" not in _ids(_with(metrics__reported=["mean_tpot", "mean_fluidity_index",
                                                      "capacity"]))


def test_md2_population_of_token_tails():
    assert "MD2" in _ids(_with(metrics__reported=["p99_tpot", "p99_max_stall", "capacity"]))
    assert "MD2" in _ids(_with(metrics__tbt_population=None))
    assert "MD2" in _ids(_with(metrics__tbt_population="per_request"))
    assert "MD2" not in _ids(_with(metrics__reported=["p99_ttft", "capacity"]))


def test_md3_fixed_ttft_slo():
    assert "MD3" in _ids(_with(slo__ttft_ms_per_prompt_token=None))
    fixed = _with(slo__ttft_ms_per_prompt_token=None,
                  workload={"dataset": "random", "lengths": "fixed", "prompt_len": 512,
                            "output_len": 128})
    assert "MD3" not in _ids(fixed)  # one prompt length: one TTFT SLO is fine


def test_md4_throughput_without_latency_bound():
    assert "MD4" in _ids(_with(metrics__reported=["p99_tbt", "output_throughput"]))
    assert "MD4" not in _ids(_with(metrics__reported=["p99_tbt", "output_throughput",
                                                      "goodput"]))


def test_md5_placements_without_goodput_per_gpu():
    split = {"systems__0__placement": "colocated", "systems__1__placement": "disaggregated"}
    assert "MD5" in _ids(_with(**split))  # goodput and capacity, but not per GPU
    assert "MD5" not in _ids(_with(**split, metrics__normalized_per_gpu=True))
    assert "MD5" in _ids(_with(**split, metrics__normalized_per_gpu=True,
                               metrics__reported=["p99_ttft", "p99_tbt"]))
    assert "MD5" in _ids(_with(**split, metrics__normalized_per_gpu=True, slo__tbt_ms=None,
                               slo__tpot_ms=None))
    assert "MD5" not in _ids(_with(systems__0__placement="disaggregated",
                                   systems__1__placement="disaggregated"))


# --------------------------------------------------------------------------- bad input


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "EVAL.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def test_unknown_key_names_the_key_the_file_and_the_line(tmp_path):
    data = _clean()
    data["systems"][1]["tunned"] = True
    path = _write(tmp_path, data)
    with pytest.raises(InputError) as info:
        load_eval(path)
    err = info.value
    assert err.field == "systems[1].tunned" and err.source == str(path)
    assert err.line is not None
    assert path.read_text().splitlines()[err.line - 1].strip().startswith("tunned:")
    assert "unknown key" in err.one_line()


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"num_requests": "many"}, "num_requests", "expected an integer"),
        ({"arrival": {"process": "bursty", "rates": [1]}}, "arrival.process", "must be one of"),
        ({"metrics": {"reported": ["p99_latency"]}}, "metrics.reported[0]", "unknown metric"),
        ({"systems": []}, "systems", "at least one"),
        ({"workload": {"dataset": "x"}}, "workload.lengths", "required"),
        ({"arrival": {"process": "poisson"}}, "arrival.rates", "needs at least one rate"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, change, field, message):
    data = _clean()
    data.update(change)
    with pytest.raises(InputError) as info:
        load_eval(_write(tmp_path, data))
    assert info.value.field == field
    assert message in info.value.message


def test_missing_or_malformed_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_eval(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="invalid YAML"):
        load_eval(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(InputError, match="mapping"):
        load_eval(_write(tmp_path, "- a\n- b\n"))


# --------------------------------------------------------------------------- CLI


def test_cli_exit_codes(tmp_path, capsys):
    assert main(["check", str(CLEAN)]) == 0
    assert "no anti-patterns found" in capsys.readouterr().out
    assert main(["check", str(EVALS / "bad_latency_paper.yaml")]) == 1
    out = capsys.readouterr().out
    assert "[MD3 · C13]" in out and "simserve antipatterns --only MD3" in out
    assert "checklist C13: TTFT targets grow with the prompt length" in out
    data = _clean()
    data["slos"] = {}
    path = _write(tmp_path, data)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(path) in err and "slos" in err and "unknown key" in err


def test_cli_json(capsys):
    assert main(["check", "--json", str(EVALS / "bad_throughput_paper.yaml")]) == 1
    findings = json.loads(capsys.readouterr().out)
    assert {f["id"] for f in findings} == BAD["bad_throughput_paper.yaml"]
    assert set(findings[0]) == {"id", "item", "title", "field", "reason", "why", "command"}
