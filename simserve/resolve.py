"""Checks and derived values that need the catalog: KV capacity, context limits, cost model.

`config.py` validates a scenario on its own; this module validates it against the hardware and
model it names and derives the engine's limits (DESIGN §3: KV capacity from GPU memory,
weights and TP).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from simserve.catalog import Catalog, GpuSpec, ModelSpec, load_catalog
from simserve.config import (
    CostModelConfig,
    EngineConfig,
    GroupConfig,
    Scenario,
    SpeculativeConfig,
    set_keys,
)
from simserve.costmodel import CostModel, build_cost_model
from simserve.costmodel.kernels import KernelCostModel
from simserve.costmodel.select import kernel_cost_model
from simserve.costmodel.speculative import SpeculativeCostModel
from simserve.engine.policies import POLICIES, BatchingPolicy
from simserve.engine.registry import policy_class, queue_class
from simserve.engine.setup import EngineLimits, EngineSetup, PoolSetup, Speculation
from simserve.errors import InputError
from simserve.formatting import fmt_number
from simserve.links import LinkSpec, resolve_link, stage_link
from simserve.pricing import check_cost_config, check_rates_known

__all__ = ["ResolvedPool", "ResolvedScenario", "kv_cache_blocks", "kv_cache_bytes", "kv_link_gpu",
           "resolve"]

GIB = 2**30


@dataclass(frozen=True)
class ResolvedPool:
    """One pool's engine setup: `role` is `replica` (co-located), `prefill` or `decode`;
    `gpu` is the GPU its instances run on; `group` names a co-located replica group."""

    role: str
    setup: PoolSetup
    tp: int
    pp: int
    gpu: GpuSpec
    #: The replica group's name (co-located groups only).
    group: str | None = None

    @property
    def num_gpus(self) -> int:
        return self.setup.instances * self.tp * self.pp

    @property
    def name(self) -> str:
        """The pool's key in summaries: its group's name, else its role."""
        return self.group if self.group is not None else self.role

    @property
    def label(self) -> str:
        """The pool in words, for messages."""
        return f"replica group {self.group}" if self.group is not None else f"the {self.role} pool"


@dataclass(frozen=True)
class ResolvedScenario:
    """A scenario with its catalog entries, engine limits and cost model.

    `pools` has every pool (one for a co-located cluster, or one per replica group; prefill
    then decode for a disaggregated one), and `kv_link` the prefill-to-decode link.
    """

    scenario: Scenario
    gpu: GpuSpec
    model: ModelSpec
    pools: tuple[ResolvedPool, ...]
    draft_model: ModelSpec | None = None
    kv_link: LinkSpec | None = None

    @property
    def grouped(self) -> bool:
        """Whether the cluster is co-located replica groups (`cluster.groups`)."""
        return self.scenario.cluster.groups is not None

    @property
    def limits(self) -> EngineLimits:
        """The co-located replicas' limits (the last group's), or the decode pool's."""
        return self.pools[-1].setup.limits

    @property
    def cost_model(self) -> CostModel:
        """The co-located replicas' cost model (the last group's), or the decode pool's."""
        return self.pools[-1].setup.cost_model

    @property
    def num_gpus(self) -> int:
        """GPUs the cluster occupies (for goodput per GPU)."""
        return sum(p.num_gpus for p in self.pools)

    @property
    def engine_setup(self) -> EngineSetup:
        """What the engine runs: the pools, the KV transfer between them, speculation."""
        spec = self.scenario.engine.speculative
        return EngineSetup(
            tuple(p.setup for p in self.pools),
            kv_transfer_s=self.kv_transfer_s if self.kv_link is not None else None,
            speculation=Speculation.from_config(spec) if spec is not None else None,
        )

    def kv_transfer_s(self, num_tokens: int) -> float:
        """Seconds to move the KV cache of `num_tokens` tokens from a prefill to a decode
        instance: every GPU of the smaller instance moves its shard over its own link."""
        assert self.kv_link is not None
        prefill, decode = self.pools
        pairs = min(prefill.tp * prefill.pp, decode.tp * decode.pp)
        return self.kv_link.transfer_s(num_tokens * self.model.kv_bytes_per_token / pairs)


