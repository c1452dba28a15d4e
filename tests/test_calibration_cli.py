"""`simserve calibrate`, `derive-profile`, `validate` and `compare` in-process."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from simserve.calibration.compare import compare, load_real
from simserve.calibration.datasets import SHAPE_FIELDS, STEP_COLUMNS, decode_shape, prefill_shape
from simserve.cli import main
from simserve.costmodel.calibrated import load_profile

ROOT = Path(__file__).resolve().parent.parent
COEFFS = {"step_overhead_ms": 8.0, "prefill_overhead_ms": 3.0, "per_seq_ms": 0.05, "mfu": 0.6,
          "mbu": 0.8, "attn_eff": 0.3, "kv_eff": 0.7, "allreduce_latency_us": 10.0,
          "allreduce_eff": 0.7, "ridge_sharpness": 2.0}


def _steps_csv(path: Path) -> Path:
    """A profiler-format CSV whose times come from the model itself (OPT-13B on an A100)."""
    from simserve.catalog import load_catalog
    from simserve.costmodel.calibrated import Arch, predict_ms, step_terms

    cat = load_catalog()
    rows = [prefill_shape(1, q, c) for q in (32, 128, 512, 2048) for c in (0, 1024)]
    rows += [decode_shape(b, ctx) for b in (1, 4, 16, 64, 256) for ctx in (128, 1024)]
    mixed = prefill_shape(1, 256)
    mixed.update(decode_shape(8, 512))
    rows += [mixed, {**prefill_shape(1, 64), **decode_shape(32, 256)}]
    shapes = {f: np.array([r.get(f, 0) for r in rows], float) for f in SHAPE_FIELDS}
    times = predict_ms(COEFFS, step_terms(Arch.from_model(cat.model("opt-13b")),
                                          cat.gpu("a100-80gb-sxm"), 1, shapes))
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(STEP_COLUMNS)
        for i, t in enumerate(times):
            w.writerow(["a100-80gb-sxm", "opt-13b", 1, "mine",
                        *(shapes[f][i] for f in SHAPE_FIELDS), t])
    return path


def test_calibrate_writes_a_profile_and_prints_errors_per_regime(tmp_path, capsys):
    data = _steps_csv(tmp_path / "steps.csv")
    assert main(["calibrate", str(data), "--out", str(tmp_path / "profiles")]) == 0
    printed = capsys.readouterr().out
    assert "a100-80gb-sxm_opt-13b_tp1_mine" in printed
    for regime in ("prefill", "decode", "mixed"):
        assert regime in printed
    profile = load_profile(tmp_path / "profiles" / "a100-80gb-sxm_opt-13b_tp1_mine.yaml")
    assert profile.coefficients["mfu"] == pytest.approx(0.6, rel=0.01)
    assert profile.envelope.max_num_seqs == 256 and "mixed" in profile.envelope.regimes
    assert profile.fit["errors_pct"]["all"]["mape"] < 1.0


def test_profile_is_used_by_a_run(tmp_path):
    data = _steps_csv(tmp_path / "steps.csv")
    main(["calibrate", str(data), "--out", str(tmp_path), "--name", "mine"])
    out = tmp_path / "run"
    code = main(["run", str(ROOT / "scenarios" / "validation" / "opt13b-a100-vllm.yaml"),
                 "--out", str(out), "--set", f"cost_model.profile={tmp_path / 'mine.yaml'}",
                 "--set", "workload.num_requests=30"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cost_model"]["kind"] == "calibrated"
    assert summary["cost_model"]["profile"] == "mine"


def test_derive_profile_command(tmp_path, capsys):
    code = main(["derive-profile", "a100-80gb-sxm_llama-2-70b_tp2_splitwise-sim", "--model",
                 "llama-3-8b", "--tp", "1", "--out", str(tmp_path), "--linear-from",
                 "a100-80gb-sxm_linear_vidur", "--name", "d"])
    assert code == 0 and "derived d" in capsys.readouterr().out
    profile = load_profile(tmp_path / "d.yaml")
    vidur = load_profile(ROOT / "calibration" / "profiles" / "a100-80gb-sxm_linear_vidur.yaml")
    assert profile.model == "llama-3-8b" and profile.envelope is None
    assert profile.coefficients["mfu"] == vidur.coefficients["mfu"]
    assert profile.derived_from["linear_from"] == "a100-80gb-sxm_linear_vidur"


def test_validate_writes_report_and_figures(tmp_path, monkeypatch):
    # A quarter of the Vidur rows of three models keeps this test fast; `simserve validate`
    # itself reads the whole extract.
    import simserve.calibration.validate as validate

    full = ROOT / "calibration" / "data" / "vidur" / "linear_ops.csv"
    lines = full.read_text().splitlines()
    keep = ("Llama-2-7b-hf", "Llama-2-70b-hf", "phi-2")
    rows = [ln for i, ln in enumerate(lines[1:]) if ln.split(",")[1] in keep and i % 4 == 0]
    small = tmp_path / "linear_ops.csv"
    small.write_text("\n".join([lines[0], *rows]) + "\n")
    monkeypatch.setitem(validate.SHIPPED_DATA, "vidur", small)
    assert main(["validate", "--out-dir", str(tmp_path), "--no-replay"]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    assert "## 1. Step level" in report and "## 2. Cross-validation" in report
    assert "leave one model out" in report and "## 6. Targets" in report
    for name in ("parity_splitwise.png", "parity_distserve.png", "parity_vidur.png",
                 "crossval.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000


# --------------------------------------------------------------------------- compare


def _real_json(path: Path) -> Path:
    data = {
        "backend": "vllm", "completed": 3, "duration": 10.0, "request_throughput": 0.3,
        "request_goodput:": 0.2, "output_throughput": 30.0, "total_token_throughput": 60.0,
        "mean_ttft_ms": 100.0, "median_ttft_ms": 90.0, "p99_ttft_ms": 200.0,
        "mean_tpot_ms": 20.0, "median_tpot_ms": 20.0, "p99_tpot_ms": 30.0,
        "mean_itl_ms": 20.0, "median_itl_ms": 20.0, "p99_itl_ms": 40.0,
        "mean_e2el_ms": 500.0, "median_e2el_ms": 450.0, "p99_e2el_ms": 900.0,
        "input_lens": [10, 20, 30], "output_lens": [3, 2, 0],
        "ttfts": [0.1, 0.2, 0.0], "itls": [[0.02, 0.04], [0.03], []],
        "errors": ["", "", "timeout"],
    }
    path.write_text(json.dumps(data))
    return path


def _run_dir(path: Path) -> Path:
    path.mkdir()
    summary = {"completed": 3, "duration": 11.0, "request_throughput": 0.27,
               "request_goodput": 0.25, "output_throughput": 33.0,
               "total_token_throughput": 66.0, "mean_ttft_ms": 110.0, "median_ttft_ms": 99.0,
               "p99_ttft_ms": 150.0, "mean_tpot_ms": 25.0, "median_tpot_ms": 20.0,
               "p99_tpot_ms": 30.0, "mean_itl_ms": 22.0, "median_itl_ms": 21.0,
               "p99_itl_ms": 44.0, "mean_e2el_ms": 550.0, "median_e2el_ms": 500.0,
               "p99_e2el_ms": 800.0}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "requests.csv").write_text(
        "request_id,ttft_s,tpot_s,e2el_s,measured\n0,0.1,0.03,0.16,True\n1,0.3,0.03,0.33,True\n"
        "2,0.5,0.03,0.6,False\n")
    return path


def test_compare_metric_by_metric(tmp_path, capsys):
    real, run = _real_json(tmp_path / "real.json"), _run_dir(tmp_path / "run")
    assert main(["compare", str(real), str(run)]) == 0
    out = capsys.readouterr().out
    assert "Mean TTFT (ms)" in out and "+10%" in out  # 110 vs 100
    assert "Request goodput (req/s)" in out and "+25%" in out  # legacy key accepted
    assert "P50 TTFT (ms)" in out  # distributions from --save-detailed


def test_compare_distributions_follow_vllm_definitions(tmp_path):
    real = load_real(_real_json(tmp_path / "real.json"))
    rows = {r.label: r for r in compare(real, {}, {"ttft_s": np.array([0.1, 0.3]),
                                                   "tpot_s": np.array([0.03, 0.03]),
                                                   "e2el_s": np.array([0.16, 0.33])})}
    # Failed request dropped; TPOT = (e2e - ttft) / (n - 1): request 0 -> 30 ms, 1 -> 30 ms.
    assert rows["P50 TPOT (ms)"].real == pytest.approx(30.0)
    assert rows["P50 TTFT (ms)"].real == pytest.approx(150.0)
    assert rows["P50 TTFT (ms)"].sim == pytest.approx(200.0)
    assert rows["P50 ITL (ms)"].real == pytest.approx(30.0)


def test_compare_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    run = _run_dir(tmp_path / "run")
    assert main(["compare", str(tmp_path / "bad.json"), str(run)]) == 2
    assert "bad.json:1: not valid JSON" in capsys.readouterr().err
    real = _real_json(tmp_path / "real.json")
    assert main(["compare", str(real), str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


DETAILED_DEFECTS = {
    "null array": ({"ttfts": None}, "ttfts: expected a list (one entry per request), got "
                                    "NoneType"),
    "string array": ({"itls": "0.1,0.2"}, "itls: expected a list"),
    "flat itls": ({"itls": [0.02, 0.03, 0.04]}, "itls: entry 0: expected one list of "
                                                "inter-token gaps per request"),
    "short itls": ({"itls": [[0.02]]}, "the per-request arrays differ in length (ttfts 3, "
                                       "itls 1, output_lens 3, input_lens 3, errors 3)"),
    "string ttft": ({"ttfts": [0.1, "fast", 0.0]}, "ttfts: entry 1: expected a time"),
    "negative gap": ({"itls": [[0.02, -1], [0.03], []]}, "itls: entry 0: expected gaps"),
    "float length": ({"output_lens": [3, 2.5, 0]}, "output_lens: entry 1: expected a token"),
    "no ttfts": ({"ttfts": "DROP"}, "no ttfts"),
}


@pytest.mark.parametrize("case", sorted(DETAILED_DEFECTS))
def test_compare_malformed_detailed_arrays_are_one_line_errors(tmp_path, capsys, case):
    change, expected = DETAILED_DEFECTS[case]
    data = json.loads(_real_json(tmp_path / "real.json").read_text())
    for key, value in change.items():
        if value == "DROP":
            del data[key]
        else:
            data[key] = value
    (tmp_path / "real.json").write_text(json.dumps(data))
    assert main(["compare", str(tmp_path / "real.json"), str(_run_dir(tmp_path / "run"))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_compare_reads_sglang_results_with_their_e2e(tmp_path, capsys):
    sglang = {"backend": "sglang", "request_rate": float("inf"), "completed": 3,
              "duration": 10.0, "request_throughput": 0.3, "output_throughput": 30.0,
              "total_output_tokens_retokenized": 30, "mean_e2e_latency_ms": 520.0,
              "median_e2e_latency_ms": 480.0, "p99_e2e_latency_ms": 910.0,
              "mean_ttft_ms": 100.0, "median_ttft_ms": 90.0, "p99_ttft_ms": 200.0,
              "mean_tpot_ms": 20.0, "median_tpot_ms": 20.0, "p99_tpot_ms": 30.0,
              "mean_itl_ms": 20.0, "median_itl_ms": 20.0, "p95_itl_ms": 35.0,
              "p99_itl_ms": 40.0}
    path = tmp_path / "sglang.jsonl"
    path.write_text(json.dumps(sglang) + "\n")
    real = load_real(path)
    rows = {r.label: r for r in compare(real, {"mean_e2el_ms": 550.0})}
    assert rows["Mean E2E (ms)"].real == 520.0 and rows["P99 E2E (ms)"].real == 910.0
    assert main(["compare", str(path), str(_run_dir(tmp_path / "run"))]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Mean E2E \(ms\) +520 +550 +\+5\.769%", out), out


def test_compare_several_results_need_an_index(tmp_path, capsys):
    one = json.loads(_real_json(tmp_path / "real.json").read_text())
    lines = [json.dumps({**one, "mean_ttft_ms": ttft}) for ttft in (100.0, 200.0, 50.0)]
    appended = tmp_path / "appended.json"
    appended.write_text("\n".join(lines) + "\n")
    run = _run_dir(tmp_path / "run")
    assert main(["compare", str(appended), str(run)]) == 2
    err = capsys.readouterr().err
    assert "holds 3 results (one JSON per line); choose one with --index 0..2" in err
    assert main(["compare", str(appended), str(run), "--index", "-1"]) == 0
    assert re.search(r"Mean TTFT \(ms\) +50 ", capsys.readouterr().out)
    assert main(["compare", str(appended), str(run), "--index", "3"]) == 2
    assert "--index: must be in 0..2" in capsys.readouterr().err


def test_compare_warns_when_model_gpu_or_rate_differ(tmp_path, capsys):
    data = json.loads(_real_json(tmp_path / "real.json").read_text())
    data.update(model_id="meta-llama/Meta-Llama-3.1-8B-Instruct", request_rate=4.0,
                gpu="NVIDIA A100-SXM4-80GB")
    (tmp_path / "real.json").write_text(json.dumps(data))
    run = _run_dir(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    summary.update(model_id="llama-3-8b", hardware="h100-80gb-sxm")
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "scenario.yaml").write_text("workload:\n  arrival: {process: poisson, rate: 8.0}\n")
    assert main(["compare", str(tmp_path / "real.json"), str(run)]) == 0
    err = capsys.readouterr().err
    assert "simserve: warning: the real run served meta-llama/Meta-Llama-3.1-8B-Instruct, " \
           "the simulation llama-3-8b" in err
    assert "the real run used NVIDIA A100-SXM4-80GB, the simulation h100-80gb-sxm" in err
    assert "request rate was 4 req/s, the simulation's 8 req/s" in err
    summary.update(model_id="llama-3.1-8b", hardware="a100-80gb-sxm")
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "scenario.yaml").write_text("workload:\n  arrival: {process: poisson, rate: 4.0}\n")
    assert main(["compare", str(tmp_path / "real.json"), str(run)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_shipped_scenario_replays_a_trace_given_with_set(tmp_path):
    trace = ROOT / "calibration/data/distserve/ground_truth_opt13b_sharegpt/vllm-200-2.csv"
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "scenarios/validation/opt13b-a100-vllm.yaml"), "--out",
                 str(out), "--set", f"workload.trace={trace}",
                 "--set", "workload.num_requests=200"]) == 0
    resolved = yaml.safe_load((out / "scenario.yaml").read_text())
    assert resolved["engine"]["policy"] == "prefill_first"
    assert json.loads((out / "summary.json").read_text())["completed"] == 200


@pytest.mark.parametrize(("content", "expected"), [
    (bytes(range(256)) * 8, "is not UTF-8 text"),
    (b"arrival_s,prompt_len,output_len,ttft_ms,latency_ms\n0,1,2,3,x\n",
     ":2: column 'latency_ms': every value must be a number, got 'x'"),
    (b"a,b\x00c\n1,2\n", "missing column 'arrival_s'"),
    (b"", "no data rows"),
])
def test_inspect_run_on_a_bad_file_is_one_line(tmp_path, capsys, content, expected):
    # The defect: a binary file gave a UnicodeDecodeError traceback.
    path = tmp_path / "run.csv"
    path.write_bytes(content)
    assert main(["inspect-run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert main(["inspect-run", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_compare_reads_a_served_runs_per_request_csv():
    path = ROOT / "calibration/data/distserve/ground_truth_opt13b_sharegpt/vllm-100-1.csv"
    rows = list(csv.DictReader(path.open()))
    real = load_real(path)
    assert real["completed"] == len(rows) == 100
    ttft = np.array([float(r["ttft_ms"]) for r in rows])
    assert real["mean_ttft_ms"] == pytest.approx(ttft.mean())
    assert real["median_e2el_ms"] == pytest.approx(np.median([float(r["latency_ms"])
                                                              for r in rows]))
    several = [r for r in rows if int(r["output_len"]) > 1]
    tpot = [(float(r["latency_ms"]) - float(r["ttft_ms"])) / (int(r["output_len"]) - 1)
            for r in several]
    assert real["mean_tpot_ms"] == pytest.approx(np.mean(tpot))
