"""Frozen, validated scenario objects, their YAML loader and `--set a.b=c` overrides.

A scenario is a tree of frozen dataclasses. Loading is strict: an unknown key, a value of the
wrong type or a value out of range raises `InputError` naming the dotted field, the file and
the line. Constructors validate their own values (DESIGN §9), so a `Scenario` that exists is a
valid one; checks that need the catalog (model context length, KV fit) live in `resolve.py`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from simserve import __version__
from simserve.catalog import MAX_SPEC_NUMBER
from simserve.errors import InputError, InputWarning
from simserve.formatting import fmt_number
from simserve.schema import build_dataclass
from simserve.yaml_lines import (
    YamlSyntaxError,
    key_lines,
    line_for,
    parse_yaml,
    read_yaml_file,
)

__all__ = [
    "AcceptanceConfig",
    "ArrivalConfig",
    "ClusterConfig",
    "CostConfig",
    "CostModelConfig",
    "EngineConfig",
    "FluidityConfig",
    "GroupConfig",
    "KvOffloadConfig",
    "LengthsConfig",
    "LinkConfig",
    "MetricsConfig",
    "PoolConfig",
    "PrefixConfig",
    "RequestClass",
    "Scenario",
    "SessionsConfig",
    "SloConfig",
    "SpeculativeConfig",
    "WorkloadConfig",
    "apply_overrides",
    "check_file_name",
    "load_scenario",
    "scenario_from_mapping",
    "scenario_to_mapping",
    "set_dotted",
]


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise InputError(message, field=field_name)


MAX_NAME_CHARS = 100


def check_file_name(value: str, field_name: str) -> None:
    """Refuse a name that cannot be used as one directory name under runs/: a path (`/`,
    `..`), empty, hidden (leading `.`, where simserve keeps its temporaries), control
    characters, or longer than `MAX_NAME_CHARS`."""
    bad = (
        not value.strip() or value != value.strip() or value.startswith(".")
        or any(ch in value for ch in "/\\") or any(ord(ch) < 32 or ord(ch) == 127 for ch in value)
        or len(value) > MAX_NAME_CHARS
    )
    if bad:
        raise InputError(
            f"must be a plain directory name (no '/', not starting with '.', no surrounding "
            f"spaces, at most {MAX_NAME_CHARS} characters), got {value!r}", field=field_name,
        )


# --------------------------------------------------------------------------- workload

ArrivalProcess = Literal["poisson", "gamma", "constant", "offline", "closed_loop", "trace"]
LengthDist = Literal["fixed", "uniform", "lognormal", "trace"]


@dataclass(frozen=True)
class ArrivalConfig:
    """How requests arrive. `rate` is requests per second (for `trace`: optional time-scaling
    to that mean rate); `burstiness` is the gamma shape, 1/cv^2, as in `vllm bench serve`."""

    process: ArrivalProcess | None = None
    rate: float | None = None
    burstiness: float = 1.0
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.process is None:
            # NOTE: as `vllm bench serve`: a rate means Poisson arrivals, no rate means
            # request-rate inf (everything at once).
            object.__setattr__(self, "process", "poisson" if self.rate is not None else "offline")
        if self.process in ("poisson", "gamma", "constant"):
            _require(self.rate is not None, "arrival.rate", f"required for process {self.process}")
        if self.rate is not None:
            _require(self.rate > 0, "arrival.rate", f"must be > 0, got {self.rate}")
        _require(self.burstiness > 0, "arrival.burstiness", f"must be > 0, got {self.burstiness}")
        if self.process == "closed_loop":
            _require(
                self.concurrency is not None and self.concurrency >= 1,
                "arrival.concurrency",
                "closed_loop needs concurrency >= 1",
            )
        else:
            _require(
                self.concurrency is None,
                "arrival.concurrency",
                f"only used by process closed_loop (got process {self.process})",
            )


@dataclass(frozen=True)
class LengthsConfig:
    """Prompt and output lengths in tokens.

    `fixed`: exactly `prompt_len`/`output_len`. `uniform`: vLLM's random dataset, integers in
    [len*(1-range_ratio), len*(1+range_ratio)]. `lognormal`: median-free parameterisation by the
    mean (`prompt_len`, `output_len`) and the log-space sigma. `trace`: from `workload.trace`.
    """

    dist: LengthDist = "fixed"
    prompt_len: int = 512
    output_len: int = 128
    range_ratio: float = 0.0
    prompt_sigma: float = 0.8
    output_sigma: float = 0.8

    def __post_init__(self) -> None:
        _require(self.prompt_len >= 1, "lengths.prompt_len", f"must be >= 1, got {self.prompt_len}")
        _require(self.output_len >= 1, "lengths.output_len", f"must be >= 1, got {self.output_len}")
        _require(
            0.0 <= self.range_ratio < 1.0,
            "lengths.range_ratio",
            f"must be in [0, 1), got {self.range_ratio}",
        )
        _require(self.prompt_sigma >= 0, "lengths.prompt_sigma", "must be >= 0")
        _require(self.output_sigma >= 0, "lengths.output_sigma", "must be >= 0")


@dataclass(frozen=True)
class RequestClass:
    """A class of requests (a tenant, a product tier): each request is drawn into one class
    with probability proportional to `share`. Under `engine.queue: priority` a lower
    `priority` is served first (vLLM's rule). `slo` is the class's own SLO; the fields it
    leaves unset are `metrics.slo`'s. Every metric is also reported per class."""

    name: str
    share: float = 1.0
    priority: int = 0
    slo: SloConfig | None = None

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()) and self.name.isprintable() and len(self.name) <= 64,
                 "name", f"must be a short printable name, got {self.name!r}")
        _require(self.share > 0, "share", f"must be > 0, got {self.share}")


