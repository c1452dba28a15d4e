"""Tests of the GPU/model catalog: packaged data, derived sizes, lookups and user files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from simserve.catalog import Catalog, GpuSpec, ModelSpec, load_catalog
from simserve.errors import InputError

# Published parameter counts (Hugging Face model cards / safetensors totals, which include
# norms and biases that `num_params` leaves out).
PUBLISHED_PARAMS = {
    "llama-2-7b": 6.74e9,
    "llama-2-13b": 13.0e9,
    "llama-2-70b": 69.0e9,
    "llama-3-8b": 8.03e9,
    "llama-3-70b": 70.6e9,
    "llama-3.1-8b": 8.03e9,
    "llama-3.1-70b": 70.6e9,
    "mistral-7b": 7.24e9,
    "qwen2-7b": 7.62e9,
    "opt-13b": 12.9e9,
    "opt-66b": 66e9,  # OPT paper (Zhang et al. 2022), Table 1
    "bloom-176b": 176e9,
    "llama-3.2-1b": 1.24e9,
    "tinyllama-1.1b": 1.1e9,
    "llama-3.1-405b": 405e9,
    "llama-3.3-70b": 70.6e9,
    "llama-3.1-8b-fp8": 8.03e9,
    "llama-3.1-70b-fp8": 70.6e9,
    "llama-3.1-405b-fp8": 405e9,
    # Qwen3 technical report (Yang et al. 2025), Tables 1-2: total parameters
    "qwen3-8b": 8.2e9,
    "qwen3-32b": 32.8e9,
    "qwen3-32b-fp8": 32.8e9,
    "qwen3-30b-a3b": 30.5e9,
    "qwen3-30b-a3b-fp8": 30.5e9,
    "qwen3-235b-a22b": 235e9,
    "qwen3-235b-a22b-fp8": 235e9,
    # Mixtral of Experts (Jiang et al. 2024): 47B (8x7B) and the 8x22B model card's 141B
    "mixtral-8x7b": 46.7e9,
    "mixtral-8x22b": 141e9,
}
# Active parameters per token (same sources): Qwen3-30B-A3B 3.3B, Qwen3-235B-A22B 22B, Mixtral
# 12.9B / 39B, counted with the embedding and LM head (which `linear_flops_per_token` leaves out).
PUBLISHED_ACTIVE = {"qwen3-30b-a3b": 3.3e9, "qwen3-235b-a22b": 22e9, "mixtral-8x7b": 12.9e9,
                    "mixtral-8x22b": 39e9}

EXPECTED_GPUS = ("a100-80gb-sxm", "h100-80gb-sxm", "h200", "l40s", "mi300x", "b200", "gb200",
                 "rtx-pro-6000")

MODEL_FIELDS = """\
    hf_id: acme/test-model
    num_layers: 4
    hidden_size: 256
    num_heads: 8
    num_kv_heads: 2
    head_dim: 32
    intermediate_size: 512
    vocab_size: 1000
    max_model_len: 2048
    mlp: gated
    tied_embeddings: false
"""

GPU_FIELDS = """\
    memory_gib: 96
    mem_bandwidth_gbps: 4000
    bf16_tflops: 1000
    fp8_tflops: 2000
    interconnect: nvlink4
    interconnect_gbps: 450
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my_catalog.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- packaged data


def test_every_packaged_entry_loads() -> None:
    catalog = load_catalog()
    assert set(catalog.model_names()) == set(PUBLISHED_PARAMS)
    assert set(catalog.gpu_names()) == set(EXPECTED_GPUS)
    for name in catalog.model_names():
        model = catalog.model(name)
        assert isinstance(model, ModelSpec)
        assert model.name == name
        if model.dtype_bytes == 2:
            assert model.weight_bytes == model.num_params * model.dtype_bytes
    for name in catalog.gpu_names():
        assert isinstance(catalog.gpu(name), GpuSpec)


@pytest.mark.parametrize(("name", "published"), sorted(PUBLISHED_PARAMS.items()))
def test_param_count_within_3_percent_of_published(name: str, published: float) -> None:
    model = load_catalog().model(name)
    assert model.num_params == pytest.approx(published, rel=0.03)


