"""Data links for KV-cache transfers and pipeline-parallel send/recv: a latency + bandwidth line.

Disaggregated serving moves each request's KV cache from a prefill instance to a decode
instance; pipeline parallelism hands activations from one stage to the next. Both cost
`latency + bytes / bandwidth` per transfer on the link between the two GPUs. `load_links()`
reads the packaged `simserve/data/links.yaml` (nominal NVLink, PCIe and NIC links from
datasheets, and send/recv fits to Vidur's measurements, cited there) or a user file of the same
shape; `resolve_link()` turns a scenario's link setting (a catalog name with optional overrides,
or two numbers) into a `LinkSpec`; `stage_link()` picks the link of a PP stage boundary inside
one node for a GPU. Every bad value raises `InputError` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simserve.catalog import check_number, check_text
from simserve.errors import InputError
from simserve.formatting import fmt_number
from simserve.resources import catalog_file
from simserve.yaml_lines import key_lines, line_for, read_yaml_file

__all__ = [
    "DEFAULT_STAGE_LATENCY_US",
    "LinkSpec",
    "load_links",
    "resolve_link",
    "stage_link",
]

# Latency of a derived stage link (a GPU with no measured send/recv fit): the order of the
# measured in-node NCCL send/recv fits in links.yaml (7.6 us H100 DGX, 13.2 us A100 DGX).
DEFAULT_STAGE_LATENCY_US = 10.0

_TOP_LEVEL = ("links", "stage_links")
_SPEC_FIELDS = ("bandwidth_gbps", "latency_us", "source")


@dataclass(frozen=True)
class LinkSpec:
    """One data link: `bandwidth_gbps` GB/s (1e9 bytes/s) per direction, `latency_us` per transfer.

    The bandwidth is what one GPU pair (NVLink, PCIe) or one NIC moves in one direction;
    `source` is a one-line citation of where the numbers come from.
    """

    name: str
    bandwidth_gbps: float
    latency_us: float
    source: str

    def __post_init__(self) -> None:
        check_text(self.name, "name")
        check_text(self.source, "source")
        bandwidth = check_number(self.bandwidth_gbps, "bandwidth_gbps")
        latency = check_number(self.latency_us, "latency_us", allow_zero=True)
        object.__setattr__(self, "bandwidth_gbps", bandwidth)
        object.__setattr__(self, "latency_us", latency)

    def transfer_s(self, num_bytes: float) -> float:
        """Seconds to move `num_bytes` bytes: latency + bytes / bandwidth."""
        if not math.isfinite(num_bytes) or num_bytes < 0:
            raise ValueError(f"num_bytes must be a finite number >= 0, got {num_bytes}")
        return self.latency_us * 1e-6 + num_bytes / (self.bandwidth_gbps * 1e9)


# --------------------------------------------------------------------------- YAML loading


@dataclass(frozen=True)
class _LinkCatalog:
    links: dict[str, LinkSpec]  # keyed by name as written
    stage_links: dict[str, str]  # case-folded GPU name -> link name


def _key(name: str) -> str:
    return name.strip().casefold()


def _parse(data: Any, text: str, source: str) -> _LinkCatalog:
    lines = key_lines(text)

    def fail(message: str, dotted: str) -> InputError:
        return InputError(message, field=dotted, source=source, line=line_for(dotted, lines))

    if data is None:
        return _LinkCatalog({}, {})
    if not isinstance(data, Mapping):
        raise InputError(
            "a links file must be a mapping with 'links:' and optional 'stage_links:' keys",
            source=source,
            line=1,
        )
    for key in data:
        if key not in _TOP_LEVEL:
            raise fail(f"unknown top-level key; expected {' or '.join(_TOP_LEVEL)}", str(key))
    links: dict[str, LinkSpec] = {}
    seen: dict[str, str] = {}
    entries = data.get("links")
    entries = {} if entries is None else entries
    if not isinstance(entries, Mapping):
        raise fail("must be a mapping of name -> fields", "links")
    for name, body in entries.items():
        where = f"links.{name}"
        if not isinstance(name, str) or not name.strip():
            raise fail("a link name must be a non-empty string", where)
        if _key(name) in seen:
            raise fail(
                f"duplicate link (names are case-insensitive; first as {seen[_key(name)]!r})",
                where,
            )
        seen[_key(name)] = name
        if not isinstance(body, Mapping):
            raise fail("must be a mapping of field -> value", where)
        for field_name in body:
            if field_name not in _SPEC_FIELDS:
                raise fail(f"unknown field; known fields: {', '.join(_SPEC_FIELDS)}",
                           f"{where}.{field_name}")
        missing = [f for f in _SPEC_FIELDS if f not in body]
        if missing:
            raise fail("required field is missing", f"{where}.{missing[0]}")
        try:
            links[name] = LinkSpec(name=name, **body)
        except InputError as exc:
            raise fail(exc.message, f"{where}.{exc.field}") from None
    stage_links: dict[str, str] = {}
    mapping = data.get("stage_links")
    mapping = {} if mapping is None else mapping
    if not isinstance(mapping, Mapping):
        raise fail("must be a mapping of GPU name -> link name", "stage_links")
    for gpu, link_name in mapping.items():
        where = f"stage_links.{gpu}"
        if not isinstance(gpu, str) or not gpu.strip():
            raise fail("a GPU name must be a non-empty string", where)
        if not isinstance(link_name, str) or _key(link_name) not in seen:
            raise fail(f"must name a link of this file; known: {', '.join(links)}", where)
        stage_links[_key(gpu)] = seen[_key(link_name)]
    return _LinkCatalog(links, stage_links)


def _read(path: Path, source: str) -> _LinkCatalog:
    data, text = read_yaml_file(path, "links file")
    return _parse(data, text, source)


def _packaged() -> _LinkCatalog:
    """The packaged links.yaml (a small file, read on each call: no process-wide state)."""
    return _read(catalog_file("links.yaml"), "simserve/data/links.yaml")


def load_links(path: str | Path | None = None) -> dict[str, LinkSpec]:
    """The links of the YAML file `path` by name (default: the packaged `links.yaml`).

    The file holds `links:`, a mapping of name -> {bandwidth_gbps, latency_us, source}, and
    optionally `stage_links:`, a mapping of GPU name -> link name.
    """
    catalog = _packaged() if path is None else _read(Path(path), str(path))
    return dict(catalog.links)


def _lookup(name: str, field: str) -> LinkSpec:
    links = _packaged().links
    by_key = {_key(n): spec for n, spec in links.items()}
    spec = by_key.get(_key(name))
    if spec is None:
        raise InputError(f"unknown link {name!r}; known: {', '.join(sorted(links))}", field=field)
    return spec


def resolve_link(
    name: str | None,
    bandwidth_gbps: float | None = None,
    latency_us: float | None = None,
    *,
    field: str = "cluster.link",
) -> LinkSpec:
    """The link a setting describes: a packaged catalog name (any case), with `bandwidth_gbps`
    and/or `latency_us` overriding its numbers when given; or, when `name` is None, a custom
    link, which then needs both numbers. Errors name `field` (e.g. "cluster.link.latency_us").
    """
    if name is None:
        missing = [
            f for f, v in (("bandwidth_gbps", bandwidth_gbps), ("latency_us", latency_us))
            if v is None
        ]
        if missing:
            raise InputError(
                f"a custom link (no name) needs both bandwidth_gbps and latency_us; "
                f"missing {' and '.join(missing)} (or name a catalog link: "
                f"{', '.join(sorted(_packaged().links))})",
                field=f"{field}.{missing[0]}",
            )
        base_name, source = "custom", "user-specified bandwidth_gbps and latency_us"
        values: dict[str, Any] = {"bandwidth_gbps": bandwidth_gbps, "latency_us": latency_us}
    else:
        if not isinstance(name, str):
            raise InputError(f"must be a link name, got {name!r}", field=field)
        base = _lookup(name, field)
        overrides = {
            f: v for f, v in (("bandwidth_gbps", bandwidth_gbps), ("latency_us", latency_us))
            if v is not None
        }
        base_name, source = base.name, base.source
        if overrides:
            shown = ", ".join(f"{f}={v}" for f, v in overrides.items())
            source = f"{base.source}; overridden: {shown}"
        values = {"bandwidth_gbps": base.bandwidth_gbps, "latency_us": base.latency_us,
                  **overrides}
    try:
        return LinkSpec(name=base_name, source=source, **values)
    except InputError as exc:
        raise InputError(exc.message, field=f"{field}.{exc.field}") from None


def stage_link(gpu_name: str, interconnect_gbps: float | None = None) -> LinkSpec:
    """The link of a PP stage boundary inside one node of `gpu_name` GPUs.

    The measured send/recv fit when links.yaml has one for that GPU (any case; the argument is
    then ignored); otherwise a link of `interconnect_gbps` (the GPU's catalog interconnect, a
    datasheet peak, not derated) with `DEFAULT_STAGE_LATENCY_US`.
    """
    catalog = _packaged()
    link_name = catalog.stage_links.get(_key(gpu_name)) if isinstance(gpu_name, str) else None
    if link_name is not None:
        return catalog.links[link_name]
    if interconnect_gbps is None:
        raise InputError(
            f"no measured stage link for GPU {gpu_name!r} (measured: "
            f"{', '.join(sorted(catalog.stage_links))}); pass its interconnect_gbps",
            field="hardware",
        )
    bandwidth_gbps = check_number(interconnect_gbps, "interconnect_gbps")
    return LinkSpec(
        name=f"{gpu_name}-pp-derived",
        bandwidth_gbps=bandwidth_gbps,
        latency_us=DEFAULT_STAGE_LATENCY_US,
        source=(
            f"derived: no measured send/recv for {gpu_name}; bandwidth = its interconnect_gbps "
            f"({fmt_number(bandwidth_gbps)} GB/s, datasheet peak, not derated), latency = default "
            f"{fmt_number(DEFAULT_STAGE_LATENCY_US)} us (order of the measured A100/H100 fits)"
        ),
    )
