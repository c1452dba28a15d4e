"""calibration/profile_gpu.py on the CPU with a tiny architecture, then `simserve calibrate`."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from simserve.cli import main
from simserve.costmodel.calibrated import load_profile

pytest.importorskip("torch", reason="torch is an optional extra (profile_gpu.py needs it)")

ROOT = Path(__file__).resolve().parent.parent
TINY = """
gpus:
  cpu-test:
    memory_gib: 16
    mem_bandwidth_gbps: 20
    bf16_tflops: 0.5
    fp8_tflops: 0.5
    interconnect: none
    interconnect_gbps: 1
models:
  tiny-gqa:
    hf_id: none/tiny
    num_layers: 2
    hidden_size: 64
    num_heads: 4
    num_kv_heads: 2
    head_dim: 16
    intermediate_size: 128
    vocab_size: 256
    max_model_len: 1024
    mlp: gated
    tied_embeddings: false
"""


def _profiler(monkeypatch):
    spec = importlib.util.spec_from_file_location("profile_gpu", ROOT / "calibration" /
                                                  "profile_gpu.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "profile_gpu", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_profiler_csv_is_calibrated_end_to_end(tmp_path, monkeypatch):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(TINY)
    steps = tmp_path / "steps.csv"
    code = _profiler(monkeypatch).main([
        "--model", "tiny-gqa", "--gpu", "cpu-test", "--catalog", str(catalog), "--device",
        "cpu", "--dtype", "fp32", "--prefill-tokens", "8,32,128", "--contexts", "0,64",
        "--prefill-batches", "1,2", "--batches", "1,4,16", "--decode-contexts", "32,128",
        "--warmup", "1", "--repeats", "2", "--threads", "1", "--out", str(steps), "--quiet",
    ])
    assert code == 0
    lines = steps.read_text().splitlines()
    assert lines[0].startswith("gpu,model,tp,engine,num_prefill_tokens")
    assert len(lines) == 1 + 12 + 6 + 3  # prefill grid, decode grid, mixed steps
    assert main(["calibrate", str(steps), "--catalog", str(catalog), "--out",
                 str(tmp_path / "profiles")]) == 0
    profile = load_profile(tmp_path / "profiles" / "cpu-test_tiny-gqa_tp1_torch-eager.yaml")
    assert all(math.isfinite(v) for v in profile.coefficients.values())
    assert set(profile.envelope.regimes) == {"prefill", "decode", "mixed"}
