"""The model-free consistency checks of the step data (`simserve/calibration/consistency.py`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from simserve.calibration.consistency import (
    linear_tp_ratios,
    run_consistency_checks,
    splitwise_prefill_check,
)
from simserve.calibration.datasets import (
    SHAPE_FIELDS,
    StepData,
    load_allreduce,
    load_distserve,
    load_splitwise,
    load_vidur_linear,
    prefill_shape,
)
from simserve.calibration.fit import predict_steps
from simserve.calibration.paths import SHIPPED_DATA
from simserve.catalog import load_catalog
from simserve.costmodel.calibrated import COEFFICIENT_DEFAULTS, Arch
from simserve.errors import InputError

CATALOG = load_catalog()
BATCHES = (1, 2, 4, 8, 16)


def _prefills(time_ms=None, tp: int = 2, coefficients=None) -> StepData:
    """b x 512-token prompts and one prompt of the same tokens, priced by the model or given."""
    rows = [prefill_shape(b, 512) for b in BATCHES] + [prefill_shape(1, 512 * b)
                                                       for b in BATCHES[1:]]
    shapes = {f: np.array([r.get(f, 0) for r in rows], dtype=float) for f in SHAPE_FIELDS}
    spec = CATALOG.model("llama-2-70b")
    g = StepData("synthetic", "synthetic", "a100-80gb-sxm", spec.name, tp, "test",
                 Arch.from_model(spec), shapes, np.ones(len(rows)))
    if time_ms is None:
        time_ms = predict_steps(coefficients, g, CATALOG)
    return dataclasses.replace(g, time_ms=np.asarray(time_ms, dtype=float))


@pytest.mark.parametrize("per_seq_ms", [0.0, 0.5])
@pytest.mark.parametrize("tp", [1, 2, 8])
def test_data_from_the_cost_model_itself_passes_the_check(tp, per_seq_ms):
    # The premise of the check: no coefficient set of the model makes a batch of short prompts
    # cost more per token than a smaller batch, or more than one long prompt (beyond the
    # per-prompt overhead, here up to 0.5 ms per prompt on steps of 100s of ms).
    coefficients = {**COEFFICIENT_DEFAULTS, "per_seq_ms": per_seq_ms}
    check = splitwise_prefill_check(_prefills(tp=tp, coefficients=coefficients))
    assert set(check.us_per_token) == set(BATCHES)
    assert set(check.vs_one_prompt) == set(BATCHES[1:])
    assert check.least_max_error < 0.005


def test_inconsistent_rows_give_the_stated_bound():
    # Per-token times 100, 90, 80, 120 us, 96 us at b = 1..16 (a rise of 1.5 over the minimum);
    # single prompts priced so that the batches never cost more than them.
    tokens = [512 * b for b in BATCHES]
    batched = [t * us / 1e3 for t, us in zip(tokens, (100, 90, 80, 120, 96), strict=True)]
    single = [2 * t for t in batched[1:]]
    check = splitwise_prefill_check(_prefills(batched + single))
    assert check.us_per_token == pytest.approx({1: 100, 2: 90, 4: 80, 8: 120, 16: 96})
    assert check.rise == pytest.approx(1.5)
    assert max(check.vs_one_prompt.values()) == pytest.approx(0.5)
    assert check.least_max_error == pytest.approx(0.5 / 2.5)


def test_shipped_splitwise_prefills_break_the_premise_at_tp8_not_at_tp2():
    checks = {g.key: splitwise_prefill_check(g)
              for g in load_splitwise(SHIPPED_DATA["splitwise"], CATALOG)}
    assert checks["h100-80gb-sxm/llama-2-70b/tp2"].least_max_error < 0.02
    for key in ("a100-80gb-sxm/llama-2-70b/tp8", "h100-80gb-sxm/llama-2-70b/tp8"):
        assert checks[key].least_max_error > 0.15, key


def test_shipped_distserve_tp_scaling_is_not_the_linear_layers():
    rep = run_consistency_checks(
        [], load_vidur_linear(SHIPPED_DATA["vidur"]),
        load_distserve(SHIPPED_DATA["distserve"], CATALOG), SHIPPED_DATA["distserve"],
        load_allreduce(SHIPPED_DATA["allreduce"]))
    d = rep.distserve
    assert set(d.ms_per_token) == {1, 2, 4}
    # The formula's GPU time per token grows with TP by far more than the measured GEMMs do,
    # and by more than the measured all-reduce can add.
    for tp in (2, 4):
        low, high = rep.linear_tp[tp]
        assert 0.9 < low <= high < 1.1
        assert d.group_ms_per_token(tp) > 1.2 * d.group_ms_per_token(1)
        assert rep.allreduce_ms_per_token[tp] < d.excess_ms_per_token(tp)


def test_linear_ratios_of_an_ideal_split_are_one():
    vidur = load_vidur_linear(SHIPPED_DATA["vidur"])
    g = next(v for v in vidur if v.gpu == "a100-80gb-sxm")
    tp1 = {int(n): t for n, t, tp in zip(g.num_tokens, g.time_ms, g.tp, strict=True) if tp == 1}
    ideal = np.array([tp1.get(int(n), t) / tp for n, t, tp in
                      zip(g.num_tokens, g.time_ms, g.tp, strict=True)])
    ratios = linear_tp_ratios([dataclasses.replace(g, time_ms=ideal)], g.gpu)
    assert ratios and all(lo == pytest.approx(1) and hi == pytest.approx(1)
                          for lo, hi in ratios.values())


def test_allreduce_interpolation(tmp_path):
    path = tmp_path / "ar.csv"
    path.write_text("gpu,num_workers,size_bytes,time_ms\n"
                    "g,2,1000,0.01\ng,2,100000,0.1\ng,4,1000,0.05\n")
    (table,) = load_allreduce(path)
    assert table.interpolate_ms(2, 1000) == pytest.approx(0.01)
    assert table.interpolate_ms(2, 10000) == pytest.approx(0.01 * 10 ** 0.5)  # log-log middle
    assert table.interpolate_ms(4, 5000) == pytest.approx(0.05)  # one size: flat
    with pytest.raises(InputError, match="8 GPUs"):
        table.interpolate_ms(8, 1000)


@pytest.mark.parametrize(("text", "match"), [
    ("gpu,num_workers,size_bytes\ng,2,1000\n", "missing column 'time_ms'"),
    ("gpu,num_workers,size_bytes,time_ms\ng,2,1000,0\n", "'time_ms': must be > 0"),
    ("gpu,num_workers,size_bytes,time_ms\ng,2,big,0.1\n", "'size_bytes': expected a number"),
])
def test_allreduce_bad_input_names_file_and_column(tmp_path, text, match):
    path = tmp_path / "ar.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        load_allreduce(path)
    assert "ar.csv" in str(err.value)
