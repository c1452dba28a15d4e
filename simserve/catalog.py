"""GPU specs and model architectures: frozen, validated records loaded from packaged YAML.

The cost model and the KV-cache manager need a GPU's peak numbers (memory, bandwidth, tensor
FLOP/s, interconnect) and a model's shape (layers, hidden, heads, KV heads, MLP, vocabulary).
`load_catalog()` reads the packaged `simserve/data/{gpus,models}.yaml` (values from vendor
datasheets and Hugging Face `config.json` files, cited there) and, optionally, a user YAML file
whose `gpus:` and `models:` mappings add entries or replace them whole. Lookups are
case-insensitive; every bad value raises `InputError` naming the file, the entry and the field.

Parameter counts (`ModelSpec.num_params`) cover the weight matrices only: the token embedding,
per-layer attention (q, k, v, o) and MLP matrices (for a mixture of experts: every expert and the
router), and the LM head unless it is tied. Norms, biases and learned position embeddings are
ignored (under 0.2% of every packaged model).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import yaml

from simserve.errors import InputError
from simserve.formatting import fmt_number
from simserve.resources import catalog_file
from simserve.yaml_lines import parse_yaml, read_yaml_text

__all__ = [
    "MAX_SPEC_NUMBER",
    "Catalog",
    "GpuSpec",
    "MlpKind",
    "ModelSpec",
    "WeightQuant",
    "check_number",
    "check_power",
    "check_text",
    "load_catalog",
]

MlpKind = Literal["gated", "plain"]
WeightQuant = Literal["none", "fp8", "fp8_block"]
_MLP_KINDS: tuple[str, ...] = ("gated", "plain")
_WEIGHT_QUANTS: tuple[str, ...] = ("none", "fp8", "fp8_block")
_DTYPE_BYTES: tuple[int, ...] = (1, 2, 4)
_PACKAGED_FILES: tuple[str, ...] = ("gpus.yaml", "models.yaml")
_Spec = TypeVar("_Spec", "GpuSpec", "ModelSpec")
# NOTE: the largest figure a hardware or price field takes. A million is three orders of
# magnitude above every GPU's (B200: 180 GiB, 8,000 GB/s, 2,250 TFLOPS, 1,000 W), and keeps the
# products simserve forms finite and within int64 (a memory of 1e300 GiB sized the KV cache as
# NaN blocks; a price of 1e308 wrote `Infinity` into summary.json).
MAX_SPEC_NUMBER = 1e6


# --------------------------------------------------------------------------- value checks


def _type_name(value: object) -> str:
    return type(value).__name__


def check_text(value: object, field_name: str) -> str:
    """A non-empty string, or a one-line InputError naming `field_name`."""
    if not isinstance(value, str):
        raise InputError(f"must be a string, got {_type_name(value)} {value!r}", field=field_name)
    if not value.strip():
        raise InputError("must be a non-empty string", field=field_name)
    return value


def _check_pos_int(value: object, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"must be an integer, got {_type_name(value)} {value!r}", field=field_name)
    if value <= 0:
        raise InputError(f"must be > 0, got {value}", field=field_name)
    return value


def check_number(value: object, field_name: str, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (>= 0 with `allow_zero`) and at most `MAX_SPEC_NUMBER`, as a float,
    or a one-line InputError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"must be a number, got {_type_name(value)} {value!r}", field=field_name)
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"must be a finite number {bound}, got {value}", field=field_name)
    if value > MAX_SPEC_NUMBER:
        raise InputError(f"must be at most {fmt_number(MAX_SPEC_NUMBER)}, got {fmt_number(value)}",
                         field=field_name)
    return float(value)


def check_power(idle_w: float | None, tdp_w: float | None, field_name: str) -> None:
    """Refuse an idle power above the maximum (TDP): a one-line InputError on `field_name`."""
    if idle_w is not None and tdp_w is not None and idle_w > tdp_w:
        raise InputError(f"idle power {fmt_number(idle_w, 'W')} exceeds the TDP "
                         f"{fmt_number(tdp_w, 'W')}", field=field_name)


def _check_bool(value: object, field_name: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(
            f"must be true or false, got {_type_name(value)} {value!r}", field=field_name
        )
    return value


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator's peak numbers, read by the roofline cost model and by KV-cache sizing.

    `memory_gib` is device memory in GiB; `mem_bandwidth_gbps` is peak HBM bandwidth in GB/s;
    `bf16_tflops` and `fp8_tflops` are dense (not sparse) tensor-core peaks in TFLOP/s;
    `interconnect` names the GPU-to-GPU link (e.g. "nvlink4", "pcie4") and `interconnect_gbps`
    is its per-GPU unidirectional bandwidth in GB/s.

    Optional cost and power figures (`simserve.pricing`): `price_usd_per_hour` is an on-demand
    rental price of one GPU, read from `price_source` on `price_date`; `idle_w` is the board
    power of an idle GPU holding a CUDA context and `tdp_w` its maximum board power (datasheet
    TDP), both cited in `power_source`.

    Host side (KV swap and CPU offload, `simserve.engine.swap`): `host_link` names the link in
    the links catalog between the GPU and host memory (its PCIe generation), and
    `host_memory_gib` is the host memory per GPU of the reference server (system memory over
    its GPUs), both cited in `host_source`.

    `l2_cache_mib` is the on-chip L2 cache shared by all the GPU's SMs, in MiB (vendors' "MB" of
    cache are binary), cited in `l2_source`: the measured kernel tables use it to tell calls a
    repeated benchmark served from L2 from those that read device memory
    (`simserve.costmodel.l2_residency`).
    """

    name: str
    memory_gib: float
    mem_bandwidth_gbps: float
    bf16_tflops: float
    fp8_tflops: float
    interconnect: str
    interconnect_gbps: float
    price_usd_per_hour: float | None = None
    price_source: str | None = None
    price_date: str | None = None
    idle_w: float | None = None
    tdp_w: float | None = None
    power_source: str | None = None
    host_link: str | None = None
    host_memory_gib: float | None = None
    host_source: str | None = None
    l2_cache_mib: float | None = None
    l2_source: str | None = None

    def __post_init__(self) -> None:
        check_text(self.name, "name")
        check_text(self.interconnect, "interconnect")
        for name in (
            "memory_gib",
            "mem_bandwidth_gbps",
            "bf16_tflops",
            "fp8_tflops",
            "interconnect_gbps",
        ):
            object.__setattr__(self, name, check_number(getattr(self, name), name))
        if isinstance(self.price_date, datetime.date):  # YAML reads 2026-01-31 as a date
            object.__setattr__(self, "price_date", self.price_date.isoformat())
        for name in ("price_source", "price_date", "power_source", "host_link", "host_source",
                     "l2_source"):
            if getattr(self, name) is not None:
                check_text(getattr(self, name), name)
        for name, allow_zero in (("price_usd_per_hour", False), ("idle_w", True),
                                 ("tdp_w", False), ("host_memory_gib", False),
                                 ("l2_cache_mib", False)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_number(value, name, allow_zero=allow_zero))
        check_power(self.idle_w, self.tdp_w, "idle_w")

    @property
    def memory_bytes(self) -> float:
        """Device memory in bytes (`memory_gib` x 2^30), the budget KV-cache sizing starts from."""
        return self.memory_gib * 2**30

    @property
    def l2_bytes(self) -> float | None:
        """The L2 cache in bytes (`l2_cache_mib` x 2^20), None where the catalog gives none."""
        return None if self.l2_cache_mib is None else self.l2_cache_mib * 2**20


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape, from which weight, KV-cache and FLOP sizes derive.

    `mlp` is "gated" (SwiGLU: gate, up and down matrices; Llama, Mistral, Qwen2) or "plain"
    (up and down matrices; OPT, BLOOM). `dtype_bytes` is the bytes per weight of the decoder
    layers; `kv_dtype_bytes` the bytes per KV-cache element (unset: `dtype_bytes`).
    `weight_quant` says how 1-byte weights are scaled ("fp8": per tensor or channel; "fp8_block":
    128 x 128 blocks, as Qwen3's and DeepSeek's FP8 checkpoints); FP8 checkpoints keep the
    embedding, the LM head and a MoE router in bf16. A mixture of experts sets `num_experts`,
    `num_experts_per_tok` and `moe_intermediate_size` (every decoder layer's MLP is the MoE; the
    dense `intermediate_size` is then unused).
    """

    name: str
    hf_id: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    mlp: MlpKind
    tied_embeddings: bool
    dtype_bytes: int = 2
    kv_dtype_bytes: int | None = None
    weight_quant: WeightQuant = "none"
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0

    def __post_init__(self) -> None:
        check_text(self.name, "name")
        check_text(self.hf_id, "hf_id")
        for name in (
            "num_layers",
            "hidden_size",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
            "max_model_len",
        ):
            _check_pos_int(getattr(self, name), name)
        if self.mlp not in _MLP_KINDS:
            raise InputError(
                f"must be one of {', '.join(_MLP_KINDS)}, got {self.mlp!r}", field="mlp"
            )
        _check_bool(self.tied_embeddings, "tied_embeddings")
        if isinstance(self.dtype_bytes, bool) or self.dtype_bytes not in _DTYPE_BYTES:
            raise InputError(
                f"must be one of {', '.join(map(str, _DTYPE_BYTES))}, got {self.dtype_bytes!r}",
                field="dtype_bytes",
            )
        if self.num_heads % self.num_kv_heads:
            raise InputError(
                f"num_heads ({self.num_heads}) must be divisible by num_kv_heads "
                f"({self.num_kv_heads})",
                field="num_kv_heads",
            )
        kv_bytes = self.kv_dtype_bytes
        if kv_bytes is not None and (isinstance(kv_bytes, bool) or kv_bytes not in _DTYPE_BYTES):
            raise InputError(
                f"must be one of {', '.join(map(str, _DTYPE_BYTES))}, got {kv_bytes!r}",
                field="kv_dtype_bytes",
            )
        if self.weight_quant not in _WEIGHT_QUANTS:
            raise InputError(f"must be one of {', '.join(_WEIGHT_QUANTS)}, got "
                             f"{self.weight_quant!r}", field="weight_quant")
        if self.weight_quant != "none" and self.dtype_bytes != 1:
            raise InputError(f"{self.weight_quant} weights take dtype_bytes 1, got "
                             f"{self.dtype_bytes}", field="dtype_bytes")
        moe = (self.num_experts, self.num_experts_per_tok, self.moe_intermediate_size)
        for name, value in zip(("num_experts", "num_experts_per_tok", "moe_intermediate_size"),
                               moe, strict=True):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"must be an integer >= 0, got {value!r}", field=name)
        if any(moe) and not all(moe):
            raise InputError("a mixture of experts sets num_experts, num_experts_per_tok and "
                             "moe_intermediate_size (all > 0)", field="num_experts")
        if self.num_experts_per_tok > self.num_experts:
            raise InputError(f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds "
                             f"num_experts ({self.num_experts})", field="num_experts_per_tok")

    @property
    def is_moe(self) -> bool:
        """Whether the MLP of every layer is a mixture of experts."""
        return self.num_experts > 0

    @property
    def kv_bytes(self) -> int:
        """Bytes per KV-cache element."""
        return self.kv_dtype_bytes if self.kv_dtype_bytes is not None else self.dtype_bytes

    @property
    def attention_params_per_layer(self) -> int:
        """Weights of one layer's q, k, v and o projections (GQA: k and v are narrower)."""
        q_width = self.num_heads * self.head_dim
        kv_width = self.num_kv_heads * self.head_dim
        return 2 * self.hidden_size * q_width + 2 * self.hidden_size * kv_width

    @property
    def _mlp_matrices(self) -> int:
        return 3 if self.mlp == "gated" else 2

    @property
    def expert_params(self) -> int:
        """Weights of one expert's MLP (0 for a dense model)."""
        return self._mlp_matrices * self.hidden_size * self.moe_intermediate_size

    @property
    def router_params_per_layer(self) -> int:
        """Weights of one layer's MoE router (hidden x experts; 0 for a dense model)."""
        return self.hidden_size * self.num_experts

    @property
    def mlp_params_per_layer(self) -> int:
        """Weights of one layer's MLP: 3 matrices when gated (SwiGLU), 2 when plain; for a
        mixture of experts, every expert plus the router."""
        if self.is_moe:
            return self.num_experts * self.expert_params + self.router_params_per_layer
        return self._mlp_matrices * self.hidden_size * self.intermediate_size

    @property
    def active_mlp_params_per_layer(self) -> int:
        """Weights one token multiplies in one layer's MLP (its top-k experts and the router)."""
        if self.is_moe:
            return self.num_experts_per_tok * self.expert_params + self.router_params_per_layer
        return self.mlp_params_per_layer

    @property
    def embedding_params(self) -> int:
        """Weights of the token embedding (vocab x hidden); the LM head has as many unless tied."""
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """Total weight count: embedding, attention and MLP matrices, LM head unless tied."""
        per_layer = self.attention_params_per_layer + self.mlp_params_per_layer
        lm_head = 0 if self.tied_embeddings else self.embedding_params
        return self.embedding_params + self.num_layers * per_layer + lm_head

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights, before any tensor-parallel split: `num_params` x `dtype_bytes`,
        except that quantized (1-byte) checkpoints keep the embedding, LM head and router in
        bf16 (NOTE: their configs' `modules_to_not_convert`, e.g. Qwen3-30B-A3B-FP8)."""
        high = self.embedding_params + self.num_layers * self.router_params_per_layer
        if not self.tied_embeddings:
            high += self.embedding_params
        high_bytes = max(self.dtype_bytes, 2)
        return (self.num_params - high) * self.dtype_bytes + high * high_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies across all layers, before a tensor-parallel split."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_bytes

    def kv_bytes_per_token_at(self, tp: int) -> int:
        """KV-cache bytes of one token over the `tp` GPUs of a replica. NOTE: vLLM replicates
        KV heads when tp exceeds them (each GPU keeps at least one), so the replica holds
        max(num_kv_heads, tp) heads' worth."""
        return 2 * self.num_layers * max(self.num_kv_heads, tp) * self.head_dim * self.kv_bytes

    @property
    def linear_flops_per_token(self) -> int:
        """FLOPs per token of all layers' attention and MLP matrices (2 per weight), no LM head;
        a mixture of experts counts the top-k experts a token goes through."""
        per_layer = self.attention_params_per_layer + self.active_mlp_params_per_layer
        return 2 * self.num_layers * per_layer

    @property
    def lm_head_flops_per_token(self) -> int:
        """FLOPs per token of the LM head projection (2 x hidden x vocab), tied or not."""
        return 2 * self.hidden_size * self.vocab_size


# --------------------------------------------------------------------------- catalog


def _key(name: str) -> str:
    return name.strip().casefold()


class Catalog:
    """Read-only, case-insensitive lookup of GPU and model specs by name.

    Built from sequences of specs; a later spec replaces an earlier one of the same name
    (compared case-insensitively), which is how a user file overrides packaged entries.
    """

    __slots__ = ("_gpus", "_models")

    def __init__(self, gpus: Iterable[GpuSpec] = (), models: Iterable[ModelSpec] = ()) -> None:
        gpu_index: dict[str, GpuSpec] = {}
        for gpu in gpus:
            gpu_index[_key(gpu.name)] = gpu
        model_index: dict[str, ModelSpec] = {}
        for model in models:
            model_index[_key(model.name)] = model
        self._gpus: Mapping[str, GpuSpec] = MappingProxyType(gpu_index)
        self._models: Mapping[str, ModelSpec] = MappingProxyType(model_index)

    @property
    def gpus(self) -> Mapping[str, GpuSpec]:
        """All GPU specs keyed by case-folded name (read-only)."""
        return self._gpus

    @property
    def models(self) -> Mapping[str, ModelSpec]:
        """All model specs keyed by case-folded name (read-only)."""
        return self._models

    def gpu(self, name: str) -> GpuSpec:
        """The GPU called `name` (any case); an unknown name is an InputError on `hardware`."""
        return _lookup(self._gpus, name, "GPU", "hardware", self.gpu_names())

    def model(self, name: str) -> ModelSpec:
        """The model called `name` (any case); an unknown name is an InputError on `model`."""
        return _lookup(self._models, name, "model", "model", self.model_names())

    def gpu_names(self) -> tuple[str, ...]:
        """Names of all GPUs, sorted, for listings and error messages."""
        return tuple(sorted(gpu.name for gpu in self._gpus.values()))

    def model_names(self) -> tuple[str, ...]:
        """Names of all models, sorted, for listings and error messages."""
        return tuple(sorted(model.name for model in self._models.values()))

    def __repr__(self) -> str:
        return f"Catalog(gpus={list(self.gpu_names())}, models={list(self.model_names())})"


def _lookup(
    index: Mapping[str, _Spec], name: object, what: str, field_name: str, known: tuple[str, ...]
) -> _Spec:
    spec = index.get(_key(name)) if isinstance(name, str) else None
    if spec is None:
        raise InputError(f"unknown {what} {name!r}; known: {', '.join(known)}", field=field_name)
    return spec


# --------------------------------------------------------------------------- YAML loading

_SECTIONS: dict[str, type[GpuSpec] | type[ModelSpec]] = {"gpus": GpuSpec, "models": ModelSpec}


def _key_lines(node: yaml.Node | None, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key down to depth 3 (section, entry, field)."""
    lines: dict[tuple[str, ...], int] = {}
    if not isinstance(node, yaml.MappingNode) or len(path) >= 3:
        return lines
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            key_path = (*path, str(key_node.value))
            lines[key_path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key_path))
    return lines


def _read_yaml(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    data, node = parse_yaml(text, source)
    return data, _key_lines(node)


def _build_spec(
    cls: type[GpuSpec] | type[ModelSpec],
    section: str,
    name: str,
    body: Mapping[Any, Any],
    source: str,
    lines: dict[tuple[str, ...], int],
) -> GpuSpec | ModelSpec:
    where = f"{section}.{name}"
    entry_line = lines.get((section, name))
    field_defs = [f for f in dataclasses.fields(cls) if f.name != "name"]
    allowed = [f.name for f in field_defs]
    for key in body:
        if key not in allowed:
            hint = " (an entry's name is its key)" if key == "name" else ""
            raise InputError(
                f"unknown field{hint}; known fields: {', '.join(allowed)}",
                field=f"{where}.{key}",
                source=source,
                line=lines.get((section, name, str(key)), entry_line),
            )
    missing = [
        f.name
        for f in field_defs
        if f.name not in body
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        also = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise InputError(
            f"required field is missing{also}",
            field=f"{where}.{missing[0]}",
            source=source,
            line=entry_line,
        )
    try:
        return cls(name=name, **body)
    except InputError as exc:
        raise InputError(
            exc.message,
            field=f"{where}.{exc.field}" if exc.field else where,
            source=source,
            line=lines.get((section, name, exc.field or ""), entry_line),
        ) from None


def _parse_catalog_text(text: str, source: str) -> tuple[list[GpuSpec], list[ModelSpec]]:
    """Validated specs from one catalog YAML document, in file order."""
    data, lines = _read_yaml(text, source)
    if data is None:
        return [], []
    if not isinstance(data, Mapping):
        raise InputError(
            "a catalog file must be a mapping with optional 'gpus:' and 'models:' keys",
            source=source,
            line=1,
        )
    for key in data:
        if key not in _SECTIONS:
            raise InputError(
                f"unknown top-level key; expected {' or '.join(_SECTIONS)}",
                field=str(key),
                source=source,
                line=lines.get((str(key),)),
            )
    specs: dict[str, list[Any]] = {section: [] for section in _SECTIONS}
    for section, entries in data.items():  # file order, so the first error is reported first
        cls = _SECTIONS[section]
        if entries is None:
            continue
        if not isinstance(entries, Mapping):
            raise InputError(
                f"must be a mapping of name -> fields, got {_type_name(entries)}",
                field=section,
                source=source,
                line=lines.get((section,)),
            )
        seen: dict[str, str] = {}
        for name, body in entries.items():
            where = f"{section}.{name}"
            line = lines.get((section, str(name)))
            if not isinstance(name, str) or not name.strip():
                raise InputError(
                    "an entry name must be a non-empty string",
                    field=where,
                    source=source,
                    line=line,
                )
            if _key(name) in seen:
                raise InputError(
                    f"duplicate entry (names are case-insensitive; first as {seen[_key(name)]!r})",
                    field=where,
                    source=source,
                    line=line,
                )
            seen[_key(name)] = name
            if not isinstance(body, Mapping):
                raise InputError(
                    f"must be a mapping of field -> value, got {_type_name(body)}",
                    field=where,
                    source=source,
                    line=line,
                )
            specs[section].append(_build_spec(cls, section, name, body, source, lines))
    return specs["gpus"], specs["models"]


@functools.cache
def _packaged_catalog() -> Catalog:
    """The catalog of the packaged YAML files, parsed once per process (it is immutable)."""
    gpus: list[GpuSpec] = []
    models: list[ModelSpec] = []
    for file_name in _PACKAGED_FILES:
        text = catalog_file(file_name).read_text(encoding="utf-8")
        more_gpus, more_models = _parse_catalog_text(text, f"simserve/data/{file_name}")
        gpus += more_gpus
        models += more_models
    return Catalog(gpus, models)


def load_catalog(extra: str | Path | None = None) -> Catalog:
    """The packaged GPU and model catalog, plus the entries of the user YAML file `extra`.

    `extra` may hold top-level `gpus:` and `models:` mappings of name -> fields; each entry
    gives every field (except the optional `dtype_bytes`, default 2, `kv_dtype_bytes`,
    `weight_quant`, the mixture-of-experts fields and a GPU's price and power fields) and
    adds a new name or replaces the packaged entry of the same name (case-insensitive) whole.
    """
    base = _packaged_catalog()
    if extra is None:
        return base
    path = Path(extra)
    text = read_yaml_text(path, "catalog file")
    gpus, models = _parse_catalog_text(text, str(path))
    return Catalog([*base.gpus.values(), *gpus], [*base.models.values(), *models])
