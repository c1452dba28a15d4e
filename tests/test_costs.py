"""Cost and energy per token: catalog prices and powers, `cost:` overrides, the utilisation-scaled
power model against hand-computed runs, capacity per dollar, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.catalog import load_catalog
from simserve.cli import main
from simserve.config import load_scenario, scenario_from_mapping
from simserve.engine.records import StepRecords
from simserve.errors import InputError
from simserve.experiments.capacity import CapacityResult, cluster_price
from simserve.experiments.run import run_scenario
from simserve.metrics.energy import steps_dynamic_j
from simserve.pricing import GpuRates, gpu_rates

ROOT = Path(__file__).resolve().parent.parent

# A toy GPU with round peaks (1e6 FLOP/s, 1e6 B/s) and a toy one-layer model, so that each
# step's FLOPs and bytes can be counted by hand:
#   attention weights 2*8*8 (q, o) + 2*8*8 (k, v: 1 KV head of 8) = 256, plain MLP 2*8*8 = 128,
#   linear FLOPs per token 2*(256+128) = 768, LM head 2*8*16 = 256 per sampled token,
#   attention 4*1 layer*1 head*8 = 32 FLOPs per query-key pair,
#   weights (16*8 tied embedding + 384) * 2 B = 1024 B, KV 2*1*1*8*2 B = 32 B per token.
TOY_CATALOG = """\
gpus:
  toy-a:
    memory_gib: 1
    mem_bandwidth_gbps: 0.001
    bf16_tflops: 0.000001
    fp8_tflops: 0.000001
    interconnect: pcie4
    interconnect_gbps: 32
    price_usd_per_hour: 3.6
    idle_w: 100
    tdp_w: 300
  toy-b:
    memory_gib: 1
    mem_bandwidth_gbps: 0.001
    bf16_tflops: 0.000001
    fp8_tflops: 0.000001
    interconnect: pcie4
    interconnect_gbps: 32
    price_usd_per_hour: 7.2
    idle_w: 50
    tdp_w: 450
models:
  toy:
    hf_id: none/toy
    num_layers: 1
    hidden_size: 8
    num_heads: 1
    num_kv_heads: 1
    head_dim: 8
    intermediate_size: 8
    vocab_size: 16
    max_model_len: 64
    mlp: plain
    tied_embeddings: true
