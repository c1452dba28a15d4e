"""Mixed GPUs per pool: a disaggregated cluster whose prefill and decode pools run on different
catalog GPUs, each with its own KV capacity, cost model and profile check; the KV link between
unlike GPUs; and the one-line errors of a pool on an unknown GPU or with another GPU's profile.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from simserve.catalog import load_catalog
from simserve.cli import main
from simserve.config import scenario_from_mapping
from simserve.costmodel.base import BatchShape
from simserve.costmodel.roofline import RooflineCostModel
from simserve.experiments.run import run_scenario
from simserve.resolve import resolve

GIB = 2**30
PROMPT, OUTPUT = 200, 6


def _mixed(decode_gpu: str, **extra) -> dict:
    """One request through a roofline-priced disaggregated cluster: H100 prefill, `decode_gpu`
    decode."""
    data = {
        "model": "llama-3-8b",
        "hardware": "h100-80gb-sxm",
        "cost_model": {"kind": "roofline"},
        "cluster": {"mode": "disaggregated", "decode": {"hardware": decode_gpu}},
        "workload": {"num_requests": 1, "arrival": {"process": "offline"},
                     "lengths": {"dist": "fixed", "prompt_len": PROMPT, "output_len": OUTPUT}},
        "metrics": {"warmup_s": 0, "cooldown_s": 0},
    }
    for key, value in extra.items():
        data[key] = value
    return data


def _expected_blocks(gpu_name: str) -> int:
    """KV blocks of one TP1 instance by hand: (memory x 0.9 - weights - 1 GiB reserve) over the
    bytes of one 16-token block (Llama-3-8B: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 B)."""
    catalog = load_catalog()
    memory = catalog.gpu(gpu_name).memory_gib * GIB
    weights = catalog.model("llama-3-8b").weight_bytes
    block_bytes = 32 * 8 * 128 * 2 * 2 * 16
    return int((memory * 0.9 - weights - GIB) // block_bytes)


def test_each_pool_sizes_its_kv_cache_from_its_own_gpu_memory():
    resolved = resolve(scenario_from_mapping(_mixed("l40s")))
    prefill, decode = resolved.pools
    assert (prefill.gpu.name, decode.gpu.name) == ("h100-80gb-sxm", "l40s")
    assert prefill.setup.limits.num_blocks == _expected_blocks("h100-80gb-sxm")
    assert decode.setup.limits.num_blocks == _expected_blocks("l40s")
    # 80 GiB against 48 GiB of memory, the same 15 GiB of weights.
    assert decode.setup.limits.num_blocks < prefill.setup.limits.num_blocks / 1.5
    assert prefill.setup.cost_model.describe()["gpu"] == "h100-80gb-sxm"
    assert decode.setup.cost_model.describe()["gpu"] == "l40s"


@pytest.mark.parametrize("decode_gpu", ["l40s", "a100-80gb-sxm", "h100-80gb-sxm"])
def test_tpot_follows_the_decode_gpus_cost_model_exactly(decode_gpu):
    scenario = scenario_from_mapping(_mixed(decode_gpu))
    output = run_scenario(scenario)
    resolved = output.resolved
    # The decode steps priced on their own by a roofline model of the decode GPU: one sequence
    # whose context grows from the prompt plus its first token.
    decode_cost = RooflineCostModel(load_catalog().gpu(decode_gpu), resolved.model, 1,
                                    scenario.cost_model)
    steps_s = [decode_cost.step_time(BatchShape(0, 0, 0.0, 0, 1, 1, PROMPT + i))
               for i in range(1, OUTPUT)]
    # TPOT spans the first token (end of the prefill) to the last: the KV transfer, then the
    # decode steps back to back.
    expected = (resolved.kv_transfer_s(PROMPT) + sum(steps_s)) / (OUTPUT - 1)
    assert output.summary["mean_tpot_ms"] == pytest.approx(expected * 1e3, rel=1e-12)
    decode_steps = output.result.steps.replica == 1
    assert output.result.steps.duration_s[decode_steps].tolist() == pytest.approx(steps_s,
                                                                                  rel=1e-12)


def test_a_slower_decode_gpu_gives_a_longer_tpot():
    tpot = {gpu: run_scenario(scenario_from_mapping(_mixed(gpu))).summary["mean_tpot_ms"]
            for gpu in ("h100-80gb-sxm", "a100-80gb-sxm", "l40s")}
    # Decode is memory-bound: 3.35, 2.04 and 0.86 TB/s.
    assert tpot["h100-80gb-sxm"] < tpot["a100-80gb-sxm"] < tpot["l40s"]


def test_kv_link_between_unlike_gpus_is_the_slower_interconnect():
    h100_l40s = resolve(scenario_from_mapping(_mixed("l40s")))
    assert h100_l40s.kv_link is not None and h100_l40s.kv_link.name == "pcie4"
    h100_a100 = resolve(scenario_from_mapping(_mixed("a100-80gb-sxm")))
    assert h100_a100.kv_link is not None and h100_a100.kv_link.name == "nvlink3"
    same = resolve(scenario_from_mapping(_mixed("h100-80gb-sxm")))
    assert same.kv_link is not None and same.kv_link.name == "nvlink4"
    data = _mixed("l40s")
    data["cluster"]["link"] = {"name": "net400g"}
    named = resolve(scenario_from_mapping(data))
    assert named.kv_link is not None and named.kv_link.name == "net400g"


def test_summary_names_each_pools_gpu_only_when_they_differ():
    mixed = run_scenario(scenario_from_mapping(_mixed("l40s"))).summary
    assert mixed["hardware"] == "h100-80gb-sxm"
    assert {r: p["hardware"] for r, p in mixed["pools"].items()} == {
        "prefill": "h100-80gb-sxm", "decode": "l40s"}
    assert mixed["kv_link"]["chosen_by"].startswith("cluster.link.name unset")
    same = run_scenario(scenario_from_mapping(_mixed("h100-80gb-sxm"))).summary
    assert all("hardware" not in p for p in same["pools"].values())
    assert "chosen_by" not in same["kv_link"]


def test_pool_hardware_equal_to_the_scenarios_changes_nothing():
    unset = _mixed("h100-80gb-sxm")
    del unset["cluster"]["decode"]["hardware"]
    explicit = run_scenario(scenario_from_mapping(_mixed("H100-80GB-SXM"))).summary
    assert json.dumps(run_scenario(scenario_from_mapping(unset)).summary) == json.dumps(explicit)


def test_num_gpus_and_engine_setup_follow_the_pools():
    data = _mixed("a100-80gb-sxm")
    data["cluster"]["decode"].update(instances=2, tp=2)
    resolved = resolve(scenario_from_mapping(data))
    assert resolved.num_gpus == 1 + 2 * 2
    setup = resolved.engine_setup
    assert [p.instances for p in setup.pools] == [1, 2]
    assert setup.pools[1].cost_model is resolved.pools[1].setup.cost_model


# --------------------------------------------------------------------------- bad input


def _write(tmp_path, data: dict):
    import yaml

    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _line_of(path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _cli_error(tmp_path, capsys, path, *extra: str) -> str:
    """The one-line error `simserve run` gives (exit code 2, nothing written)."""
    out = tmp_path / "run"
    code = main(["run", str(path), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_pool_on_an_unknown_gpu_is_one_line_naming_field_file_and_line(tmp_path, capsys):
    path = _write(tmp_path, _mixed("tpu-v5"))
    err = _cli_error(tmp_path, capsys, path)
    line = _line_of(path, "tpu-v5")
    assert f"{path}:{line}: cluster.decode.hardware: unknown GPU 'tpu-v5'" in err


def _calibrated(decode: dict) -> dict:
    data = _mixed("h100-80gb-sxm")
    data.update(model="opt-13b", hardware="a100-80gb-sxm",
                cost_model={"kind": "calibrated",
                            "profile": "a100-80gb-sxm_opt-13b_tp1_distserve"})
    data["cluster"]["decode"] = decode
    return data


def test_calibrated_profiles_run_on_their_own_gpu():
    resolved = resolve(scenario_from_mapping(_calibrated({"hardware": "a100-80gb-sxm"})))
    assert resolved.pools[1].setup.cost_model.describe()["gpu"] == "a100-80gb-sxm"


def test_a_scenario_profile_on_a_pool_of_another_gpu_names_the_pools_hardware(tmp_path, capsys):
    path = _write(tmp_path, _calibrated({"hardware": "h100-80gb-sxm"}))
    err = _cli_error(tmp_path, capsys, path)
    line = _line_of(path, "hardware: h100-80gb-sxm")
    assert f"{path}:{line}: cluster.decode.hardware: profile " in err
    assert "GPU a100-80gb-sxm (scenario: h100-80gb-sxm)" in err
    assert "set cluster.decode.profile to a profile fitted on h100-80gb-sxm at tp=1" in err


def test_a_pool_profile_for_another_gpu_names_the_pools_profile(tmp_path, capsys):
    path = _write(tmp_path, _calibrated({"hardware": "h100-80gb-sxm",
                                         "profile": "a100-80gb-sxm_opt-13b_tp1_vllm"}))
    err = _cli_error(tmp_path, capsys, path)
    line = _line_of(path, "profile: a100-80gb-sxm_opt-13b_tp1_vllm")
    assert f"{path}:{line}: cluster.decode.profile: profile " in err


def test_a_pool_gpu_too_small_for_the_weights_is_refused(tmp_path, capsys):
    data = _mixed("l40s")
    data["model"] = "llama-3-70b"
    data["cost_model"] = {"kind": "roofline"}
    data["tp"] = 4
    data["cluster"]["decode"]["tp"] = 1
    path = _write(tmp_path, data)
    err = _cli_error(tmp_path, capsys, path)
    assert "cluster.decode.tp:" in err and "l40s" in err


def test_pool_hardware_is_a_sweep_axis(tmp_path):
    from simserve.experiments.sweep import load_sweep_spec, plan_sweep

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        f"name: hw\nbase: {_write(tmp_path, _mixed('h100-80gb-sxm'))}\n"
        "grid:\n  cluster.decode.hardware: [h100-80gb-sxm, a100-80gb-sxm, l40s]\n")
    plan = plan_sweep(load_sweep_spec(spec_path))
    gpus = [resolve(run.scenario).pools[1].gpu.name for run in plan.runs]
    assert gpus == ["h100-80gb-sxm", "a100-80gb-sxm", "l40s"]


def test_mixed_runs_are_deterministic():
    scenario = scenario_from_mapping(_mixed("l40s"))
    scenario = dataclasses.replace(
        scenario, workload=dataclasses.replace(scenario.workload, num_requests=30))
    first, second = run_scenario(scenario), run_scenario(scenario)
    assert json.dumps(first.summary) == json.dumps(second.summary)
    assert np.array_equal(first.result.steps.duration_s, second.result.steps.duration_s)
