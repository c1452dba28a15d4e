"""What a cluster's GPUs cost to rent and to power: each pool's price per GPU-hour and its idle
and maximum board power, from the catalog (`simserve/data/gpus.yaml`, sources cited there) with
the scenario's `cost:` overrides.

The energy model that uses the powers is `simserve.metrics.energy`; this module only says which
figures apply and checks them: an override for a GPU the catalog lacks, or an idle power above
the maximum once catalog and overrides are combined, is a one-line `InputError` naming the
field; so is a cluster whose GPU has no price or power when the scenario reports costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simserve.catalog import Catalog, GpuSpec, check_power
from simserve.config import CostConfig
from simserve.errors import InputError

if TYPE_CHECKING:
    from simserve.resolve import ResolvedScenario

__all__ = [
    "GpuRates",
    "check_cost_config",
    "check_rates_known",
    "cluster_usd_per_hour",
    "gpu_rates",
]

_SECTIONS = ("gpu_hour_usd", "idle_w", "tdp_w")


@dataclass(frozen=True)
class GpuRates:
    """The price and power figures that apply to one GPU model, and where each comes from.

    `usd_per_hour` is one GPU's on-demand price per hour (USD); `idle_w` and `tdp_w` its board
    power idle (with a CUDA context) and at full load (W). None: neither the catalog nor the
    scenario gives the figure.
    """

    gpu: str
    usd_per_hour: float | None
    idle_w: float | None
    tdp_w: float | None
    price_source: str
    power_source: str

    def describe(self) -> dict[str, object]:
        """The figures and their sources, for summary.json."""
        return {
            "usd_per_gpu_hour": self.usd_per_hour,
            "idle_w": self.idle_w,
            "tdp_w": self.tdp_w,
            "price_source": self.price_source,
            "power_source": self.power_source,
        }


def _override(section: Mapping[str, float], gpu: GpuSpec) -> float | None:
    """The scenario's value for `gpu` (GPU names compare case-insensitively)."""
    for name, value in section.items():
        if name.strip().casefold() == gpu.name.casefold():
            return float(value)
    return None


def gpu_rates(gpu: GpuSpec, cost: CostConfig | None) -> GpuRates:
    """The figures for `gpu`: the scenario's overrides where given, else the catalog's."""
    cost = cost or CostConfig()
    price = _override(cost.gpu_hour_usd, gpu)
    idle = _override(cost.idle_w, gpu)
    tdp = _override(cost.tdp_w, gpu)
    if price is not None:
        price_source = f"scenario: cost.gpu_hour_usd.{gpu.name}"
    elif gpu.price_usd_per_hour is not None:
        price_source = f"catalog: {gpu.price_source or 'no source given'} ({gpu.price_date})"
    else:
        price_source = "none"
    given = [name for name, v in (("idle_w", idle), ("tdp_w", tdp)) if v is not None]
    catalog_power = f"catalog: {gpu.power_source or 'no source given'}"
    if given:
        power_source = f"scenario: {', '.join(f'cost.{g}.{gpu.name}' for g in given)}"
        if len(given) < 2:
            power_source += f"; {catalog_power}"
    else:
        power_source = catalog_power
    return GpuRates(
        gpu=gpu.name,
        usd_per_hour=price if price is not None else gpu.price_usd_per_hour,
        idle_w=idle if idle is not None else gpu.idle_w,
        tdp_w=tdp if tdp is not None else gpu.tdp_w,
        price_source=price_source,
        power_source=power_source,
    )


def check_cost_config(cost: CostConfig, catalog: Catalog) -> None:
    """Refuse an override for a GPU the catalog lacks, or one that leaves a GPU's idle power
    above its maximum (errors name `cost.<section>.<gpu>`)."""
    for section in _SECTIONS:
        for name in getattr(cost, section):
            try:
                catalog.gpu(name)
            except InputError as exc:
                raise InputError(exc.message, field=f"cost.{section}.{name}") from None
    for name in {*cost.idle_w, *cost.tdp_w}:
        gpu = catalog.gpu(name)
        rates = gpu_rates(gpu, cost)
        field = f"cost.idle_w.{name}" if name in cost.idle_w else f"cost.tdp_w.{name}"
        check_power(rates.idle_w, rates.tdp_w, field)


def check_rates_known(resolved: ResolvedScenario) -> None:
    """Refuse to report costs for a cluster on a GPU without a price or power figure, naming
    the `cost` field that would give it."""
    cost = resolved.scenario.cost
    for pool in resolved.pools:
        rates = gpu_rates(pool.gpu, cost)
        missing = [(section, what) for section, what, value in (
            ("gpu_hour_usd", "price", rates.usd_per_hour),
            ("idle_w", "idle power", rates.idle_w),
            ("tdp_w", "maximum power (TDP)", rates.tdp_w),
        ) if value is None]
        if missing:
            section, what = missing[0]
            raise InputError(
                f"the catalog has no {what} for {pool.gpu.name} (used by {pool.label}); "
                f"set cost.{section}.{pool.gpu.name}",
                field="cost",
            )


def cluster_usd_per_hour(resolved: ResolvedScenario) -> float | None:
    """What the cluster's GPUs cost per hour (USD): GPUs x price, summed over the pools; None
    when a pool's GPU has no price."""
    total = 0.0
    for pool in resolved.pools:
        price = gpu_rates(pool.gpu, resolved.scenario.cost).usd_per_hour
        if price is None:
            return None
        total += pool.num_gpus * price
    return total