Popularity = Literal["uniform", "zipf"]
# NOTE: every engine is a SimPy process with its own state and is routed over at each arrival
# (linear in engines), so a cluster of more engines than this would take hours to set up and
# run; a larger one is refused rather than left hanging.
MAX_ENGINES = 4096

# NOTE: more prefix groups than this cannot all be used by a run simserve holds in memory, and
# drawing among them would take memory for nothing.
MAX_PREFIX_GROUPS = 1_000_000
# NOTE: no model's context comes near a billion tokens: larger lengths are garbage (and from
# 2**63 on they would overflow int64).
MAX_TOKENS = 10**9


@dataclass(frozen=True)
class PrefixConfig:
    """Shared prompt prefixes (system prompts): every request's prompt starts with one of
    `num_groups` prefixes of `shared_len` tokens. A request's group is drawn `uniform`ly or
    by Zipf's law (`zipf`: the k-th most popular of G groups with probability proportional to
    1 / k**zipf_s). `shared_len` counts inside the prompt: a prompt drawn shorter than
    shared_len + 1 tokens is lengthened to shared_len + 1, so every request has a token of its
    own after the shared prefix."""

    shared_len: int
    num_groups: int = 1
    popularity: Popularity = "uniform"
    zipf_s: float = 1.0

    def __post_init__(self) -> None:
        _require(1 <= self.shared_len <= MAX_TOKENS, "prefix.shared_len",
                 f"must be in [1, {fmt_number(MAX_TOKENS)}], got {self.shared_len}")
        _require(1 <= self.num_groups <= MAX_PREFIX_GROUPS, "prefix.num_groups",
                 f"must be in [1, {fmt_number(MAX_PREFIX_GROUPS)}], got {self.num_groups}")
        _require(self.zipf_s > 0, "prefix.zipf_s", f"must be > 0, got {self.zipf_s}")


TurnsDist = Literal["fixed", "geometric", "uniform"]
ThinkDist = Literal["fixed", "exponential"]
MAX_MEAN_TURNS = 10_000


@dataclass(frozen=True)
class SessionsConfig:
    """Multi-turn conversations. Sessions start open-loop (`arrival` gives each session's
    first turn its time); each next turn is sent `think_time_s` after the previous one ends
    and its prompt is the whole history (the previous prompt and output) plus a new message
    whose length, like every output's, comes from `lengths`.

    `turns` is the number of turns of a session (`fixed`), or their mean: `geometric` (a
    session ends after each turn with probability 1/turns) or `uniform` (1 to 2*turns - 1).
    `think_dist`: `fixed` think times, or `exponential` ones with mean `think_time_s`.
    """

    turns: int
    think_time_s: float
    turns_dist: TurnsDist = "fixed"
    think_dist: ThinkDist = "fixed"

    def __post_init__(self) -> None:
        _require(1 <= self.turns <= MAX_MEAN_TURNS, "sessions.turns",
                 f"must be in [1, {fmt_number(MAX_MEAN_TURNS)}], got {self.turns}")
        _require(self.think_time_s >= 0, "sessions.think_time_s",
                 f"must be >= 0, got {self.think_time_s}")


@dataclass(frozen=True)
class WorkloadConfig:
    """The requests of a run; built before the run from the scenario seed.

    `classes`: optional request classes (priority, share, SLO). A trace with a `priority`
    column gives each row its priority; with classes, a row's class is the class of that
    priority, else classes are drawn by share (per session when there are sessions).
    `client_timeout_s`: a client gives up on a request not finished this long after sending
    it; the engine cancels it at its next step (its KV freed, its tokens so far counted), and
    it counts in `num_timed_out`, not in the latency metrics (as a benchmark client drops
    failed requests). `prefix`: shared prompt prefixes; `sessions`: multi-turn conversations.
    `num_requests` counts requests, that is turns when there are sessions.
    """

    num_requests: int | None = 200
    trace: str | None = None
    arrival: ArrivalConfig = field(default_factory=ArrivalConfig)
    lengths: LengthsConfig = field(default_factory=LengthsConfig)
    classes: tuple[RequestClass, ...] = ()
    client_timeout_s: float | None = None
    prefix: PrefixConfig | None = None
    sessions: SessionsConfig | None = None

    def __post_init__(self) -> None:
        if self.client_timeout_s is not None:
            _require(self.client_timeout_s > 0, "workload.client_timeout_s",
                     f"must be > 0, got {self.client_timeout_s}")
        _require(
            self.sessions is None or self.arrival.process != "closed_loop",
            "workload.sessions",
            "sessions start open-loop (the arrival process gives each session's start): "
            "not with arrival.process closed_loop",
        )
        names = [c.name for c in self.classes]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        _require(not duplicated, "workload.classes",
                 f"class names must differ; {', '.join(duplicated)} appears twice")
        uses_trace = self.arrival.process == "trace" or self.lengths.dist == "trace"
        if self.num_requests is None:
            # NOTE: null means "the whole trace", for replaying a measured run row for row.
            _require(
                self.arrival.process == "trace",
                "workload.num_requests",
                "null (the whole trace) needs arrival.process trace",
            )
        else:
            _require(self.num_requests >= 1, "workload.num_requests", "must be >= 1")
        _require(
            not uses_trace or self.trace is not None,
            "workload.trace",
            "a trace file is required when arrival.process or lengths.dist is 'trace'",
        )


# --------------------------------------------------------------------------- engine

AcceptanceModel = Literal["geometric", "per_position", "empirical", "beta"]


