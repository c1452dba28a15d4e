"""Calibrated cost model: fitting, profiles, envelope warnings, matching and bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from simserve.calibration.calibrate import calibrate_steps, write_profile
from simserve.calibration.datasets import (
    SHAPE_FIELDS,
    STEP_COLUMNS,
    StepData,
    decode_shape,
    load_distserve,
    load_splitwise,
    load_steps_csv,
    prefill_shape,
)
from simserve.calibration.fit import fit_steps, predict_steps
from simserve.catalog import load_catalog
from simserve.cli import main
from simserve.config import load_scenario
from simserve.costmodel.base import BatchShape
from simserve.costmodel.calibrated import (
    COEFFICIENT_NAMES,
    Arch,
    CalibratedCostModel,
    Envelope,
    derive_profile,
    envelope_counts,
    load_profile,
    predict_ms,
    step_terms,
)
from simserve.errors import InputError
from simserve.experiments.run import run_scenario

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "calibration" / "profiles"
DATA = ROOT / "calibration" / "data"
VALIDATION = ROOT / "scenarios" / "validation" / "opt13b-a100-vllm.yaml"
CATALOG = load_catalog()

TRUE = {
    "step_overhead_ms": 4.0,
    "prefill_overhead_ms": 2.5,
    "per_seq_ms": 0.08,
    "mfu": 0.55,
    "mbu": 0.8,
    "attn_eff": 0.35,
    "kv_eff": 0.65,
    "allreduce_latency_us": 12.0,
    "allreduce_eff": 0.6,
    "ridge_sharpness": 3.0,
}


def _grid() -> dict[str, np.ndarray]:
    """Prefill, decode and mixed shapes spanning the ridge, long contexts and batch sizes."""
    rows = [prefill_shape(b, q, c) for q in (16, 64, 256, 1024, 4096) for c in (0, 2048)
            for b in (1, 4)]
    rows += [decode_shape(b, ctx) for b in (1, 8, 32, 128) for ctx in (256, 2048, 8192)]
    mixed = prefill_shape(1, 512)
    mixed.update(decode_shape(16, 1024))
    rows.append(mixed)
    return {f: np.array([r.get(f, 0) for r in rows], dtype=float) for f in SHAPE_FIELDS}


def _synthetic(tp: int, coefficients=TRUE, model="llama-3-8b", gpu="h100-80gb-sxm") -> StepData:
    spec = CATALOG.model(model)
    shapes = _grid()
    g = StepData("synthetic", "synthetic", gpu, spec.name, tp, "test", Arch.from_model(spec),
                 shapes, np.ones(shapes["num_prefill_tokens"].size))
    return dataclasses.replace(g, time_ms=predict_steps(coefficients, g, CATALOG))


# --------------------------------------------------------------------------- fitting


def test_fit_recovers_known_coefficients_to_one_percent():
    groups = [_synthetic(tp) for tp in (1, 2, 4)]
    fit = fit_steps(groups, CATALOG)  # default settings: soft_l1 loss, weak prior
    assert set(fit.fitted) == set(COEFFICIENT_NAMES)
    for name, value in TRUE.items():
        assert fit.coefficients[name] == pytest.approx(value, rel=0.01), name


def test_terms_without_data_keep_their_defaults():
    fit = fit_steps([_synthetic(1)], CATALOG)  # TP1 only: nothing to learn about all-reduce
    assert "allreduce_eff" not in fit.fitted and "allreduce_latency_us" not in fit.fitted
    assert fit.describe()["defaults_kept"] == ["allreduce_latency_us", "allreduce_eff"]


def test_cost_model_step_time_equals_vectorised_terms():
    spec, gpu = CATALOG.model("llama-2-70b"), CATALOG.gpu("a100-80gb-sxm")
    profile = load_profile(PROFILES / "a100-80gb-sxm_llama-2-70b_tp2_splitwise-sim.yaml")
    model = CalibratedCostModel(profile, gpu, spec, 2)
    rng = np.random.default_rng(1)
    for _ in range(20):
        q, c, b, w = (int(x) for x in rng.integers(1, 500, 4))
        shape = BatchShape(q, 1, q * (c + q / 2), c + q, b, b * (1 + w % 4), b * c)
        terms = step_terms(Arch.from_model(spec), gpu, 2, shape)
        assert model.step_time(shape) * 1e3 == pytest.approx(
            float(predict_ms(profile.coefficients, terms)), rel=1e-9)
    assert model.step_time(BatchShape()) == pytest.approx(
        profile.coefficients["step_overhead_ms"] * 1e-3)


def test_profile_yaml_round_trip(tmp_path):
    out = calibrate_steps(_synthetic(2), catalog=CATALOG)
    path = write_profile(out.profile, tmp_path)
    loaded = load_profile(path)
    for name in COEFFICIENT_NAMES:
        assert loaded.coefficients[name] == pytest.approx(out.profile.coefficients[name],
                                                          rel=1e-5, abs=1e-9)
    assert loaded.envelope == out.profile.envelope
    assert set(loaded.fit["errors_pct"]) >= {"prefill", "decode", "mixed", "all"}
    assert set(loaded.fit["holdout"]["errors_pct"]) >= {"prefill", "decode"}


# --------------------------------------------------------------------------- real data


@pytest.mark.parametrize(
    ("shape", "measured_ms"),
    [
        # splitwise perf_model.csv, Llama-2-70B, A100, TP2 (medians of 5 replicates)
        (decode_shape(1, 512 + 64), 54.86),  # batch 1, prompt 512, 128 tokens
        (decode_shape(16, 512 + 64), 65.46),  # batch 16
        (prefill_shape(1, 512), 196.9),  # one 512-token prompt
        (prefill_shape(1, 1024), 377.1),
    ],
)
def test_splitwise_profile_predicts_real_rows_within_6_percent(shape, measured_ms):
    profile = load_profile(PROFILES / "a100-80gb-sxm_llama-2-70b_tp2_splitwise-sim.yaml")
    model = CalibratedCostModel(profile, CATALOG.gpu("a100-80gb-sxm"),
                                CATALOG.model("llama-2-70b"), 2)
    full = {f: shape.get(f, 0) for f in SHAPE_FIELDS}
    assert model.step_time(BatchShape(**full)) * 1e3 == pytest.approx(measured_ms, rel=0.06)


def test_opt13b_profile_matches_distserve_formula_within_5_percent():
    profile = load_profile(PROFILES / "a100-80gb-sxm_opt-13b_tp1_vllm.yaml")
    model = CalibratedCostModel(profile, CATALOG.gpu("a100-80gb-sxm"), CATALOG.model("opt-13b"),
                                1)
    prefill = BatchShape(512, 1, 512 * 256.0, 512)
    assert model.step_time(prefill) * 1e3 == pytest.approx(
        22.052 + 0.14051 * 512 + 8.0766e-6 * 512**2, rel=0.05)
    decode = BatchShape(num_decode_seqs=32, num_decode_tokens=32, decode_kv_tokens=32 * 1024)
    assert model.step_time(decode) * 1e3 == pytest.approx(
        23.475 + 0.00059293 * 32 * 1024 + 0.060727 * 32, rel=0.05)


def test_splitwise_loader_excludes_scaled_copy_and_impossible_batches():
    groups = load_splitwise(DATA / "splitwise" / "perf_model.csv", CATALOG)
    assert {(g.gpu, g.tp) for g in groups if g.model == "llama-2-70b"} == {
        (gpu, tp) for gpu in ("a100-80gb-sxm", "h100-80gb-sxm") for tp in (2, 4, 8)}
    tp2 = next(g for g in groups if g.tp == 2 and g.gpu == "a100-80gb-sxm")
    assert tp2.shapes["num_prefill_seqs"].max() == 32  # batch 64 excluded at TP2
    assert any("pcap" in n and "1.30" in n for n in tp2.notes)


def test_distserve_grid_stays_in_the_engine_operating_range():
    (g13,) = [g for g in load_distserve(DATA / "distserve" / "profiler-a100-80g.vllm.json",
                                        CATALOG) if g.tp == 1]
    assert g13.model == "opt-13b" and g13.shapes["num_prefill_tokens"].max() == 2048
    assert g13.shapes["num_decode_seqs"].max() == 256


# --------------------------------------------------------------------------- envelope


def _records(**cols):
    n = len(next(iter(cols.values())))
    base = {k: np.zeros(n, dtype=np.int64) for k in (
        "num_prefill_tokens", "num_decode_tokens", "num_seqs", "decode_kv_tokens",
        "prefill_kv_tokens")}
    base.update({k: np.asarray(v) for k, v in cols.items()})
    return SimpleNamespace(**base, __len__=lambda: n)


def test_envelope_counts_each_limit_and_steps_outside_any():
    env = Envelope(max_num_tokens=100, max_num_seqs=8, max_decode_context=50,
                   max_decode_kv_tokens=200, max_prefill_kv_tokens=100)
    steps = _records(
        num_prefill_tokens=[50, 150, 0, 0, 10],
        num_decode_tokens=[0, 0, 4, 10, 2],
        num_seqs=[1, 1, 4, 10, 3],
        decode_kv_tokens=[0, 0, 240, 300, 20],
        prefill_kv_tokens=[50, 150, 0, 0, 10],
    )
    counts = envelope_counts(env, steps)
    assert counts["with more tokens than 100"] == 1
    assert counts["with more sequences than 8"] == 1
    assert counts["with a longer mean decode context than 50"] == 1  # 240 / 4 = 60
    assert counts["reading more decode KV tokens than 200"] == 2
    assert counts["with more prefill KV tokens than 100"] == 1
    assert counts["mixed prefill+decode (not measured)"] == 1
    assert counts["outside"] == 4


def _small_envelope_profile(tmp_path: Path) -> Path:
    profile = load_profile(PROFILES / "a100-80gb-sxm_opt-13b_tp1_vllm.yaml")
    env = dataclasses.replace(profile.envelope, max_num_seqs=4)
    return write_profile(dataclasses.replace(profile, name="tiny-envelope", envelope=env),
                         tmp_path)


def test_run_outside_envelope_warns_in_summary_and_console(tmp_path, capsys):
    path = _small_envelope_profile(tmp_path)
    trace = DATA / "distserve" / "ground_truth_opt13b_sharegpt" / "vllm-100-1.csv"
    out_dir = tmp_path / "run"
    code = main(["run", str(VALIDATION), "--out", str(out_dir), "--set",
                 f"cost_model.profile={path}", "--set", f"workload.trace={trace}",
                 "--set", "workload.num_requests=40"])
    assert code == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    (warning,) = [w for w in summary["warnings"] if "envelope" in w]
    assert "outside the envelope of profile tiny-envelope" in warning
    assert "with more sequences than 4" in warning
    assert f"warning: {warning}" in capsys.readouterr().out


# --------------------------------------------------------------------------- matching


def test_profile_for_another_model_is_refused_with_a_hint():
    with pytest.raises(InputError) as err:  # refused on loading, before any run
        load_scenario(VALIDATION, ["model=llama-2-13b"])
    msg = err.value.one_line()
    assert "cost_model.profile" in msg and "model opt-13b (scenario: llama-2-13b)" in msg
    assert "simserve derive-profile" in msg


def test_profile_for_another_tp_or_gpu_is_refused():
    with pytest.raises(InputError, match=r"tp=1 \(scenario: tp=2\)"):
        load_scenario(VALIDATION, ["tp=2"])
    with pytest.raises(InputError, match="GPU a100-80gb-sxm"):
        load_scenario(VALIDATION, ["hardware=h100-80gb-sxm"])


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(InputError, match=r"shipped: .*a100-80gb-sxm_opt-13b_tp1_vllm"):
        run_scenario(load_scenario(VALIDATION, ["cost_model.profile=no-such-profile"]))


def test_linear_profile_is_not_a_step_model():
    with pytest.raises(InputError, match="linear-layer profile"):
        run_scenario(load_scenario(VALIDATION, ["cost_model.profile=a100-80gb-sxm_linear_vidur"]))


def test_derived_profile_runs_and_says_so(tmp_path):
    base = load_profile(PROFILES / "a100-80gb-sxm_llama-2-70b_tp2_splitwise-sim.yaml")
    derived = derive_profile(base, CATALOG.model("llama-2-13b"), 1, name="derived-test")
    path = write_profile(derived, tmp_path)
    sc = load_scenario(VALIDATION, ["model=llama-2-13b", f"cost_model.profile={path}",
                                    "workload.num_requests=20"])
    out = run_scenario(sc)
    assert out.summary["cost_model"]["derived_from"]["model"] == "llama-2-70b"
    assert any("derived" in w for w in out.summary["warnings"])


# --------------------------------------------------------------------------- bad input


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_missing_column_names_file_and_column(tmp_path, capsys):
    bad = _write(tmp_path / "perf.csv",
                 ["model", "hardware", "tensor_parallel", "prompt_size", "batch_size",
                  "token_size", "prompt_time"],
                 [["llama2-70b", "a100-80gb", 2, 512, 1, 128, 196.0]])
    assert main(["calibrate", str(bad), "--format", "splitwise", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(bad) in err and "missing column 'token_time'" in err


def test_non_positive_time_names_line_and_column(tmp_path):
    rows = [_row(i) for i in range(3)]
    rows[1][-1] = 0
    bad = _write(tmp_path / "steps.csv", list(STEP_COLUMNS), rows)
    with pytest.raises(InputError) as err:
        load_steps_csv(bad, CATALOG)
    assert err.value.line == 3 and "'time_ms'" in err.value.message and "> 0" in err.value.message


def _row(i: int) -> list[object]:
    return ["a100-80gb-sxm", "opt-13b", 1, "test", 100 * (i + 1), 1, 5000.0, 100, 0, 0, 0,
            10.0 + i]


def test_too_few_points_is_a_one_line_error(tmp_path, capsys):
    good = _write(tmp_path / "steps.csv", list(STEP_COLUMNS), [_row(i) for i in range(3)])
    assert main(["calibrate", str(good), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "too few points to fit" in err and str(good) in err
    assert not (tmp_path / "p").exists()


def test_unrecognised_file_is_refused(tmp_path):
    bad = _write(tmp_path / "x.csv", ["a", "b"], [[1, 2]])
    with pytest.raises(InputError, match="unrecognised measured-data file"):
        from simserve.calibration.datasets import detect_format

        detect_format(bad)


def test_envelope_report_and_warning_count_the_same_steps():
    from simserve.engine.records import StepRecords

    profile = load_profile(PROFILES / "a100-80gb-sxm_opt-13b_tp1_vllm.yaml")
    model = CalibratedCostModel(profile, CATALOG.gpu("a100-80gb-sxm"), CATALOG.model("opt-13b"),
                                1)
    n = 4
    z = np.zeros(n, dtype=np.int64)
    steps = StepRecords(
        replica=z.astype(np.int32), started_at=z.astype(float), duration_s=z.astype(float),
        num_prefill_tokens=np.array([100, 4096, 0, 0]), num_decode_tokens=np.array([0, 0, 8, 300]),
        prefill_kv_tokens=np.array([100, 4096, 0, 0]),
        decode_kv_tokens=np.array([0, 0, 800, 300 * 100]), num_seqs=np.array([1, 1, 8, 300]),
        kv_blocks_used=z, kv_blocks_total=z + 10, num_preempted=z)
    report = model.envelope_report(steps)
    assert report["num_steps"] == 4 and report["num_steps_outside"] == 2
    assert report["by_limit"]["with more sequences than 256"] == 1
    (warning,) = model.envelope_warnings(steps)
    assert warning.startswith("2 of 4 steps (50.0%) outside the envelope")
