"""Everything the engine needs to run a workload, as plain frozen values (no SimPy).

`resolve` turns a scenario into an `EngineSetup` for every kind of cluster: co-located
replicas in one pool or in one pool per replica group (unlike GPUs or settings behind one
router), or a prefill pool handing KV caches to a decode pool over a link; each
pool names its batching policy and queue order as classes (built in or the user's), its limits
and cost model; speculation applies to the co-located replicas. `engine.simulation.simulate`
takes it as is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from simserve.config import AcceptanceConfig, SpeculativeConfig
from simserve.costmodel.base import CostModel
from simserve.engine.policies import BatchingPolicy
from simserve.engine.queues import FCFSQueue

__all__ = ["EngineLimits", "EngineSetup", "PoolSetup", "Speculation"]


@dataclass(frozen=True)
class EngineLimits:
    """Per-replica limits the engine enforces (resolved from the scenario and the catalog)."""

    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


@dataclass(frozen=True)
class PoolSetup:
    """A pool of identical instances. `limits` are per instance (all its stages); with `pp`
    stages each virtual engine gets `num_blocks // pp` blocks. `stage_send_s(num_tokens)` is
    the stage-to-stage activation send of a micro-batch (None: free)."""

    instances: int
    limits: EngineLimits
    cost_model: CostModel
    policy: type[BatchingPolicy]
    queue: type[FCFSQueue] = FCFSQueue
    router: str = "round_robin"
    pp: int = 1
    stage_send_s: Callable[[int], float] | None = None
    #: Automatic prefix caching on this pool's engines (vLLM's enable_prefix_caching).
    prefix_caching: bool = False
    #: `prefix_aware` routing: weight of the load against the cached share of the prompt.
    router_load_weight: float = 0.5
    #: Swap preemption (vLLM v0): CPU blocks per instance (0: recompute preemption), shared
    #: out among its virtual engines like the GPU blocks.
    swap_blocks: int = 0
    #: Seconds to copy `n` KV blocks of one engine between GPU and host memory (swap).
    host_copy_s: Callable[[int], float] | None = None
    #: Bytes of one KV block over all the instance's GPUs (what a swapped block moves).
    kv_block_bytes: float = 0.0
    #: CPU offload (vLLM V1 connector): host-memory blocks per instance for blocks the prefix
    #: cache evicts (0: off), shared out among its virtual engines.
    offload_blocks: int = 0

    def __post_init__(self) -> None:
        if self.prefix_caching and self.policy.reserves_full_kv:
            raise ValueError(f"policy {self.policy.name} reserves KV up front: no prefix caching")
        if self.router == "prefix_aware" and not self.prefix_caching:
            raise ValueError("prefix_aware routing needs prefix caching on the pool")
        if (self.swap_blocks or self.offload_blocks) and self.host_copy_s is None:
            raise ValueError("swap and CPU offload need the host link's copy time")
        if self.offload_blocks and not self.prefix_caching:
            raise ValueError("CPU offload keeps prefix-cache blocks: it needs prefix caching")

    @property
    def blocks_per_engine(self) -> int:
        return self.limits.num_blocks // self.pp


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding as the engine runs it: k drafted tokens per decoding request,
    how many the target accepts, and the batch size above which it is switched off."""

    num_speculative_tokens: int
    acceptance: AcceptanceConfig
    disable_above_batch: int | None = None

    @classmethod
    def from_config(cls, config: SpeculativeConfig) -> Speculation:
        return cls(config.num_speculative_tokens, config.acceptance, config.disable_above_batch)


@dataclass(frozen=True)
class EngineSetup:
    """The pools of a cluster, and the KV transfer time between pools
    (`kv_transfer_s(num_tokens)`, disaggregated only), and speculation.

    Co-located (no transfer time): one pool per replica group (one pool of identical replicas
    without groups), every replica of every pool behind one router. Disaggregated: prefill
    then decode."""

    pools: tuple[PoolSetup, ...]
    kv_transfer_s: Callable[[int], float] | None = None
    speculation: Speculation | None = None

    def __post_init__(self) -> None:
        if not self.pools:
            raise ValueError("a cluster has at least one pool")
        if self.kv_transfer_s is not None and len(self.pools) != 2:
            raise ValueError(f"a disaggregated cluster has two pools, got {len(self.pools)}")
        if self.speculation is not None and self.kv_transfer_s is not None:
            raise ValueError("speculative decoding runs on co-located replicas only")
        if len({(p.router, p.router_load_weight) for p in self.pools}) > 1 \
                and self.kv_transfer_s is None:
            raise ValueError("co-located replica groups share one router")

    @property
    def disaggregated(self) -> bool:
        return self.kv_transfer_s is not None

    @classmethod
    def colocated(
        cls,
        policy: type[BatchingPolicy],
        cost_model: CostModel,
        limits: EngineLimits,
        *,
        replicas: int = 1,
        queue: type[FCFSQueue] = FCFSQueue,
        router: str = "round_robin",
        pp: int = 1,
        stage_send_s: Callable[[int], float] | None = None,
        speculation: Speculation | None = None,
        prefix_caching: bool = False,
        swap_blocks: int = 0,
        host_copy_s: Callable[[int], float] | None = None,
        offload_blocks: int = 0,
    ) -> EngineSetup:
        """One pool of `replicas` co-located instances."""
        pool = PoolSetup(replicas, limits, cost_model, policy, queue, router, pp, stage_send_s,
                         prefix_caching, swap_blocks=swap_blocks, host_copy_s=host_copy_s,
                         offload_blocks=offload_blocks)
        return cls((pool,), speculation=speculation)