@dataclass(frozen=True)
class AcceptanceConfig:
    """How many of k drafted tokens the target accepts per verify step (DESIGN §3).

    `geometric`: each position accepted with probability `alpha` until the first rejection.
    `per_position`: conditional rates p1..pk (non-increasing). `empirical`: weights of
    0..k accepted tokens. `beta`: each request draws its own alpha from Beta(a, b).
    """

    model: AcceptanceModel = "geometric"
    alpha: float = 0.7
    rates: tuple[float, ...] = ()
    histogram: tuple[float, ...] = ()
    a: float = 7.0
    b: float = 3.0

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.alpha < 1.0, "acceptance.alpha", f"must be in [0, 1), got {self.alpha}"
        )
        if self.model == "per_position":
            _require(bool(self.rates), "acceptance.rates", "per_position needs rates p1..pk")
            _require(
                all(0.0 <= r <= 1.0 for r in self.rates),
                "acceptance.rates",
                "each rate must be in [0, 1]",
            )
            _require(
                all(x >= y for x, y in zip(self.rates, self.rates[1:], strict=False)),
                "acceptance.rates",
                "conditional rates must be non-increasing with position",
            )
        if self.model == "empirical":
            _require(
                len(self.histogram) >= 2 and all(w >= 0 for w in self.histogram)
                and sum(self.histogram) > 0,
                "acceptance.histogram",
                "needs k+1 non-negative weights (0..k accepted) with a positive sum",
            )
        _require(self.a > 0 and self.b > 0, "acceptance.a", "beta parameters must be > 0")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding: a draft proposes k tokens per request, the target verifies k+1.

    `method: draft` costs k sequential steps of `draft_model` (a catalog model) at the batch's
    size; `eagle`/`mtp` cost `draft_cost_fraction` of one target decode step per draft token.
    `disable_above_batch`: no speculation in steps with more decodes (dynamic speculation).
    `draft_step_overhead_ms`: fixed cost of each draft forward pass (kernel launches, sampling);
    unset means the target's `cost_model.step_overhead_ms`.
    """

    method: Literal["draft", "eagle", "mtp"] = "draft"
    num_speculative_tokens: int = 4
    draft_model: str | None = None
    draft_cost_fraction: float = 0.1
    draft_step_overhead_ms: float | None = None
    acceptance: AcceptanceConfig = field(default_factory=AcceptanceConfig)
    disable_above_batch: int | None = None

    def __post_init__(self) -> None:
        k = self.num_speculative_tokens
        _require(k >= 1, "speculative.num_speculative_tokens", f"must be >= 1, got {k}")
        _require(
            self.method != "draft" or self.draft_model is not None,
            "speculative.draft_model",
            "required for method draft",
        )
        _require(
            0 < self.draft_cost_fraction <= 1,
            "speculative.draft_cost_fraction",
            "must be in (0, 1]",
        )
        if self.draft_step_overhead_ms is not None:
            _require(
                self.draft_step_overhead_ms >= 0,
                "speculative.draft_step_overhead_ms",
                "must be >= 0",
            )
        acc = self.acceptance
        if acc.model == "per_position":
            _require(
                len(acc.rates) == k,
                "speculative.acceptance.rates",
                f"needs exactly num_speculative_tokens={k} rates, got {len(acc.rates)}",
            )
        if acc.model == "empirical":
            _require(
                len(acc.histogram) == k + 1,
                "speculative.acceptance.histogram",
                f"needs k+1={k + 1} weights (0..k accepted), got {len(acc.histogram)}",
            )
        if self.disable_above_batch is not None:
            _require(self.disable_above_batch >= 1, "speculative.disable_above_batch", ">= 1")


EngineVersion = Literal["v0", "v1"]
KvCacheDtype = Literal["auto", "fp8"]
PreemptionMode = Literal["recompute", "swap"]


@dataclass(frozen=True)
class KvOffloadConfig:
    """vLLM V1-style CPU offload of KV blocks (its CPU offloading connector): prefix-cached
    blocks evicted from GPU memory are kept in `cpu_gb` GiB of host memory per GPU (LRU) and
    loaded back over the host link when a request's prefix finds them there, instead of being
    recomputed. Needs prefix caching. `cpu_gb` is in GiB (2^30 bytes), as vLLM's sizes are."""

    cpu_gb: float = 0.0

    def __post_init__(self) -> None:
        _require(self.cpu_gb > 0, "engine.kv_offload.cpu_gb",
                 f"must be > 0 with offload on (remove engine.kv_offload to turn it off), "
                 f"got {self.cpu_gb}")


