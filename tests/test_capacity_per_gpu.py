"""Capacity per GPU (DistServe's goodput per GPU): the GPUs a cluster occupies are stated with
every capacity, in capacity.json, on the `capacity` console line and in capacity sweeps."""

from __future__ import annotations

import json

import pytest
import yaml

from simserve.cli import main
from simserve.config import scenario_from_mapping
from simserve.experiments.capacity import (
    CapacityResult,
    CapacitySettings,
    cluster_gpus,
    parse_slo_rule,
    search_capacity,
)
from simserve.experiments.pool import RunPool
from simserve.experiments.sweep import load_sweep_spec, plan_sweep, read_csv_rows, run_sweep

# NOTE: DistServe's goodput (Zhong et al., OSDI 2024): 90% of requests meet both the TTFT and
# the TPOT SLO. 200 short requests are enough for the rule to fail past the knee (with fewer
# than a batch of requests an overload never queues) and keep each search under a second.
RULE = "attainment:0.9"


def _scenario(cluster: dict | None = None, tp: int = 1) -> dict:
    """Llama-3-8B on H100s (roofline), fixed 256/16 lengths, tight TTFT/TPOT SLOs."""
    data = {
        "name": "per-gpu",
        "model": "llama-3-8b",
        "hardware": "h100-80gb-sxm",
        "tp": tp,
        "cost_model": {"kind": "roofline"},
        "engine": {"policy": "chunked_prefill", "max_num_seqs": 64,
                   "max_num_batched_tokens": 2048},
        "workload": {
            "num_requests": 200,
            "arrival": {"process": "poisson", "rate": 50.0},
            "lengths": {"dist": "fixed", "prompt_len": 256, "output_len": 16},
        },
        "metrics": {"warmup_s": 0.0, "cooldown_s": 0.0,
                    "slo": {"ttft_ms": 100.0, "tpot_ms": 15.0}},
    }
    if cluster is not None:
        data["cluster"] = cluster
    return data


COLOCATED_TP2 = _scenario(tp=2)
DISAGGREGATED_2P1D = _scenario({
    "mode": "disaggregated",
    "prefill": {"instances": 2, "tp": 1, "policy": "prefill_first"},
    "decode": {"instances": 1, "tp": 1},
})


def _search(data: dict) -> CapacityResult:
    settings = CapacitySettings(rule=parse_slo_rule(RULE), seeds=(0,), tolerance=0.1)
    return search_capacity(scenario_from_mapping(data), settings)


@pytest.mark.parametrize(
    ("data", "gpus"), [(COLOCATED_TP2, 2), (DISAGGREGATED_2P1D, 3)],
    ids=["colocated-tp2", "disaggregated-2p1d"],
)
def test_capacity_per_gpu_is_capacity_over_the_cluster_gpus(data, gpus):
    result = _search(data)
    assert result.status == "ok" and result.capacity_rps is not None
    assert result.num_gpus == gpus == cluster_gpus(scenario_from_mapping(data))
    assert result.capacity_per_gpu_rps == pytest.approx(result.capacity_rps / gpus)
    # The GPU count is the cluster's, whatever the rate: every probe's runs occupied as many.
    assert {s["num_gpus"] for p in result.probes for s in p.summaries} == {gpus}
    doc = result.to_mapping()
    assert doc["num_gpus"] == gpus
    assert doc["capacity_per_gpu_rps"] == pytest.approx(doc["capacity_rps"] / gpus)


def test_no_capacity_has_no_capacity_per_gpu():
    empty = CapacityResult("x", None, None, 1.0, "below_range", 0.1, (), num_gpus=2)
    assert empty.capacity_per_gpu_rps is None
    assert empty.to_mapping()["capacity_per_gpu_rps"] is None
    assert CapacityResult("x", 4.0, 4.0, None, "above_range", 0.1, ()).capacity_per_gpu_rps is None


def test_capacity_cli_states_the_capacity_per_gpu(tmp_path, capsys):
    path = tmp_path / "disagg.yaml"
    path.write_text(yaml.safe_dump(DISAGGREGATED_2P1D))
    out = tmp_path / "cap"
    assert main(["capacity", str(path), "--slo", RULE, "--tolerance", "0.1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    (result,) = json.loads((out / "capacity.json").read_text())["results"]
    assert result["num_gpus"] == 3
    assert result["capacity_per_gpu_rps"] == pytest.approx(result["capacity_rps"] / 3)
    line = next(li for li in printed.splitlines() if li.startswith("capacity: "))
    assert line.startswith(f"capacity: {result['capacity_rps']:.4g} req/s "
                           f"({result['capacity_per_gpu_rps']:.4g} req/s per GPU, 3 GPUs;")


def test_capacity_sweep_rows_have_the_capacity_per_gpu(tmp_path, capsys):
    """One co-located TP2 point and one disaggregated 2+1 point: per GPU in rows, CSV, table."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(_scenario()))
    placements = [
        {"mode": "colocated", "replicas": 1},
        DISAGGREGATED_2P1D["cluster"],
    ]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({
        "name": "per-gpu", "base": "base.yaml",
        "zip": {"cluster": placements, "tp": [2, 1]},
        "capacity": {"slo": RULE, "tolerance": 0.1},
    }))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "spec.yaml"), "--jobs", "2", "--no-progress",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "per GPU (req/s)" in printed and "GPUs" in printed
    rows = read_csv_rows(out / "summary.csv")
    assert [r["num_gpus"] for r in rows] == [2, 3]
    for row in rows:
        assert row["capacity_per_gpu_rps"] == pytest.approx(
            row["capacity_rps"] / row["num_gpus"])
    # A resumed sweep rebuilds the same rows from capacity.json, also from a file written
    # before the GPU count was recorded (the count then comes from the point's scenario).
    old = out / "points" / "p0001" / "capacity.json"
    doc = json.loads(old.read_text())
    for key in ("num_gpus", "capacity_per_gpu_rps"):
        del doc["results"][0][key]
    old.write_text(json.dumps(doc))
    csv_before = (out / "summary.csv").read_bytes()
    plan = plan_sweep(load_sweep_spec(tmp_path / "spec.yaml"))
    with RunPool(1) as pool:
        again = run_sweep(plan, out, pool, resume=True)
    assert again.num_ran == 0
    assert (out / "summary.csv").read_bytes() == csv_before


def test_cluster_gpus_counts_pipeline_stages_and_replicas():
    assert cluster_gpus(scenario_from_mapping(
        {**_scenario({"replicas": 3}, tp=2), "pp": 2})) == 12
    assert cluster_gpus(scenario_from_mapping(_scenario({
        "mode": "disaggregated",
        "prefill": {"instances": 1, "tp": 2, "pp": 2},
        "decode": {"instances": 2, "tp": 1},
    }))) == 6



def test_with_sessions_the_capacity_counts_session_starts(tmp_path, capsys):
    # The searched rate is arrival.rate, which with sessions starts conversations (their turns
    # follow closed-loop): the console says so instead of calling it requests per second.
    data = _scenario()
    data["workload"]["sessions"] = {"turns": 3, "think_time_s": 1.0}
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["capacity", str(path), "--slo", RULE, "--tolerance", "0.1"]) == 0
    printed = capsys.readouterr().out
    assert "rate (sessions/s)" in printed
    line = next(li for li in printed.splitlines() if li.startswith("capacity: "))
    assert " sessions/s (" in line and "sessions/s per GPU, 1 GPU" in line
    assert "req/s" not in printed