@pytest.mark.parametrize(("name", "published"), sorted(PUBLISHED_ACTIVE.items()))
def test_moe_active_params_within_5_percent_of_published(name: str, published: float) -> None:
    model = load_catalog().model(name)
    active = model.linear_flops_per_token / 2 + 2 * model.embedding_params
    assert active == pytest.approx(published, rel=0.05)
    assert model.num_params > 3 * active  # all experts are held, few are used per token


def test_fp8_checkpoints_keep_embeddings_in_bf16_and_kv_in_bf16() -> None:
    catalog = load_catalog()
    for bf16, fp8 in (("llama-3.1-70b", "llama-3.1-70b-fp8"), ("qwen3-32b", "qwen3-32b-fp8"),
                      ("qwen3-235b-a22b", "qwen3-235b-a22b-fp8")):
        dense, quant = catalog.model(bf16), catalog.model(fp8)
        assert quant.num_params == dense.num_params
        embed = 2 * dense.embedding_params + dense.num_layers * dense.router_params_per_layer
        assert quant.weight_bytes == (dense.num_params - embed) + 2 * embed
        assert quant.kv_bytes_per_token == dense.kv_bytes_per_token
    assert catalog.model("qwen3-32b-fp8").weight_quant == "fp8_block"
    assert catalog.model("llama-3.1-70b-fp8").weight_quant == "fp8"


def test_moe_sizes_from_hf_config() -> None:
    model = load_catalog().model("qwen3-30b-a3b")
    expert = 3 * 2048 * 768
    assert model.mlp_params_per_layer == 128 * expert + 2048 * 128
    assert model.active_mlp_params_per_layer == 8 * expert + 2048 * 128
    # GQA: 4 KV heads of 128; at TP8 each GPU keeps one head (replicated), so 8 in the replica
    assert model.kv_bytes_per_token == 2 * 48 * 4 * 128 * 2
    assert model.kv_bytes_per_token_at(8) == 2 * model.kv_bytes_per_token
    assert model.kv_bytes_per_token_at(4) == model.kv_bytes_per_token


def test_moe_fields_validated() -> None:
    with pytest.raises(InputError, match="num_experts: a mixture of experts sets"):
        ModelSpec("m", "a/b", 2, 64, 4, 4, 16, 128, 100, 512, "gated", False, num_experts=8)
    with pytest.raises(InputError, match=r"num_experts_per_tok: .* exceeds"):
        ModelSpec("m", "a/b", 2, 64, 4, 4, 16, 128, 100, 512, "gated", False, num_experts=2,
                  num_experts_per_tok=4, moe_intermediate_size=32)
    with pytest.raises(InputError, match="dtype_bytes: fp8_block weights take dtype_bytes 1"):
        ModelSpec("m", "a/b", 2, 64, 4, 4, 16, 128, 100, 512, "gated", False,
                  weight_quant="fp8_block")


def test_llama_3_8b_kv_bytes_per_token() -> None:
    assert load_catalog().model("llama-3-8b").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131072


def test_llama_2_7b_derived_sizes() -> None:
    model = load_catalog().model("llama-2-7b")
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008
    assert model.linear_flops_per_token == 2 * 32 * per_layer
    assert model.lm_head_flops_per_token == 2 * 4096 * 32000
    assert model.num_params == 2 * 32000 * 4096 + 32 * per_layer
    assert model.weight_bytes == 2 * model.num_params


def test_tied_and_plain_mlp_counts() -> None:
    catalog = load_catalog()
    tied = catalog.model("llama-3.2-1b")
    assert tied.tied_embeddings
    per_layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192
    assert tied.num_params == 128256 * 2048 + 16 * per_layer
    opt = catalog.model("opt-13b")
    assert opt.mlp == "plain"
    assert opt.mlp_params_per_layer == 2 * 5120 * 20480


def test_gpu_values() -> None:
    h100 = load_catalog().gpu("h100-80gb-sxm")
    assert (h100.memory_gib, h100.mem_bandwidth_gbps) == (80, 3350)
    assert (h100.bf16_tflops, h100.fp8_tflops) == (989, 1979)
    assert (h100.interconnect, h100.interconnect_gbps) == ("nvlink4", 450)
    assert h100.memory_bytes == 80 * 2**30
    assert load_catalog().model("llama-3.1-8b").max_model_len == 131072