@dataclass(frozen=True)
class EngineConfig:
    """Scheduler and KV-cache knobs, with vLLM's names and (v1) defaults.

    `policy` is the batching policy and `queue` the queue order (which waiting request is
    admitted first, which running one preempted first): a built-in name or a class of the
    user's (`path/to/file.py:ClassName`, `package.module:ClassName`), checked by
    `resolve` through `engine.registry`. `version` is the vLLM engine generation the kernel
    cost model prices (its CPU loop and CUDA graphs): `v0` (vLLM <= 0.6) or `v1` (>= 0.8);
    unset, the policy's `engine_generation`. `kv_cache_dtype` is vLLM's: `auto` keeps the
    model's KV dtype, `fp8` stores one byte per element. `enforce_eager` turns CUDA graphs
    off, as vLLM's flag of that name. `enable_prefix_caching` (vLLM's flag): automatic prefix
    caching; unset, the policy's default (on for chunked_prefill, as in vLLM V1; off for the
    V0-style policies; a policy that reserves KV up front cannot cache).

    `preemption` (vLLM v0's preemption_mode): `recompute` frees a preempted request's KV and
    computes it again; `swap` copies its KV blocks to `swap_space_gb` GiB of host memory per
    GPU (vLLM's `swap_space`, default 4) over the GPU's host link and back when it resumes.
    `kv_offload` (unset: off) keeps evicted prefix-cache blocks in host memory.
    """

    policy: str = "chunked_prefill"
    queue: str = "fcfs"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    # NOTE: recompute is vLLM's default (and only V1) preemption mode; swap is vLLM v0's
    # PreemptionMode.SWAP (docs/kv_tiers.md).
    preemption: PreemptionMode = "recompute"
    # NOTE: vLLM v0's --swap-space default: 4 GiB of CPU memory per GPU.
    swap_space_gb: float = 4.0
    kv_offload: KvOffloadConfig | None = None
    max_model_len: int | None = None
    activation_reserve_gib: float = 1.0
    num_gpu_blocks_override: int | None = None
    speculative: SpeculativeConfig | None = None
    version: EngineVersion | None = None
    kv_cache_dtype: KvCacheDtype = "auto"
    enforce_eager: bool = False
    enable_prefix_caching: bool | None = None

    def __post_init__(self) -> None:
        _require(self.max_num_seqs >= 1, "engine.max_num_seqs", "must be >= 1")
        _require(self.block_size >= 1, "engine.block_size", "must be >= 1")
        _require(
            self.max_num_batched_tokens >= self.block_size,
            "engine.max_num_batched_tokens",
            f"must be >= engine.block_size ({self.block_size}), got {self.max_num_batched_tokens}",
        )
        _require(
            0.0 < self.gpu_memory_utilization <= 1.0,
            "engine.gpu_memory_utilization",
            f"must be in (0, 1], got {self.gpu_memory_utilization}",
        )
        if self.max_model_len is not None:
            _require(self.max_model_len >= 1, "engine.max_model_len", "must be >= 1")
        _require(self.activation_reserve_gib >= 0, "engine.activation_reserve_gib", "must be >= 0")
        if self.num_gpu_blocks_override is not None:
            _require(self.num_gpu_blocks_override >= 1, "engine.num_gpu_blocks_override", ">= 1")
        _require(self.swap_space_gb >= 0, "engine.swap_space_gb",
                 f"must be >= 0 GiB, got {self.swap_space_gb}")
        _require(self.preemption != "swap" or self.swap_space_gb > 0, "engine.swap_space_gb",
                 "must be > 0 GiB with engine.preemption: swap (nothing could be swapped out)")


Router = Literal["round_robin", "least_outstanding", "least_kv", "prefix_aware"]
ClusterMode = Literal["colocated", "disaggregated"]


@dataclass(frozen=True)
class LinkConfig:
    """The link that carries KV caches from prefill to decode instances.

    `name`: a catalog link (`simserve/data/links.yaml`: nvlink3, nvlink4, pcie4, pcie5,
    net100g, net200g, net400g); unset means the hardware's own GPU interconnect. Explicit
    `bandwidth_gbps` (GB/s, one direction) and `latency_us` override the catalog's numbers.
    """

    name: str | None = None
    bandwidth_gbps: float | None = None
    latency_us: float | None = None

    def __post_init__(self) -> None:
        if self.bandwidth_gbps is not None:
            _require(
                self.bandwidth_gbps > 0,
                "cluster.link.bandwidth_gbps",
                f"must be > 0, got {self.bandwidth_gbps}",
            )
        if self.latency_us is not None:
            _require(self.latency_us >= 0, "cluster.link.latency_us", "must be >= 0")


@dataclass(frozen=True)
class PoolConfig:
    """One pool of a disaggregated cluster: identical instances of `tp` x `pp` GPUs each.

    Unset fields take the scenario's values (`hardware`, `tp`, `pp`, `engine.*`,
    `cost_model.profile`). `hardware` is this pool's GPU (a catalog name): its memory sizes
    the pool's KV cache and its cost model prices the pool's steps. `profile` names the
    calibrated profile of this pool's GPU and TP when `cost_model.kind` is calibrated (a
    profile is fitted per GPU and TP). `policy` decides how prompts are batched on a
    prefill instance (whole prompts or chunks); on a decode instance it only matters for
    requests preempted there, which recompute their prefill locally as vLLM does. `queue` is
    this pool's queue order.
    `num_gpu_blocks_override` fixes this pool's KV blocks per instance (else
    `engine.num_gpu_blocks_override`, else the memory arithmetic at this pool's TP and PP).
    """

    instances: int = 1
    hardware: str | None = None
    tp: int | None = None
    pp: int | None = None
    router: Router = "round_robin"
    policy: str | None = None
    queue: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    profile: str | None = None
    num_gpu_blocks_override: int | None = None

    def __post_init__(self) -> None:
        _require(1 <= self.instances <= MAX_ENGINES, "instances",
                 f"must be in [1, {fmt_number(MAX_ENGINES)}], got {self.instances}")
        if self.hardware is not None:
            _require(bool(self.hardware.strip()), "hardware", "must name a catalog GPU")
        if self.num_gpu_blocks_override is not None:
            _require(self.num_gpu_blocks_override >= 1, "num_gpu_blocks_override", "must be >= 1")
        _require(self.tp is None or self.tp >= 1, "tp", f"must be >= 1, got {self.tp}")
        _require(self.pp is None or self.pp >= 1, "pp", f"must be >= 1, got {self.pp}")
        if self.max_num_seqs is not None:
            _require(self.max_num_seqs >= 1, "max_num_seqs", "must be >= 1")
        if self.max_num_batched_tokens is not None:
            _require(self.max_num_batched_tokens >= 1, "max_num_batched_tokens", "must be >= 1")