"""


def _toy(tmp_path, **extra) -> dict:
    catalog = tmp_path / "toy.yaml"
    catalog.write_text(TOY_CATALOG)
    data = {
        "model": "toy", "hardware": "toy-a", "catalog": str(catalog),
        "cost_model": {"kind": "constant", "step_time_ms": 10.0},
        "engine": {"num_gpu_blocks_override": 100},
        "workload": {"num_requests": 1, "arrival": {"process": "offline"},
                     "lengths": {"dist": "fixed", "prompt_len": 16, "output_len": 3}},
        "metrics": {"warmup_s": 0, "cooldown_s": 0},
        "cost": {},
    }
    data.update(extra)
    return data


def test_energy_and_cost_of_a_toy_run_match_the_hand_computation(tmp_path):
    output = run_scenario(scenario_from_mapping(_toy(tmp_path)))
    steps = output.result.steps
    # Three 10 ms steps from t=0: the 16-token prompt, then two decodes over 17 and 18 tokens.
    assert steps.started_at.tolist() == pytest.approx([0.0, 0.01, 0.02])
    assert steps.num_prefill_tokens.tolist() == [16, 0, 0]
    assert steps.decode_kv_tokens.tolist() == [0, 17, 18]
    # Prefill: 16*768 + 256 + 32 * 16*(16 - 16/2) = 16640 FLOPs, 1024 + 16*32 = 1536 B; at 1e6
    # FLOP/s that takes 16.64 ms > 10 ms, so the GPU is at TDP for the whole step: 200 W above
    # idle x 10 ms = 2 J. Decodes: 768 + 256 + 32*17 = 1568 FLOPs and 1024 + 32*17 = 1568 B
    # (1.568 ms at peak: 200 W x 1.568 ms = 0.3136 J); then 1600 and 1600 (0.32 J). Idle:
    # 100 W x 30 ms = 3 J.
    energy_j = 3.0 + 2.0 + 0.3136 + 0.32
    summary = output.summary
    assert summary["energy_kwh"] == pytest.approx(energy_j / 3.6e6, rel=1e-12)
    assert summary["mean_power_w"] == pytest.approx(energy_j / 0.03, rel=1e-12)
    assert summary["gpu_hours"] == pytest.approx(0.03 / 3600, rel=1e-12)
    # 3.6 USD/h x 30 ms = 3e-5 USD for 3 output tokens.
    assert summary["cost_usd"] == pytest.approx(3e-5, rel=1e-12)
    assert summary["cost_per_mtok_usd"] == pytest.approx(10.0, rel=1e-12)
    assert summary["num_output_tokens_generated"] == 3
    assert summary["tokens_per_joule"] == pytest.approx(3 / energy_j, rel=1e-12)
    pool = summary["cost_pools"]["replica"]
    assert pool["hardware"] == "toy-a" and pool["num_gpus"] == 1
    assert pool["usd_per_gpu_hour"] == 3.6 and (pool["idle_w"], pool["tdp_w"]) == (100, 300)


def test_tensor_parallel_gpus_share_the_work_and_each_idles(tmp_path):
    # A toy of 2 attention heads of 4 (1 KV head, replicated at tp=2) on 2 GPUs: attention
    # weights 2*8*8 + 2*8*4 = 192, MLP 128, so 2*320 = 640 linear FLOPs per token; weights
    # (128 + 320) * 2 = 896 B; KV 2 heads x 4 x 2 (K, V) x 2 B = 32 B per token; 4*2*4 = 32
    # FLOPs per pair. Both GPUs together peak at 2e6 FLOP/s and 2e6 B/s.
    catalog = tmp_path / "toy2.yaml"
    catalog.write_text(TOY_CATALOG.replace("num_heads: 1", "num_heads: 2")
                       .replace("head_dim: 8", "head_dim: 4"))
    data = _toy(tmp_path, tp=2)
    data["catalog"] = str(catalog)
    summary = run_scenario(scenario_from_mapping(data)).summary
    # Prefill 16*640 + 256 + 32*128 = 14,592 FLOPs, 896 + 16*32 = 1,408 B: 7.296 ms at peak,
    # inside the 10 ms step, so 200 W x 2 GPUs x 7.296 ms = 2.9184 J. Decodes: 1,440 FLOPs and
    # 1,440 B (0.72 ms: 0.288 J), then 1,472 and 1,472 (0.736 ms: 0.2944 J). Idle: 2 GPUs x
    # 100 W x 30 ms = 6 J.
    energy_j = 6.0 + 2.9184 + 0.288 + 0.2944
    assert summary["energy_kwh"] * 3.6e6 == pytest.approx(energy_j, rel=1e-12)
    assert summary["gpu_hours"] == pytest.approx(2 * 0.03 / 3600, rel=1e-12)
    assert summary["cost_usd"] == pytest.approx(2 * 3e-5, rel=1e-12)


def test_mixed_disaggregated_run_prices_each_pool_on_its_gpu(tmp_path):
    data = _toy(tmp_path)
    data["cluster"] = {
        "mode": "disaggregated", "decode": {"hardware": "toy-b"},
        # 1 s of latency, then 512 B (16 tokens x 32 B) at 512 B/s: 2 s on the link.
        "link": {"bandwidth_gbps": 5.12e-7, "latency_us": 1e6},
    }
    output = run_scenario(scenario_from_mapping(data))
    steps = output.result.steps
    assert steps.started_at.tolist() == pytest.approx([0.0, 2.01, 2.02])
    span_s = 2.03
    summary = output.summary
    # Prefill pool (toy-a: 100 W idle, 300 W TDP, 3.6 USD/h): idle for the whole 2.03 s plus
    # its step at TDP (2 J). Decode pool (toy-b: 50/450 W, 7.2 USD/h): idle plus 400 W over
    # the two decodes' 1.568 and 1.6 ms at peak.
    prefill_j = 100 * span_s + 2.0
    decode_j = 50 * span_s + 400 * (0.001568 + 0.0016)
    pools = summary["cost_pools"]
    assert pools["prefill"]["energy_kwh"] * 3.6e6 == pytest.approx(prefill_j, rel=1e-12)
    assert pools["decode"]["energy_kwh"] * 3.6e6 == pytest.approx(decode_j, rel=1e-12)
    assert summary["cost_usd"] == pytest.approx((3.6 + 7.2) * span_s / 3600, rel=1e-12)
    assert summary["gpu_hours"] == pytest.approx(2 * span_s / 3600, rel=1e-12)
    assert pools["decode"]["hardware"] == "toy-b" and pools["decode"]["usd_per_gpu_hour"] == 7.2


def test_pipeline_stages_split_each_steps_time(tmp_path):
    # pp=2 on a toy of 2 layers: each step holds each stage's GPU for half its time.
    catalog = tmp_path / "toy.yaml"
    data = _toy(tmp_path, pp=2)
    catalog.write_text(TOY_CATALOG.replace("num_layers: 1", "num_layers: 2"))
    output = run_scenario(scenario_from_mapping(data))
    steps = output.result.steps
    model = output.resolved.model
    gpu = output.resolved.gpu
    rates = gpu_rates(gpu, None)
    dynamic = steps_dynamic_j(steps, model, gpu, rates, 1, 2)
    # Layers double the linear and attention FLOPs: the prefill's 2 x (16*768 + 32*128) + 256 =
    # 33,024 FLOPs over 2 GPUs at 1e6 FLOP/s each (16.5 ms) exceed the ~5 ms each stage holds
    # its GPU, so both GPUs run at TDP for their half of the step.
    assert dynamic[0] == pytest.approx(200 * 2 * steps.duration_s[0] / 2, rel=1e-12)
    assert output.summary["gpu_hours"] == pytest.approx(2 * float(
        np.max(steps.started_at + steps.duration_s)) / 3600, rel=1e-12)


def test_no_cost_section_means_no_cost_keys(tmp_path):
    data = _toy(tmp_path)
    del data["cost"]
    summary = run_scenario(scenario_from_mapping(data)).summary
    for key in ("gpu_hours", "energy_kwh", "cost_usd", "cost_per_mtok_usd", "tokens_per_joule",
                "cost_pools"):
        assert key not in summary


def test_scenario_overrides_replace_catalog_figures(tmp_path):
    data = _toy(tmp_path, cost={"gpu_hour_usd": {"TOY-A": 36.0}, "idle_w": {"toy-a": 0}})
    summary = run_scenario(scenario_from_mapping(data)).summary
    assert summary["cost_usd"] == pytest.approx(3e-4, rel=1e-12)
    # Idle 0 W: the same steps at 300 W above idle: 3 J for the prefill, 300 W x (1.568 +
    # 1.6) ms = 0.9504 J for the decodes.
    assert summary["energy_kwh"] * 3.6e6 == pytest.approx(3.0 + 0.9504, rel=1e-12)
    pool = summary["cost_pools"]["replica"]
    assert pool["price_source"] == "scenario: cost.gpu_hour_usd.toy-a"
    assert pool["power_source"].startswith("scenario: cost.idle_w.toy-a; catalog:")


def test_energy_is_deterministic_and_between_idle_and_tdp():
    scenario = load_scenario(ROOT / "scenarios" / "default.yaml",
                             ["workload.num_requests=200", "cost={}"])
    first, second = run_scenario(scenario).summary, run_scenario(scenario).summary
    assert json.dumps(first) == json.dumps(second)
    gpu = load_catalog().gpu("h100-80gb-sxm")
    assert gpu.idle_w is not None and gpu.tdp_w is not None
    assert gpu.idle_w < first["mean_power_w"] < gpu.tdp_w
    assert first["cost_usd"] == pytest.approx(first["gpu_hours"] * 3.99, rel=1e-12)


# --------------------------------------------------------------------------- the power model


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 64), st.integers(0, 200_000),
                          st.floats(1e-4, 1.0)), min_size=1, max_size=20),
       st.sampled_from([1, 2, 4]), st.sampled_from([1, 2]))
def test_step_power_stays_between_idle_and_tdp(rows, tp, pp):
    catalog = load_catalog()
    model, gpu = catalog.model("llama-3-8b"), catalog.gpu("h100-80gb-sxm")
    n = len(rows)
    prefill = np.array([r[0] for r in rows], dtype=np.int64)
    decode = np.array([r[1] for r in rows], dtype=np.int64)
    steps = StepRecords(
        replica=np.zeros(n, np.int32), started_at=np.zeros(n),
        duration_s=np.array([r[3] for r in rows]),
        num_prefill_tokens=prefill, num_decode_tokens=decode,
        prefill_kv_tokens=prefill * 2, decode_kv_tokens=np.array([r[2] for r in rows]),
        num_seqs=decode + (prefill > 0), kv_blocks_used=np.zeros(n, np.int64),
        kv_blocks_total=np.zeros(n, np.int64), num_preempted=np.zeros(n, np.int64))
    rates = GpuRates("h100-80gb-sxm", 1.0, 75.0, 700.0, "", "")
    dynamic = steps_dynamic_j(steps, model, gpu, rates, tp, pp)
    held = steps.duration_s / pp * tp * pp
    assert np.all(dynamic >= 0)
    assert np.all(dynamic <= (700 - 75) * held * (1 + 1e-12))
    # More work in the same time never draws less power.
    more = StepRecords(**{**steps.__dict__, "decode_kv_tokens": steps.decode_kv_tokens + 1000})
    assert np.all(steps_dynamic_j(more, model, gpu, rates, tp, pp) >= dynamic)


# --------------------------------------------------------------------------- catalog


def test_packaged_prices_and_powers_carry_sources():
    for gpu in load_catalog().gpus.values():
        if gpu.price_usd_per_hour is not None:
            assert gpu.price_usd_per_hour > 0
            assert gpu.price_source and gpu.price_source.startswith("https://")
            assert gpu.price_date and len(gpu.price_date) == 10
        if gpu.idle_w is not None or gpu.tdp_w is not None:
            assert gpu.power_source
        if gpu.idle_w is not None:
            assert gpu.tdp_w is not None and 0 < gpu.idle_w < gpu.tdp_w
    h100 = load_catalog().gpu("h100-80gb-sxm")
    assert (h100.idle_w, h100.tdp_w) == (75, 700)


def test_a_yaml_date_is_read_as_text(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(TOY_CATALOG.replace("price_usd_per_hour: 3.6",
                                        "price_usd_per_hour: 3.6\n    price_date: 2026-01-31"))
    assert load_catalog(path).gpu("toy-a").price_date == "2026-01-31"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("price_usd_per_hour: 3.6", "price_usd_per_hour: -3.6",
     "gpus.toy-a.price_usd_per_hour: must be a finite number > 0, got -3.6"),
    ("idle_w: 100", "idle_w: 400", "gpus.toy-a.idle_w: idle power 400 W exceeds the TDP 300 W"),
    ("tdp_w: 300", "tdp_w: 0", "gpus.toy-a.tdp_w: must be a finite number > 0"),
])
def test_bad_catalog_figures_name_file_line_and_field(tmp_path, old, new, message):
    path = tmp_path / "c.yaml"
    path.write_text(TOY_CATALOG.replace(old, new, 1))
    with pytest.raises(InputError) as info:
        load_catalog(path)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if new in text)
    assert str(info.value).startswith(f"{path}:{line}: {message}")


# --------------------------------------------------------------------------- bad scenarios


def _cli_error(tmp_path, capsys, data: dict) -> tuple[str, Path]:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "run"
    code = main(["run", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err, path


def _line(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize(("cost", "needle", "message"), [
    ({"gpu_hour_usd": {"toy-a": -1.0}}, "toy-a: -1.0", "cost.gpu_hour_usd.toy-a: must be > 0"),
    ({"idle_w": {"toy-a": 400.0}}, "toy-a: 400.0",
     "cost.idle_w.toy-a: idle power 400 W exceeds the TDP 300 W"),
    ({"tdp_w": {"toy-a": 50.0}}, "toy-a: 50.0",
     "cost.tdp_w.toy-a: idle power 100 W exceeds the TDP 50 W"),
    ({"gpu_hour_usd": {"tpu-v5": 1.0}}, "tpu-v5", "cost.gpu_hour_usd.tpu-v5: unknown GPU"),
    ({"gpu_hour_usd": {"toy-a": "cheap"}}, "cheap", "cost.gpu_hour_usd.toy-a: expected a number"),
])
def test_bad_cost_section_is_one_line_with_field_file_and_line(tmp_path, capsys, cost, needle,
                                                               message):
    err, path = _cli_error(tmp_path, capsys, _toy(tmp_path, cost=cost))
    assert f"{path}:{_line(path, needle)}: {message}" in err


def test_a_gpu_without_a_price_or_power_is_refused_when_costs_are_reported(tmp_path, capsys):
    data = _toy(tmp_path)
    (tmp_path / "toy.yaml").write_text(TOY_CATALOG.replace("    price_usd_per_hour: 7.2\n", ""))
    data["cluster"] = {"mode": "disaggregated", "decode": {"hardware": "toy-b"}}
    err, path = _cli_error(tmp_path, capsys, data)
    assert (f"{path}:{_line(path, 'cost:')}: cost: the catalog has no price for toy-b (used by "
            "the decode pool); set cost.gpu_hour_usd.toy-b") in err
    data["cost"] = {"gpu_hour_usd": {"toy-b": 1.0}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", str(path), "--out", str(tmp_path / "ok")]) == 0
    h200 = load_scenario(ROOT / "scenarios" / "default.yaml",
                         ["hardware=h200", "cost_model.kind=roofline"])
    with pytest.raises(InputError, match=r"no idle power for h200 .*; set cost\.idle_w\.h200"):
        load_scenario(ROOT / "scenarios" / "default.yaml",
                      ["hardware=h200", "cost_model.kind=roofline", "cost={}"])
    assert cluster_price(h200) == pytest.approx(4.59)


# --------------------------------------------------------------------------- capacity per dollar


def test_capacity_per_dollar_is_requests_per_usd_at_capacity():
    result = CapacityResult("x", 10.0, 10.0, 11.0, "ok", 0.05, (), num_gpus=2, usd_per_hour=7.2)
    assert result.capacity_per_usd == pytest.approx(10.0 * 3600 / 7.2)
    doc = result.to_mapping()
    assert doc["usd_per_hour"] == 7.2 and doc["capacity_per_usd"] == pytest.approx(5000.0)
    assert CapacityResult("x", None, None, 1.0, "below_range", 0.1, (),
                          usd_per_hour=7.2).capacity_per_usd is None
    assert CapacityResult("x", 1.0, 1.0, 2.0, "ok", 0.1, ()).capacity_per_usd is None


def test_cluster_price_sums_each_pools_gpus():
    mixed = scenario_from_mapping({
        "cost_model": {"kind": "roofline"},
        "cluster": {"mode": "disaggregated", "prefill": {"instances": 2},
                    "decode": {"hardware": "a100-80gb-sxm", "tp": 2}},
    })
    assert cluster_price(mixed) == pytest.approx(2 * 3.99 + 2 * 1.79)
    priced = scenario_from_mapping({"cost_model": {"kind": "roofline"}, "hardware": "mi300x"})
    assert cluster_price(priced) is None


def _capacity_sweep(tmp_path, capsys) -> Path:
    scenario = tmp_path / "base.yaml"
    scenario.write_text(yaml.safe_dump({
        "cost_model": {"kind": "constant", "step_time_ms": 20.0},
        "workload": {"num_requests": 60, "arrival": {"rate": 4.0},
                     "lengths": {"dist": "fixed", "prompt_len": 64, "output_len": 8}},
        "metrics": {"warmup_s": 0, "cooldown_s": 0},
        "cluster": {"mode": "disaggregated"},
    }))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "per_usd", "base": str(scenario),
        "grid": {"cluster.decode.hardware": ["h100-80gb-sxm", "a100-80gb-sxm"]},
        "capacity": {"slo": "p99_tbt_ms<=30", "tolerance": 0.2, "low": 1.0, "high": 64.0},
    }))
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1", "--no-progress"]) == 0
    assert "per $ (req/USD)" in capsys.readouterr().out
    return out


def test_capacity_sweep_rows_and_plot_rank_by_capacity_per_dollar(tmp_path, capsys):
    out = _capacity_sweep(tmp_path, capsys)
    from simserve.experiments.sweep import read_csv_rows

    rows = read_csv_rows(out / "summary.csv")
    assert [r["usd_per_hour"] for r in rows] == pytest.approx([2 * 3.99, 3.99 + 1.79])
    for row in rows:
        assert row["capacity_per_usd"] == pytest.approx(
            row["capacity_rps"] * 3600 / row["usd_per_hour"])
    # The constant cost model prices both GPUs alike: the same capacity, the cheaper cluster
    # serves more per dollar.
    assert rows[0]["capacity_rps"] == rows[1]["capacity_rps"]
    assert rows[1]["capacity_per_usd"] > rows[0]["capacity_per_usd"]
    from simserve.plots_sweep import capacity_figure, load_sweep_table

    table = load_sweep_table(out)
    fig = capacity_figure(table, None, None, per="usd")
    assert fig is not None
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == sorted(heights, reverse=True)
    assert heights[0] == pytest.approx(rows[1]["capacity_per_usd"])
    assert "a100-80gb-sxm" in ax.get_xticklabels()[0].get_text()
    assert ax.get_ylabel() == "capacity per dollar (requests per USD)"
    assert main(["plot", str(out), "--per", "usd", "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "capacity.png").is_file()


def test_plot_per_dollar_needs_a_capacity_sweep(tmp_path, capsys):
    from simserve.plots_sweep import SweepTable, capacity_figure

    table = SweepTable(rows=[{"workload.arrival.rate": 1.0}], axes=("workload.arrival.rate",),
                       mode="runs", slo=None, name="x")
    with pytest.raises(InputError, match="--per: ranking per dollar needs a capacity sweep"):
        capacity_figure(table, None, "workload.arrival.rate", per="usd")


def test_every_cost_key_is_reported_and_rules_on_them_need_a_cost_section(tmp_path):
    from simserve.experiments.capacity import check_rule, parse_slo_rule
    from simserve.metrics.energy import COST_KEYS

    data = _toy(tmp_path)
    summary = run_scenario(scenario_from_mapping(data)).summary
    assert all(isinstance(summary[key], int | float) for key in COST_KEYS)
    rule = parse_slo_rule("cost_per_mtok_usd<=2")
    check_rule(rule, scenario_from_mapping(data))
    del data["cost"]
    with pytest.raises(InputError, match="reported only with a cost: section"):
        check_rule(rule, scenario_from_mapping(data))