def test_l2_cache_of_every_gpu_with_kernel_tables() -> None:
    # Vendors' cache "MB" are MiB: the A100's 40 MB L2 is 41,943,040 bytes.
    from simserve.costmodel.kernel_tables import kernel_gpus

    catalog = load_catalog()
    assert catalog.gpu("a100-80gb-sxm").l2_bytes == 40 * 2**20
    expected = {"a100-80gb-sxm": 40, "h100-80gb-sxm": 50, "h200": 50, "l40s": 96, "b200": 126,
                "gb200": 126, "rtx-pro-6000": 128}
    assert {g: catalog.gpu(g).l2_cache_mib for g in kernel_gpus()} == expected
    for gpu in kernel_gpus():
        assert catalog.gpu(gpu).l2_source
    assert catalog.gpu("mi300x").l2_bytes is None  # no L2 shared by the whole GPU


def test_specs_are_frozen_and_catalog_is_cached() -> None:
    catalog = load_catalog()
    assert load_catalog() is catalog
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.model("llama-3-8b").num_layers = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        catalog.models["x"] = catalog.model("llama-3-8b")  # type: ignore[index]


# --------------------------------------------------------------------------- lookups


def test_lookup_is_case_insensitive() -> None:
    catalog = load_catalog()
    assert catalog.model("Llama-3-8B") is catalog.model("llama-3-8b")
    assert catalog.gpu("H100-80GB-SXM") is catalog.gpu("h100-80gb-sxm")
    assert catalog.gpu(" MI300X ").name == "mi300x"


def test_unknown_model_lists_known_names() -> None:
    catalog = load_catalog()
    with pytest.raises(InputError) as info:
        catalog.model("gpt-5")
    assert info.value.field == "model"
    assert "unknown model 'gpt-5'; known: " in str(info.value)
    for name in catalog.model_names():
        assert name in str(info.value)


def test_unknown_gpu_is_a_hardware_error() -> None:
    with pytest.raises(InputError) as info:
        load_catalog().gpu("tpu-v5")
    assert info.value.field == "hardware"
    assert "unknown GPU 'tpu-v5'; known: a100-80gb-sxm, b200, gb200, h100-80gb-sxm" in str(
        info.value)


def test_direct_construction_validates() -> None:
    with pytest.raises(InputError, match="num_kv_heads: num_heads \\(32\\) must be divisible"):
        ModelSpec("m", "a/b", 2, 64, 32, 5, 2, 128, 100, 512, "gated", False)
    with pytest.raises(InputError, match="memory_gib: must be a finite number > 0"):
        GpuSpec("g", 0, 1, 1, 1, "pcie4", 1)
    assert Catalog().model_names() == ()


# --------------------------------------------------------------------------- user files


def test_user_file_adds_model_and_overrides_gpu(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"models:\n  my-model:\n{MODEL_FIELDS}\ngpus:\n  H100-80GB-SXM:\n{GPU_FIELDS}",
    )
    catalog = load_catalog(path)
    model = catalog.model("MY-MODEL")
    assert model.num_kv_heads == 2
    assert model.dtype_bytes == 2
    assert model.kv_bytes_per_token == 2 * 4 * 2 * 32 * 2
    assert catalog.gpu("h100-80gb-sxm").memory_gib == 96
    assert "my-model" in catalog.model_names()
    assert catalog.gpu_names().count("H100-80GB-SXM") == 1
    assert catalog.model("llama-3-8b") is load_catalog().model("llama-3-8b")
    # The packaged catalog is untouched.
    assert load_catalog().gpu("h100-80gb-sxm").memory_gib == 80
    assert "my-model" not in load_catalog().model_names()
    # A str path works as well as a Path, and an empty file adds nothing.
    assert load_catalog(str(path)).model("my-model") == model
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_catalog(empty).model_names() == load_catalog().model_names()


def _model_file(fields: str) -> str:
    return f"models:\n  bad-model:\n{fields}"