@dataclass(frozen=True)
class ClusterConfig:
    """Where requests run. `colocated`: `replicas` identical engines, each doing prefill and
    decode, or `groups` of replicas on different GPUs or settings (`GroupConfig`; one router
    over every replica of every group). `disaggregated`: a `prefill` pool hands each request's
    KV cache over `link` to a `decode` pool (DistServe, Splitwise).

    Routers: `round_robin`, `least_outstanding` (fewest waiting + running), `least_kv` (largest
    free share of its KV blocks), `prefix_aware` (most of the prompt in the replica's prefix
    cache, less `router_load_weight` times its load relative to the busiest replica).
    """

    mode: ClusterMode = "colocated"
    # NOTE: unset means 1 without groups; None is kept with groups so that "both set" can be
    # told from "groups only".
    replicas: int | None = None
    router: Router = "round_robin"
    router_load_weight: float = 0.5
    prefill: PoolConfig | None = None
    decode: PoolConfig | None = None
    link: LinkConfig = field(default_factory=LinkConfig)
    groups: tuple[GroupConfig, ...] | None = None

    def __post_init__(self) -> None:
        if self.groups is not None:
            self._check_groups()
        elif self.replicas is None:
            object.__setattr__(self, "replicas", 1)
        if self.replicas is not None:
            _require(1 <= self.replicas <= MAX_ENGINES, "cluster.replicas",
                     f"must be in [1, {fmt_number(MAX_ENGINES)}], got {self.replicas}")
        _require(self.num_replicas <= MAX_ENGINES, "cluster.groups",
                 f"{fmt_number(self.num_replicas)} replicas in all; at most "
                 f"{fmt_number(MAX_ENGINES)} can be simulated")
        _require(self.router_load_weight >= 0, "cluster.router_load_weight",
                 f"must be >= 0, got {self.router_load_weight}")
        if self.mode == "colocated":
            for pool in ("prefill", "decode"):
                _require(
                    getattr(self, pool) is None,
                    f"cluster.{pool}",
                    "only used by cluster.mode disaggregated",
                )
            return
        _require(
            self.replicas == 1,
            "cluster.replicas",
            "a disaggregated cluster sizes its pools with cluster.prefill.instances and "
            "cluster.decode.instances",
        )
        # NOTE: an unset pool is one instance with the scenario's settings.
        if self.prefill is None:
            object.__setattr__(self, "prefill", PoolConfig())
        if self.decode is None:
            object.__setattr__(self, "decode", PoolConfig())

    def _check_groups(self) -> None:
        assert self.groups is not None
        _require(self.mode == "colocated", "cluster.groups",
                 "replica groups make a co-located cluster; a disaggregated one sizes "
                 "cluster.prefill and cluster.decode instead")
        _require(bool(self.groups), "cluster.groups",
                 "must list at least one group (or remove it and set cluster.replicas)")
        _require(self.replicas is None, "cluster.replicas",
                 "not with cluster.groups: each group sets its own replicas")
        names = self.group_names
        duplicated = sorted({n for n in names if names.count(n) > 1})
        _require(not duplicated, "cluster.groups",
                 f"group names must differ; {', '.join(duplicated)} appears twice")

    @property
    def group_names(self) -> list[str]:
        """Each group's name: its own, else `group<index>`."""
        return [g.name if g.name is not None else f"group{i}"
                for i, g in enumerate(self.groups or ())]

    @property
    def num_replicas(self) -> int:
        """Co-located replicas in all: `replicas`, or the groups' replicas summed."""
        if self.groups is not None:
            return sum(g.replicas for g in self.groups)
        assert self.replicas is not None
        return self.replicas


# --------------------------------------------------------------------------- cost model

CostModelKind = Literal["auto", "roofline", "constant", "calibrated", "kernels"]


@dataclass(frozen=True)
class CostModelConfig:
    """Step-time model. `auto` (the default) is `kernels` wherever the measured kernel tables
    cover the scenario's GPU, model, TP and dtypes, and `roofline` elsewhere, with a one-line
    warning saying why; `roofline` uses catalog specs with efficiency factors (DESIGN §4);
    `constant` gives every step `step_time_ms` (tests and teaching); `calibrated` uses a fitted
    profile (`profile`: a name under calibration/profiles/ or a path to a profile YAML);
    `kernels` prices every op of a step from GPU kernel latencies measured inside `framework`
    (calibration/kernels/), plus the engine loop's CPU time fitted on real serving runs;
    `loop_per_step_us`, `loop_per_seq_us` and `loop_per_token_us` replace the fitted loop terms
    of `engine.version` (unset: the shipped fit).
    `serving_step_ms` and `serving_per_seq_ms` add the serving loop's time outside the forward
    pass, per step (scheduling, the engine-to-worker call) and per sequence in the step
    (sampling, detokenisation, streaming), which offline step profiles do not measure."""

    kind: CostModelKind = "auto"
    profile: str | None = None
    framework: Literal["vllm"] = "vllm"
    loop_per_step_us: float | None = None
    loop_per_seq_us: float | None = None
    loop_per_token_us: float | None = None
    step_time_ms: float = 10.0
    mfu: float = 0.6
    mbu: float = 0.75
    step_overhead_ms: float = 1.0
    allreduce_latency_us: float = 10.0
    allreduce_efficiency: float = 0.7
    serving_step_ms: float = 0.0
    serving_per_seq_ms: float = 0.0

    def __post_init__(self) -> None:
        _require(self.step_time_ms > 0, "cost_model.step_time_ms", "must be > 0")
        _require(self.serving_step_ms >= 0, "cost_model.serving_step_ms", "must be >= 0")
        _require(self.serving_per_seq_ms >= 0, "cost_model.serving_per_seq_ms", "must be >= 0")
        for name in ("loop_per_step_us", "loop_per_seq_us", "loop_per_token_us"):
            value = getattr(self, name)
            _require(value is None or value >= 0, f"cost_model.{name}", "must be >= 0")
        _require(
            self.kind != "calibrated" or self.profile is not None,
            "cost_model.profile",
            "required when kind is calibrated",
        )
        _require(0 < self.mfu <= 1, "cost_model.mfu", f"must be in (0, 1], got {self.mfu}")
        _require(0 < self.mbu <= 1, "cost_model.mbu", f"must be in (0, 1], got {self.mbu}")
        _require(self.step_overhead_ms >= 0, "cost_model.step_overhead_ms", "must be >= 0")
        _require(self.allreduce_latency_us >= 0, "cost_model.allreduce_latency_us", ">= 0")
        _require(
            0 < self.allreduce_efficiency <= 1,
            "cost_model.allreduce_efficiency",
            "must be in (0, 1]",
        )


