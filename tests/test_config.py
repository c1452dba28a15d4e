"""Scenario loading: strict schema, overrides, and errors that name field, file and line."""

from __future__ import annotations

import dataclasses

import pytest

from simserve.config import Scenario, apply_overrides, load_scenario, scenario_from_mapping
from simserve.errors import InputError


def _write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_valid_and_frozen():
    s = Scenario()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.tp = 2  # type: ignore[misc]
    assert s.engine.policy == "chunked_prefill"


def test_load_and_override(tmp_path):
    path = _write(tmp_path, "name: x\nengine:\n  policy: mixed\nworkload:\n  arrival: {rate: 2}\n")
    s = load_scenario(path, ["engine.max_num_seqs=8", "workload.arrival.rate=3.5", "seed=4"])
    assert s.engine.policy == "mixed"
    assert s.engine.max_num_seqs == 8
    assert s.workload.arrival.rate == 3.5
    assert s.seed == 4


def test_trace_path_relative_to_scenario_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = _write(tmp_path / "sub", "workload:\n  trace: t.csv\n  lengths: {dist: trace}\n"
                  "  arrival: {rate: 1}\n")
    s = load_scenario(path)
    assert s.workload.trace == str((tmp_path / "sub" / "t.csv").resolve())


@pytest.mark.parametrize(
    ("text", "field", "line"),
    [
        ("name: x\nengine:\n  polcy: mixed\n", "engine.polcy", 3),
        ("engine:\n  policy: fastest\n", "engine.policy", 2),
        ("engine:\n  max_num_seqs: many\n", "engine.max_num_seqs", 2),
        ("workload:\n  arrival:\n    rate: -1\n", "workload.arrival.rate", 3),
        ("engine:\n  block_size: 16\n  max_num_batched_tokens: 8\n",
         "engine.max_num_batched_tokens", 3),
        ("tp: 0\n", "tp", 1),
        ("workload:\n  lengths:\n    dist: trace\n", "workload.trace", 1),
        ("metrics:\n  slo:\n    ttft_ms: 0\n", "metrics.slo.ttft_ms", 3),
    ],
)
def test_bad_values_name_field_file_and_line(tmp_path, text, field, line):
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_scenario(path)
    err = info.value
    assert err.field == field
    assert err.source == str(path)
    assert err.line == line
    assert "\n" not in str(err)
    assert str(path) in str(err) and field in str(err)


def test_bad_override_is_attributed_to_set(tmp_path):
    path = _write(tmp_path, "name: x\n")
    with pytest.raises(InputError) as info:
        load_scenario(path, ["engine.nope=3"])
    assert info.value.source == "--set"
    assert info.value.field == "engine.nope"
    with pytest.raises(InputError):
        load_scenario(path, ["noequals"])


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_scenario(tmp_path / "missing.yaml")
    path = _write(tmp_path, "engine: [unclosed\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_scenario(path)


def test_apply_overrides_does_not_mutate_input():
    data = {"engine": {"policy": "static"}}
    out = apply_overrides(data, ["engine.policy=mixed", "cluster.replicas=2"])
    assert data == {"engine": {"policy": "static"}}
    assert out["cluster"] == {"replicas": 2}
    assert scenario_from_mapping(out).cluster.replicas == 2


def test_closed_loop_needs_concurrency_and_open_loop_rejects_it():
    with pytest.raises(InputError, match="concurrency"):
        scenario_from_mapping({"workload": {"arrival": {"process": "closed_loop"}}})
    with pytest.raises(InputError, match="concurrency"):
        scenario_from_mapping({"workload": {"arrival": {"rate": 1, "concurrency": 4}}})