def kv_cache_bytes(
    gpu: GpuSpec,
    weight_bytes: float,
    gpus: int,
    gpu_memory_utilization: float,
    activation_reserve_gib: float,
) -> float:
    """Bytes left for the KV cache on `gpus` GPUs holding `weight_bytes` of weights in all
    (0 when the weights do not fit).

    (GPU memory x utilisation - weights/gpus - activation reserve) per GPU, times the GPUs, as
    vLLM's profiler sizes the cache.
    """
    per_gpu_free = (
        gpu.memory_gib * GIB * gpu_memory_utilization
        - weight_bytes / gpus
        - activation_reserve_gib * GIB
    )
    return per_gpu_free * gpus if per_gpu_free > 0 else 0.0


def kv_cache_blocks(
    scenario: Scenario,
    gpu: GpuSpec,
    model: ModelSpec,
    *,
    draft_weight_bytes: float = 0.0,
    draft_kv_bytes_per_token: float = 0.0,
    tp: int | None = None,
    pp: int = 1,
    engine: EngineConfig | None = None,
) -> int:
    """Paged KV blocks one replica (all its `tp` x `pp` GPUs) can hold (`kv_cache_bytes` over
    the KV bytes of one block: all layers, all KV heads, K and V), under `engine`'s settings
    (unset: the scenario's).

    A speculative draft's weights and KV (one slot per target slot) share the same memory.
    """
    engine = engine or scenario.engine
    if engine.num_gpu_blocks_override is not None:
        return engine.num_gpu_blocks_override
    free = kv_cache_bytes(gpu, model.weight_bytes + draft_weight_bytes, (tp or scenario.tp) * pp,
                          engine.gpu_memory_utilization, engine.activation_reserve_gib)
    kv_per_token = model.kv_bytes_per_token_at(tp or scenario.tp)
    block_bytes = (kv_per_token + draft_kv_bytes_per_token) * engine.block_size
    return int(free // block_bytes)


def _check_parallelism(model: ModelSpec, tp: int, pp: int, prefix: str) -> None:
    # NOTE: vLLM shards attention heads over TP and replicates KV heads when tp exceeds them;
    # pipeline stages take whole layers, and we split them evenly.
    kv_ok = model.num_kv_heads % tp == 0 or tp % model.num_kv_heads == 0
    if model.num_heads % tp or not kv_ok:
        raise InputError(
            f"tp={tp} does not divide {model.name}'s {model.num_heads} attention heads / "
            f"{model.num_kv_heads} KV heads",
            field=f"{prefix}tp",
        )
    if model.num_layers % pp:
        raise InputError(
            f"pp={pp} does not divide {model.name}'s {model.num_layers} layers into equal stages",
            field=f"{prefix}pp",
        )


def _check_lengths(scenario: Scenario, model: ModelSpec, max_model_len: int) -> None:
    lengths = scenario.workload.lengths
    if lengths.dist in ("fixed", "uniform"):
        longest_prompt = int(lengths.prompt_len * (1 + lengths.range_ratio))
        if longest_prompt >= max_model_len:
            raise InputError(
                f"prompt length {longest_prompt} does not fit {model.name}'s context length "
                f"{max_model_len}",
                field="workload.lengths.prompt_len",
            )
    prefix = scenario.workload.prefix
    # Every prompt holds the shared prefix and a token of its own.
    if prefix is not None and prefix.shared_len + 1 >= max_model_len:
        raise InputError(
            f"a prompt of {prefix.shared_len} shared tokens and one of its own does not fit "
            f"{model.name}'s context length {max_model_len}",
            field="workload.prefix.shared_len",
        )


def resolve(scenario: Scenario, catalog: Catalog | None = None) -> ResolvedScenario:
    """Validate a scenario against the catalog and derive what the engine needs."""
    catalog = catalog or load_catalog(scenario.catalog)
    gpu = catalog.gpu(scenario.hardware)
    model = _with_kv_dtype(catalog.model(scenario.model), scenario)
    _check_parallelism(model, scenario.tp, scenario.pp, "")
    _check_memory(scenario)
    engine = scenario.engine
    max_model_len = engine.max_model_len or model.max_model_len
    if max_model_len > model.max_model_len:
        raise InputError(
            f"{max_model_len} exceeds {model.name}'s context length {model.max_model_len}",
            field="engine.max_model_len",
        )
    _check_lengths(scenario, model, max_model_len)
    if scenario.cost is not None:
        check_cost_config(scenario.cost, catalog)
    if scenario.cluster.mode == "disaggregated":
        resolved = _resolve_disaggregated(scenario, catalog, gpu, model, max_model_len)
        if scenario.cost is not None:
            check_rates_known(resolved)
        return resolved
    if scenario.cluster.groups is not None:
        pools, draft = _resolve_groups(scenario, catalog, gpu, model, max_model_len)
    else:
        setup, draft = _replica_pool(scenario, catalog, gpu, model, scenario.engine,
                                     scenario.cost_model, scenario.tp, scenario.pp,
                                     scenario.cluster.num_replicas, max_model_len)
        pools = (ResolvedPool("replica", setup, scenario.tp, scenario.pp, gpu),)
    resolved = ResolvedScenario(scenario, gpu, model, pools, draft)
    if scenario.cost is not None:
        check_rates_known(resolved)
    return resolved


def _replica_pool(
    scenario: Scenario, catalog: Catalog, gpu: GpuSpec, model: ModelSpec, engine: EngineConfig,
    cost_config: CostModelConfig, tp: int, pp: int, instances: int, max_model_len: int,
) -> tuple[PoolSetup, ModelSpec | None]:
    """A pool of `instances` co-located replicas of `tp` x `pp` GPUs of `gpu` with the
    `engine` and `cost_config` settings (the scenario's, or a replica group's), and the
    speculative draft model; errors name the scenario's fields."""
    policy = policy_class(engine.policy, "engine.policy")
    queue = queue_class(engine.queue, "engine.queue")
    engine = _with_generation(engine, policy)
    spec = engine.speculative
    if spec is not None and not policy.supports_speculation:
        able = ", ".join(name for name, p in POLICIES.items() if p.supports_speculation)
        raise InputError(
            f"policy {policy.name} does not plan verify steps (supports_speculation is False); "
            f"built-in policies that do: {able}",
            field="engine.speculative",
        )
    draft = _draft_model(spec, catalog, model) if spec is not None else None
    draft = _with_kv_dtype(draft, scenario) if draft is not None else None
    draft_weights, draft_kv = _draft_memory(spec, model, draft)
    num_blocks = kv_cache_blocks(
        scenario, gpu, model, draft_weight_bytes=draft_weights,
        draft_kv_bytes_per_token=draft_kv, tp=tp, pp=pp, engine=engine,
    )
    _check_blocks(num_blocks, engine, gpu, model, tp * pp, "")
    limits = EngineLimits(
        num_blocks=num_blocks,
        block_size=engine.block_size,
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        max_model_len=max_model_len,
    )
    cost_model = build_cost_model(cost_config, gpu, model, tp, engine)
    if spec is not None:
        draft_cost = None
        if draft is not None and isinstance(_base_model(cost_model), KernelCostModel):
            # NOTE: the draft's k proposals are forward passes inside the target's step, priced
            # from the same kernel tables (GPU time only: the engine loop runs once per step).
            draft_cost = kernel_cost_model(cost_config, gpu, draft, tp, engine, with_loop=False)
        elif draft is not None:
            # NOTE: a calibrated profile describes the target only; the draft is priced by the
            # roofline with the same efficiency factors (vLLM runs it at the target's TP). Each
            # of the k proposals is a separate draft forward pass with its own fixed cost
            # (kernel launches, sampling), by default the target's per-step overhead.
            overhead_ms = spec.draft_step_overhead_ms
            if overhead_ms is None:
                overhead_ms = cost_config.step_overhead_ms
            draft_config = dataclasses.replace(
                cost_config, kind="roofline", profile=None, step_overhead_ms=overhead_ms
            )
            draft_cost = build_cost_model(draft_config, gpu, draft, tp)
        cost_model = SpeculativeCostModel(cost_model, draft_cost, spec.draft_cost_fraction)
    caching = _prefix_caching(engine, policy, "engine.policy")
    _check_router(scenario.cluster.router, caching, "cluster.router")
    _check_offload(engine, caching)
    pool = PoolSetup(
        instances=instances,
        limits=limits,
        cost_model=cost_model,
        policy=policy,
        queue=queue,
        router=scenario.cluster.router,
        pp=pp,
        stage_send_s=_stage_send(gpu, model, pp),
        prefix_caching=caching,
        router_load_weight=scenario.cluster.router_load_weight,
        **_host_tiers(engine, gpu, model, tp, pp, "hardware", caching),
    )
    return pool, draft


#: Errors about these fields come from a group's GPU or TP even where the group leaves the
#: field to the scenario: they name the group's `hardware` (else its `tp`) line.
_GPU_FIELDS = ("engine.gpu_memory_utilization", "engine.swap_space_gb", "engine.kv_offload",
               "cost_model.profile", "cost_model.kind", "hardware", "tp")


def _resolve_groups(
    scenario: Scenario, catalog: Catalog, scenario_gpu: GpuSpec, model: ModelSpec,
    max_model_len: int,
) -> tuple[tuple[ResolvedPool, ...], ModelSpec | None]:
    """Each replica group's pool: its GPU, TP and PP, its engine and cost model settings over
    the scenario's, hence its own KV capacity and step prices."""
    cluster = scenario.cluster
    assert cluster.groups is not None
    pools = []
    draft = None
    for i, (group, name) in enumerate(zip(cluster.groups, cluster.group_names, strict=True)):
        prefix = f"cluster.groups[{i}]."
        gpu = _pool_gpu(catalog, group.hardware, scenario_gpu, f"{prefix}hardware")
        tp, pp = group.tp or scenario.tp, group.pp or scenario.pp
        try:
            _check_parallelism(model, tp, pp, "")
            setup, draft = _replica_pool(
                scenario, catalog, gpu, model, group.engine_config(scenario.engine),
                group.cost_model_config(scenario.cost_model), tp, pp, group.replicas,
                max_model_len)
        except InputError as exc:
            raise _group_error(exc, group, prefix, name, gpu, tp) from None
        pools.append(ResolvedPool("replica", setup, tp, pp, gpu, group=name))
    return tuple(pools), draft


def _group_error(exc: InputError, group: GroupConfig, prefix: str, name: str, gpu: GpuSpec,
                 tp: int) -> InputError:
    """A replica group's error named by the group's own field where the group set it (or where
    its GPU or TP caused it), else by the scenario's field with the group named."""
    field = exc.field or ""
    section, _, key = field.partition(".")
    own = set_keys(getattr(group, section)) if section in ("engine", "cost_model") else {}
    if key.split(".")[0] in own or (field in ("hardware", "tp", "pp")
                                    and getattr(group, field) is not None):
        return InputError(exc.message, field=prefix + field)
    message = exc.message
    if field == "cost_model.profile":
        message += (f" (set {prefix}cost_model.profile to a profile fitted on {gpu.name} at "
                    f"tp={tp})")
    if field.startswith(_GPU_FIELDS):
        for cause in ("hardware", "tp"):
            if getattr(group, cause) is not None:
                return InputError(message, field=prefix + cause)
    return InputError(f"{message} (replica group {name})", field=field)


def _check_memory(scenario: Scenario) -> None:
    """Refuse a run too large for this machine's memory, before anything is allocated."""
    from simserve.experiments.memory import check_run_memory, mean_output_tokens

    workload, engine, cluster = scenario.workload, scenario.engine, scenario.cluster
    if workload.num_requests is None:  # the whole trace: bounded by the file
        return
    pools = [p for p in (cluster.prefill, cluster.decode) if p is not None]
    groups = [g.engine_config(engine) for g in cluster.groups or ()]
    max_seqs = max([engine.max_num_seqs, *(p.max_num_seqs or 0 for p in pools),
                    *(g.max_num_seqs for g in groups)])
    width = engine.speculative.num_speculative_tokens + 1 if engine.speculative else 1
    check_run_memory(workload.num_requests, mean_output_tokens(workload.lengths),
                     max_seqs * width)


def _check_blocks(
    num_blocks: int, engine: EngineConfig, gpu: GpuSpec, model: ModelSpec, gpus: int, prefix: str
) -> None:
    if num_blocks < 1:
        raise InputError(
            f"{model.name} weights ({fmt_number(model.weight_bytes / GIB)} GiB over {gpus} GPUs) "
            f"leave no KV-cache memory on {gpu.name} at gpu_memory_utilization="
            f"{engine.gpu_memory_utilization}",
            field=f"{prefix}tp" if prefix else "engine.gpu_memory_utilization",
        )


def _host_link(gpu: GpuSpec, field: str) -> LinkSpec:
    """The link between a GPU and host memory (its PCIe generation, from the GPU catalog)."""
    if gpu.host_link is None:
        raise InputError(
            f"the GPU catalog gives {gpu.name} no host_link (its link to host memory), which KV "
            "swap and CPU offload copy over; add host_link to its entry in a catalog file",
            field=field,
        )
    return resolve_link(gpu.host_link, field=field)


def _check_host_memory(engine: EngineConfig, gpu: GpuSpec, field: str) -> None:
    """Refuse host memory tiers larger than the host memory per GPU the catalog gives."""
    per_gpu_gib = engine.swap_space_gb if engine.preemption == "swap" else 0.0
    what = "swap space"
    if engine.kv_offload is not None:
        per_gpu_gib += engine.kv_offload.cpu_gb
        what = "swap space and CPU offload" if engine.preemption == "swap" else "CPU offload"
    if gpu.host_memory_gib is None or per_gpu_gib <= gpu.host_memory_gib:
        return
    # NOTE: vLLM itself refuses swap space over 70% of the host's memory (CacheConfig.
    # verify_with_parallel_config); simserve refuses only what cannot exist.
    raise InputError(
        f"{fmt_number(per_gpu_gib)} GiB of {what} per GPU exceeds the "
        f"{fmt_number(gpu.host_memory_gib)} GiB of host memory per GPU of a {gpu.name} server "
        f"({gpu.host_source})",
        field=field,
    )


def _check_offload(engine: EngineConfig, prefix_caching: bool) -> None:
    """CPU offload keeps blocks the prefix cache evicts: refuse it without a cache."""
    if engine.kv_offload is not None and not prefix_caching:
        raise InputError(
            "CPU offload keeps blocks the prefix cache evicts, and prefix caching is off (set "
            "engine.enable_prefix_caching: true, or use a policy that caches by default)",
            field="engine.kv_offload",
        )


def _host_tiers(engine: EngineConfig, gpu: GpuSpec, model: ModelSpec, tp: int, pp: int,
                gpu_field: str, prefix_caching: bool) -> dict[str, object]:
    """A pool's host-memory settings (`PoolSetup.swap_blocks`, `offload_blocks`,
    `host_copy_s`, `kv_block_bytes`): none under recompute preemption without offload. CPU
    offload keeps prefix-cache blocks, so it applies to pools that cache prefixes (a
    disaggregated decode pool does not).

    NOTE: vLLM sizes both per GPU: GiB over one GPU's share of a block gives the CPU blocks,
    the same number on every GPU of the instance. Each GPU copies its own shard over its own
    host link (a server where two GPUs share a PCIe switch's uplink halves that); the stages
    of a pipeline copy their layers one after another, each before its forward pass, so a
    micro-batch waits for all of them.
    """
    offload = engine.kv_offload if prefix_caching else None
    swap = engine.preemption == "swap"
    if not swap and offload is None:
        return {}
    _check_host_memory(engine, gpu, "engine.swap_space_gb" if swap else "engine.kv_offload.cpu_gb")
    link = _host_link(gpu, gpu_field)
    block_bytes = float(model.kv_bytes_per_token_at(tp) * engine.block_size)
    per_gpu_block = block_bytes / (tp * pp)

    def copy_s(num_blocks: int) -> float:
        return pp * link.transfer_s(num_blocks * per_gpu_block)

    return {
        "swap_blocks": int(engine.swap_space_gb * GIB // per_gpu_block) if swap else 0,
        "offload_blocks": int(offload.cpu_gb * GIB // per_gpu_block) if offload else 0,
        "host_copy_s": copy_s,
        "kv_block_bytes": block_bytes,
    }


def _stage_send(gpu: GpuSpec, model: ModelSpec, pp: int) -> Callable[[int], float] | None:
    """Stage-to-stage send of a micro-batch's hidden states (N x hidden x dtype bytes) over
    the measured (Vidur send_recv) or catalog link of the GPU."""
    if pp == 1:
        return None
    link = stage_link(gpu.name, gpu.interconnect_gbps)
    bytes_per_token = model.hidden_size * model.dtype_bytes
    return lambda num_tokens: link.transfer_s(num_tokens * bytes_per_token)


def _pool_gpu(catalog: Catalog, name: str | None, scenario_gpu: GpuSpec, field: str) -> GpuSpec:
    """The catalog GPU a pool names (unset: the scenario's), errors naming the pool's field."""
    if name is None:
        return scenario_gpu
    try:
        return catalog.gpu(name)
    except InputError as exc:
        raise InputError(exc.message, field=field) from None


def _resolve_disaggregated(
    scenario: Scenario, catalog: Catalog, scenario_gpu: GpuSpec, model: ModelSpec,
    max_model_len: int,
) -> ResolvedScenario:
    """Each pool's limits and cost model (on its own GPU, at its own TP and PP), and the KV
    link."""
    cluster, engine = scenario.cluster, scenario.engine
    pools = []
    for role, pool in (("prefill", cluster.prefill), ("decode", cluster.decode)):
        assert pool is not None  # ClusterConfig fills unset pools
        prefix = f"cluster.{role}."
        gpu = _pool_gpu(catalog, pool.hardware, scenario_gpu, f"{prefix}hardware")
        policy_field = f"{prefix}policy" if pool.policy is not None else "engine.policy"
        policy = policy_class(pool.policy or engine.policy, policy_field)
        if not policy.admits_while_running:
            raise InputError(
                f"policy {policy.name} admits nobody while requests run (admits_while_running "
                f"is False), so it cannot serve a disaggregated {role} pool",
                field=policy_field,
            )
        queue = queue_class(pool.queue or engine.queue,
                            f"{prefix}queue" if pool.queue is not None else "engine.queue")
        tp = pool.tp or scenario.tp
        pp = pool.pp or scenario.pp
        _check_parallelism(model, tp, pp, prefix)
        num_blocks = pool.num_gpu_blocks_override or kv_cache_blocks(
            scenario, gpu, model, tp=tp, pp=pp)
        _check_blocks(num_blocks, engine, gpu, model, tp * pp, prefix)
        limits = EngineLimits(
            num_blocks=num_blocks,
            block_size=engine.block_size,
            max_num_seqs=pool.max_num_seqs or engine.max_num_seqs,
            max_num_batched_tokens=pool.max_num_batched_tokens or engine.max_num_batched_tokens,
            max_model_len=max_model_len,
        )
        per_engine = num_blocks // pp
        if role == "decode" and per_engine * engine.block_size < max_model_len:
            # NOTE: name the knob that set the capacity, so the fix is where the error points.
            if pool.num_gpu_blocks_override is not None:
                knob, fix = f"{prefix}num_gpu_blocks_override", "raise it"
            elif engine.num_gpu_blocks_override is not None:
                knob, fix = "engine.num_gpu_blocks_override", "raise it"
            else:
                knob, fix = f"{prefix}tp", "add GPUs (tp/pp)"
            raise InputError(
                f"a decode engine holds {per_engine * engine.block_size} KV tokens "
                f"({model.name}, tp={tp}, pp={pp}, {gpu.name}): not one {max_model_len}-token "
                f"request; {fix} or lower engine.max_model_len",
                field=knob,
            )
        cost_config = scenario.cost_model
        if pool.profile is not None:
            cost_config = dataclasses.replace(cost_config, profile=pool.profile)
        pool_engine = _with_generation(dataclasses.replace(
            engine, policy=pool.policy or engine.policy, max_num_seqs=limits.max_num_seqs,
            max_num_batched_tokens=limits.max_num_batched_tokens, speculative=None), policy)
        try:
            cost_model = build_cost_model(cost_config, gpu, model, tp, pool_engine)
        except InputError as exc:
            own_gpu = gpu.name == scenario_gpu.name
            if exc.field != "cost_model.profile" or (
                    pool.profile is None and tp == scenario.tp and own_gpu):
                raise
            # NOTE: a profile is fitted on one GPU at one TP; name the pool's field that
            # chose them (its profile, else its GPU) so the error points at a written line.
            field = f"{prefix}profile" if pool.profile is not None or own_gpu else (
                f"{prefix}hardware")
            raise InputError(
                f"{exc.message} (set {prefix}profile to a profile fitted on {gpu.name} at "
                f"tp={tp})",
                field=field,
            ) from None
        # NOTE: prompts are cached where they are computed, on the prefill pool; a decode
        # instance receives whole KV caches and only recomputes after a preemption.
        caching = role == "prefill" and _prefix_caching(engine, policy, policy_field)
        _check_router(pool.router, caching, f"{prefix}router")
        if role == "prefill":
            _check_offload(engine, caching)
        setup = PoolSetup(
            instances=pool.instances,
            limits=limits,
            cost_model=cost_model,
            policy=policy,
            queue=queue,
            router=pool.router,
            pp=pp,
            stage_send_s=_stage_send(gpu, model, pp),
            prefix_caching=caching,
            router_load_weight=cluster.router_load_weight,
            **_host_tiers(engine, gpu, model, tp, pp,
                          f"{prefix}hardware" if pool.hardware is not None else "hardware",
                          caching),
        )
        pools.append(ResolvedPool(role, setup, tp, pp, gpu))
    link_config = cluster.link
    kv_link = resolve_link(
        link_config.name or kv_link_gpu(pools[0].gpu, pools[1].gpu).interconnect,
        link_config.bandwidth_gbps,
        link_config.latency_us,
        field="cluster.link",
    )
    return ResolvedScenario(scenario, scenario_gpu, model, tuple(pools), kv_link=kv_link)


def kv_link_gpu(prefill: GpuSpec, decode: GpuSpec) -> GpuSpec:
    """The GPU whose interconnect carries KV caches when `cluster.link` names no link: the
    pools' GPU, or of two unlike GPUs the one with the slower interconnect.

    NOTE: a transfer leaves one GPU and enters the other, so it runs no faster than the
    slower of the two ends. Unlike GPUs sit in different servers in practice, joined by NICs
    rather than NVLink; this default is then an upper bound, and `cluster.link: net*` the
    realistic setting (docs/costs.md)."""
    if prefill.interconnect_gbps <= decode.interconnect_gbps:
        return prefill
    return decode


def _check_router(router: str, prefix_caching: bool, field: str) -> None:
    if router == "prefix_aware" and not prefix_caching:
        raise InputError(
            "prefix_aware routing needs prefix caching on the pool's engines (set "
            "engine.enable_prefix_caching: true; a decode pool never caches prefixes)",
            field=field,
        )


def _prefix_caching(engine: EngineConfig, policy: type[BatchingPolicy], policy_field: str) -> bool:
    """Whether the policy's engines cache prefixes: the scenario's choice, else the policy's
    default; a policy that reserves KV for whole sequences up front cannot."""
    wanted = engine.enable_prefix_caching
    if wanted is None:
        return policy.caches_prefixes_by_default and not policy.reserves_full_kv
    if wanted and policy.reserves_full_kv:
        raise InputError(
            f"policy {policy.name} reserves KV for whole sequences up front, so it cannot share "
            f"cached blocks; set engine.enable_prefix_caching: false or another {policy_field}",
            field="engine.enable_prefix_caching",
        )
    return wanted


def _with_generation(engine: EngineConfig, policy: type[BatchingPolicy]) -> EngineConfig:
    """The engine settings with `version` set: the scenario's, else the policy's generation."""
    if engine.version is not None:
        return engine
    return dataclasses.replace(engine, version=policy.engine_generation)


def _base_model(cost_model: CostModel) -> CostModel:
    """The forward-pass model under a serving-overhead wrapper."""
    return getattr(cost_model, "base", cost_model)


def _with_kv_dtype(model: ModelSpec, scenario: Scenario) -> ModelSpec:
    """The model with the scenario's KV-cache dtype (vLLM's kv_cache_dtype: fp8 = 1 byte)."""
    if scenario.engine.kv_cache_dtype == "fp8":
        return dataclasses.replace(model, kv_dtype_bytes=1)
    return model


def _draft_model(spec: SpeculativeConfig, catalog: Catalog, target: ModelSpec) -> ModelSpec | None:
    if spec.method != "draft" or spec.draft_model is None:
        return None
    try:
        draft = catalog.model(spec.draft_model)
    except InputError as exc:
        raise InputError(exc.message, field="engine.speculative.draft_model") from None
    if draft.vocab_size != target.vocab_size:
        raise InputError(
            f"draft {draft.name} has vocabulary {draft.vocab_size}, target {target.name} has "
            f"{target.vocab_size}: a draft must share the target's tokenizer",
            field="engine.speculative.draft_model",
        )
    return draft


def _draft_memory(
    spec: SpeculativeConfig | None, target: ModelSpec, draft: ModelSpec | None
) -> tuple[float, float]:
    """Weight bytes and KV bytes per token the drafter adds to the replica."""
    if spec is None:
        return 0.0, 0.0
    if draft is not None:
        return float(draft.weight_bytes), float(draft.kv_bytes_per_token)
    # NOTE: an EAGLE head / MTP module is about one decoder layer of the target (Li et al.
    # 2024; DeepSeek-V3): one layer's weights and one layer's KV per token.
    return target.weight_bytes / target.num_layers, target.kv_bytes_per_token / target.num_layers