# --------------------------------------------------------------------------- replica groups

#: Engine settings a replica group cannot have apart from the others: the KV block size
#: (prefix-cache and trace block ids), the context limit (the workload is cut to it),
#: speculative decoding (one drafter setting for the cluster) and the KV dtype (KV bytes per
#: token, which energy accounting counts once for the model).
CLUSTER_WIDE_ENGINE_KEYS = ("block_size", "max_model_len", "speculative", "kv_cache_dtype")


def _overrides_of(cls: type, name: str, doc: str) -> type:
    """A frozen dataclass with `cls`'s fields, each optional with None meaning "not set here":
    a section of a replica group that overrides the scenario's section key by key."""
    hints = typing.get_type_hints(cls)
    fields = [(f.name, hints[f.name] | None, field(default=None))
              for f in dataclasses.fields(cls)]
    partial = dataclasses.make_dataclass(name, fields, frozen=True,
                                         namespace={"__doc__": doc, "__module__": __name__})
    return partial


EngineOverrides = _overrides_of(
    EngineConfig, "EngineOverrides",
    "A replica group's `engine:` keys: each one set replaces the scenario's `engine.<key>`.")
CostModelOverrides = _overrides_of(
    CostModelConfig, "CostModelOverrides",
    "A replica group's `cost_model:` keys: each one set replaces the scenario's "
    "`cost_model.<key>`.")


def set_keys(overrides: Any) -> dict[str, Any]:
    """The keys an overrides section sets (None: unset), as keyword arguments."""
    if overrides is None:
        return {}
    return {f.name: getattr(overrides, f.name) for f in dataclasses.fields(overrides)
            if getattr(overrides, f.name) is not None}


@dataclass(frozen=True)
class GroupConfig:
    """One group of a co-located cluster: `replicas` identical engines of `tp` x `pp` GPUs of
    `hardware` (a catalog GPU), routed to by the cluster's one router along with every other
    group's replicas.

    Unset fields take the scenario's values (`hardware`, `tp`, `pp`), and `engine` and
    `cost_model` override the scenario's sections key by key (e.g. `engine: {max_num_seqs:
    128}`, `cost_model: {profile: ...}` for a calibrated profile of this group's GPU and TP).
    The KV block size, `max_model_len`, `kv_cache_dtype` and speculative decoding are the
    cluster's. `name` labels the group in summaries (default `group<index>`).
    """

    replicas: int = 1
    name: str | None = None
    hardware: str | None = None
    tp: int | None = None
    pp: int | None = None
    engine: EngineOverrides | None = None  # type: ignore[valid-type]
    cost_model: CostModelOverrides | None = None  # type: ignore[valid-type]

    def __post_init__(self) -> None:
        _require(1 <= self.replicas <= MAX_ENGINES, "replicas",
                 f"must be in [1, {fmt_number(MAX_ENGINES)}], got {self.replicas}")
        if self.name is not None:
            _require(bool(self.name.strip()) and self.name.isprintable() and len(self.name) <= 64,
                     "name", f"must be a short printable name, got {self.name!r}")
        if self.hardware is not None:
            _require(bool(self.hardware.strip()), "hardware", "must name a catalog GPU")
        _require(self.tp is None or self.tp >= 1, "tp", f"must be >= 1, got {self.tp}")
        _require(self.pp is None or self.pp >= 1, "pp", f"must be >= 1, got {self.pp}")
        for key in CLUSTER_WIDE_ENGINE_KEYS:
            _require(key not in set_keys(self.engine), f"engine.{key}",
                     f"is the cluster's: set engine.{key} for every group")

    def engine_config(self, scenario_engine: EngineConfig) -> EngineConfig:
        """The scenario's engine settings with this group's `engine` keys."""
        return dataclasses.replace(scenario_engine, **set_keys(self.engine))

    def cost_model_config(self, scenario_cost_model: CostModelConfig) -> CostModelConfig:
        """The scenario's cost model settings with this group's `cost_model` keys."""
        return dataclasses.replace(scenario_cost_model, **set_keys(self.cost_model))