def _replace(old: str, new: str) -> str:
    assert old in MODEL_FIELDS
    return _model_file(MODEL_FIELDS.replace(old, new))


BAD_FILES = {
    "unknown_field": (_model_file(MODEL_FIELDS + "    rope_theta: 10000\n"), "rope_theta"),
    "name_field": (_model_file(MODEL_FIELDS + "    name: other\n"), "name"),
    "missing_field": (_replace("    vocab_size: 1000\n", ""), "vocab_size"),
    "wrong_type_int": (_replace("num_layers: 4", "num_layers: four"), "num_layers"),
    "float_for_int": (_replace("hidden_size: 256", "hidden_size: 256.5"), "hidden_size"),
    "bool_for_int": (_replace("head_dim: 32", "head_dim: true"), "head_dim"),
    "wrong_type_bool": (
        _replace("tied_embeddings: false", "tied_embeddings: 0"),
        "tied_embeddings",
    ),
    "bad_mlp": (_replace("mlp: gated", "mlp: swiglu"), "mlp"),
    "bad_dtype": (_model_file(MODEL_FIELDS + "    dtype_bytes: 3\n"), "dtype_bytes"),
    "zero": (_replace("max_model_len: 2048", "max_model_len: 0"), "max_model_len"),
    "negative": (
        _replace("intermediate_size: 512", "intermediate_size: -512"),
        "intermediate_size",
    ),
    "heads_not_divisible": (_replace("num_kv_heads: 2", "num_kv_heads: 3"), "num_kv_heads"),
    "gpu_wrong_type": (
        "gpus:\n  bad-gpu:\n" + GPU_FIELDS.replace("bf16_tflops: 1000", "bf16_tflops: fast"),
        "bf16_tflops",
    ),
    "gpu_non_positive": (
        "gpus:\n  bad-gpu:\n" + GPU_FIELDS.replace("memory_gib: 96", "memory_gib: -1"),
        "memory_gib",
    ),
    "gpu_bad_l2": (
        "gpus:\n  bad-gpu:\n" + GPU_FIELDS + "    l2_cache_mib: 0\n",
        "l2_cache_mib",
    ),
    "gpu_missing": (
        "gpus:\n  bad-gpu:\n" + GPU_FIELDS.replace("    interconnect: nvlink4\n", ""),
        "interconnect",
    ),
}


@pytest.mark.parametrize(("text", "field"), BAD_FILES.values(), ids=list(BAD_FILES))
def test_bad_user_file_names_file_entry_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_catalog(path)
    entry = "gpus.bad-gpu" if text.startswith("gpus") else "models.bad-model"
    assert info.value.source == str(path)
    assert info.value.field == f"{entry}.{field}"
    assert str(path) in str(info.value)
    assert f"{entry}.{field}" in str(info.value)
    assert info.value.line is not None


def test_bad_field_error_points_at_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, _replace("num_kv_heads: 2", "num_kv_heads: 3"))
    with pytest.raises(InputError) as info:
        load_catalog(path)
    assert info.value.line == 7
    assert str(info.value).startswith(f"{path}:7: models.bad-model.num_kv_heads: ")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("models: [a, b]\n", "models"),
        ("hardware:\n  x: 1\n", "hardware"),
        ("models:\n  bad-model: 7\n", "models.bad-model"),
        (f"models:\n  dup:\n{MODEL_FIELDS}  DUP:\n{MODEL_FIELDS}", "models.DUP"),
    ],
    ids=["section_not_mapping", "unknown_section", "entry_not_mapping", "duplicate_entry"],
)
def test_bad_file_structure(tmp_path: Path, text: str, field: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_catalog(path)
    assert info.value.field == field
    assert str(path) in str(info.value)


def test_invalid_yaml_and_non_mapping_name_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:\n  x: [unclosed\n")
    with pytest.raises(InputError, match="invalid YAML") as info:
        load_catalog(path)
    assert info.value.source == str(path)
    path = _write(tmp_path, "- just\n- a list\n")
    with pytest.raises(InputError, match="must be a mapping") as info:
        load_catalog(path)
    assert info.value.source == str(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(InputError, match="not found") as info:
        load_catalog(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