# --------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class CostConfig:
    """Report the run's GPU-hours, price and energy (`simserve.pricing`, `metrics.energy`).

    Each mapping goes from a catalog GPU name to a number that replaces the catalog's:
    `gpu_hour_usd` the on-demand price of one GPU-hour in US dollars, `idle_w` and `tdp_w`
    one GPU's idle and maximum board power in watts. GPUs the cluster does not use may be
    listed (a sweep over placements sets every price once).
    """

    gpu_hour_usd: Mapping[str, float] = field(default_factory=dict, hash=False)
    idle_w: Mapping[str, float] = field(default_factory=dict, hash=False)
    tdp_w: Mapping[str, float] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for section, allow_zero in (("gpu_hour_usd", False), ("idle_w", True), ("tdp_w", False)):
            for gpu, value in getattr(self, section).items():
                bound = ">= 0" if allow_zero else "> 0"
                _require(value > 0 or (allow_zero and value == 0), f"cost.{section}.{gpu}",
                         f"must be {bound}, got {fmt_number(value)}")
                _require(value <= MAX_SPEC_NUMBER, f"cost.{section}.{gpu}",
                         f"must be at most {fmt_number(MAX_SPEC_NUMBER)}, got {fmt_number(value)}")


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class SloConfig:
    """Per-request SLOs for goodput (vLLM `--goodput`, DistServe); unset ones are not checked."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None
    max_tbt_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms", "e2el_ms", "max_tbt_ms"):
            value = getattr(self, name)
            _require(value is None or value > 0, name, "must be > 0")


@dataclass(frozen=True)
class FluidityConfig:
    """Etalon deadlines: the first token is due `ttft_deadline_ms +
    ttft_deadline_ms_per_prompt_token * prompt_len` after arrival, each next one
    `tbt_deadline_ms` after the previous deadline."""

    ttft_deadline_ms: float = 250.0
    ttft_deadline_ms_per_prompt_token: float = 0.25
    tbt_deadline_ms: float = 50.0
    max_miss_rate: float = 0.1

    def first_token_deadline_s(self, prompt_len: Any) -> Any:
        """D_p in seconds after arrival, per prompt length (a number or a numpy array)."""
        per_token = self.ttft_deadline_ms_per_prompt_token
        return (self.ttft_deadline_ms + per_token * prompt_len) / 1000.0

    def __post_init__(self) -> None:
        _require(self.ttft_deadline_ms > 0, "metrics.fluidity.ttft_deadline_ms", "must be > 0")
        _require(
            self.ttft_deadline_ms_per_prompt_token >= 0,
            "metrics.fluidity.ttft_deadline_ms_per_prompt_token",
            "must be >= 0",
        )
        _require(self.tbt_deadline_ms > 0, "metrics.fluidity.tbt_deadline_ms", "must be > 0")
        _require(
            0 <= self.max_miss_rate < 1, "metrics.fluidity.max_miss_rate", "must be in [0, 1)"
        )


@dataclass(frozen=True)
class MetricsConfig:
    slo: SloConfig = field(default_factory=SloConfig)
    fluidity: FluidityConfig = field(default_factory=FluidityConfig)
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    stall_threshold_ms: float = 500.0
    percentiles: tuple[float, ...] = (90.0, 95.0, 99.0)

    def __post_init__(self) -> None:
        _require(self.warmup_s >= 0, "metrics.warmup_s", "must be >= 0")
        _require(self.cooldown_s >= 0, "metrics.cooldown_s", "must be >= 0")
        _require(self.stall_threshold_ms > 0, "metrics.stall_threshold_ms", "must be > 0")
        for p in self.percentiles:
            _require(0 < p <= 100, "metrics.percentiles", f"each must be in (0, 100], got {p}")


# --------------------------------------------------------------------------- scenario


@dataclass(frozen=True)
class Scenario:
    """One simulated serving setup: hardware, model, engine, cluster, workload, metrics, seed."""

    name: str = "scenario"
    model: str = "llama-3-8b"
    hardware: str = "h100-80gb-sxm"
    tp: int = 1
    pp: int = 1
    seed: int = 0
    catalog: str | None = None
    cost_model: CostModelConfig = field(default_factory=CostModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # NOTE: unset (the default), summaries carry no cost or energy keys; `cost: {}` reports
    # them at the catalog's prices and powers.
    cost: CostConfig | None = None

    def __post_init__(self) -> None:
        # NOTE: the name is the default run directory (runs/<name>), so it must be one.
        check_file_name(self.name, "name")
        _require(self.tp >= 1, "tp", f"must be >= 1, got {self.tp}")
        _require(self.pp >= 1, "pp", f"must be >= 1, got {self.pp}")
        _require(
            self.cluster.mode == "colocated" or self.workload.client_timeout_s is None,
            "workload.client_timeout_s",
            "client timeouts are modelled on co-located clusters only",
        )
        _require(
            self.cluster.mode == "colocated" or self.engine.speculative is None,
            "engine.speculative",
            "speculative decoding is modelled on co-located clusters only",
        )
        _require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        for i, group in enumerate(self.cluster.groups or ()):
            # A group's keys are checked with the scenario's around them (a token budget
            # against the block size, a calibrated kind against a profile).
            try:
                group.engine_config(self.engine)
                group.cost_model_config(self.cost_model)
            except InputError as exc:
                raise InputError(exc.message, field=f"cluster.groups[{i}].{exc.field}") from None


def scenario_from_mapping(data: Mapping[str, Any]) -> Scenario:
    """Build a validated Scenario from a plain mapping (raises InputError)."""
    if not isinstance(data, Mapping):
        raise InputError("a scenario must be a YAML mapping")
    return build_dataclass(Scenario, data, "")


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise InputError(f"--set expects KEY=VALUE, got {item!r}")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise InputError(f"--set expects KEY=VALUE, got {item!r}")
    if not raw.strip():
        return key, None
    try:
        return key, parse_yaml(raw)[0]
    except YamlSyntaxError:
        return key, raw  # not YAML: the text as a string, as a shell user means it
    except InputError as exc:  # YAML simserve refuses (an alias bomb, a duplicate key)
        raise InputError(f"{key}={raw}: {exc.message}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` overrides (values parsed as YAML) to a raw scenario mapping (copy)."""
    result = _deep_copy(data)
    for item in overrides:
        key, value = _parse_override(item)
        set_dotted(result, key, value)
    return result


_ITEM = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<index>[0-9]+)\]$")


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set the field `a.b.c` of a raw scenario mapping (in place); `b[1]` is item 1 of the
    list `b` (`cluster.groups[1].replicas`). A missing section is created, so that the
    scenario loader reports an unknown key by name; a missing list item is an error."""
    parts = key.split(".")
    if any(not p for p in parts):
        raise InputError(f"{key!r} is not a dotted field name", field=key)
    node: Any = data
    for depth, part in enumerate(parts):
        item = _ITEM.match(part)
        name = item["name"] if item else part
        last = depth == len(parts) - 1 and item is None
        if last:
            node[name] = value
            return
        child = node.get(name)
        if child is None and item is None:
            child = node[name] = {}
        where = ".".join([*parts[:depth], name])
        if item is not None:
            index = int(item["index"])
            if not isinstance(child, list) or index >= len(child):
                size = f"has {len(child)} items" if isinstance(child, list) else "is not a list"
                raise InputError(f"{where} {size}: there is no item {index}", field=key)
            if depth == len(parts) - 1:
                child[index] = value
                return
            child = child[index]
            where = f"{where}[{index}]"
        if not isinstance(child, dict):
            raise InputError(f"{where} is a value, not a section with fields", field=key)
        node = child


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


#: Fields that hold a file path, relative to the file that writes them: plain paths, and the
#: class references (`path/file.py:ClassName`) of the policy and queue fields.
PATH_FIELDS = ("workload.trace", "catalog")
CLASS_FIELDS = ("engine.policy", "engine.queue", "cluster.prefill.policy",
                "cluster.prefill.queue", "cluster.decode.policy", "cluster.decode.queue")


def resolve_path_value(key: str, value: Any, base_dir: Path) -> Any:
    """`value` of field `key` with a relative file path in it made absolute against
    `base_dir`; anything else (a built-in name, `package.module:Class`) as is."""
    if not isinstance(value, str):
        return value
    if key in CLASS_FIELDS:
        source, sep, name = value.rpartition(":")
        if not sep or not source.endswith(".py") or Path(source).is_absolute():
            return value
        return f"{(base_dir / source).resolve()}:{name}"
    if key in PATH_FIELDS and not Path(value).is_absolute():
        return str((base_dir / value).resolve())
    return value


def _resolve_paths(data: dict[str, Any], base: Path, overridden: set[str]) -> None:
    """Relative paths written in a file are relative to that file; those given with --set are
    relative to the working directory (what a shell user expects)."""
    for dotted in (*PATH_FIELDS, *CLASS_FIELDS):
        node: Any = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            continue
        root = Path.cwd() if dotted in overridden else base
        node[parts[-1]] = resolve_path_value(dotted, node.get(parts[-1]), root)


def load_scenario(
    path: str | Path,
    overrides: list[str] | None = None,
    *,
    options: Mapping[str, str] | None = None,
) -> Scenario:
    """Load and validate a scenario file, also against the catalog (model, GPU, profile, TP,
    memory: `resolve.resolve`), so every error names the field, the file and the line.

    `overrides` are `--set KEY=VALUE` items; `options` maps other command-line flags to the
    override they stand for (e.g. {"--seed": "seed=3"}), so their errors name the flag.
    """
    path = Path(path)
    options = dict(options or {})
    overrides = [*(overrides or []), *options.values()]
    data, text = read_yaml_file(path, "scenario file")
    if data is None:
        raise InputError("the scenario file is empty (only comments or blank lines); see "
                         "scenarios/default.yaml for one", source=str(path))
    if not isinstance(data, dict):
        raise InputError("a scenario must be a YAML mapping", source=str(path))
    lines = key_lines(text)
    _check_written_version(data, path, lines)
    try:
        parsed = [_parse_override(o) for o in overrides]
    except InputError as exc:
        raise exc.located("--set", None) from None
    flag_of = {_parse_override(item)[0]: flag for flag, item in options.items()}
    overridden = {key for key, _value in parsed}
    try:
        merged = apply_overrides(data, overrides)
        _resolve_paths(merged, path.resolve().parent, overridden)
        scenario = scenario_from_mapping(merged)
    except InputError as exc:
        raise _located(exc, path, lines, overridden, flag_of) from None
    from simserve.resolve import resolve  # the engine's modules import this one

    try:
        resolve(scenario)
    except InputError as exc:
        # A check against the catalog may name a field the file leaves at its default (e.g.
        # engine.gpu_memory_utilization when the weights do not fit): point at the model.
        fallback = lines.get("model") or lines.get("hardware")
        raise _located(exc, path, lines, overridden, flag_of, fallback) from None
    return scenario


def _located(exc: InputError, path: Path, lines: Mapping[str, int], overridden: set[str],
             flag_of: Mapping[str, str], fallback_line: int | None = None) -> InputError:
    """`exc` with its origin: the flag or `--set` that gave the field, else the file and the
    field's line (or `fallback_line`). An error that already names a file keeps it."""
    field_name = exc.field or ""

    def set_by(key: str) -> bool:
        return field_name == key or field_name.startswith((key + ".", key + "["))

    flags = [flag for key, flag in flag_of.items() if set_by(key)]
    if flags and not exc.source:
        return InputError(exc.message, field=flags[0])
    if any(set_by(key) for key in overridden):
        return exc.located("--set", None)
    return exc.located(str(path), line_for(field_name, lines) or fallback_line)


VERSION_KEY = "simserve_version"


def _check_written_version(data: dict[str, Any], path: Path, lines: Mapping[str, int]) -> None:
    """Accept the `simserve_version` a run directory's scenario.yaml records (removed from
    `data`), warning when another version wrote it: the same scenario may then give other
    numbers."""
    if VERSION_KEY not in data:
        return
    written = data.pop(VERSION_KEY)
    if not isinstance(written, str):
        raise InputError(f"expected a version string, got {written!r}", field=VERSION_KEY,
                         source=str(path), line=lines.get(VERSION_KEY))
    if written != __version__:
        warnings.warn(InputWarning(
            f"{path}: written by simserve {written}, this is simserve {__version__}; the same "
            "scenario may give different numbers"), stacklevel=3)


def scenario_to_mapping(scenario: Scenario) -> dict[str, Any]:
    """Plain-data form of a scenario (tuples as lists), for `scenario.yaml` in a run dir."""

    def plain(value: Any) -> Any:
        if isinstance(value, EngineOverrides | CostModelOverrides):
            return {k: plain(v) for k, v in set_keys(value).items()}
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(scenario)
