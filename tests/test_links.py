"""Tests of the data-link catalog: arithmetic, packaged entries, resolution, stage links, refit."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest

from simserve.calibration.paths import DATA_DIR
from simserve.calibration.send_recv import fit_send_recv
from simserve.catalog import load_catalog
from simserve.errors import InputError
from simserve.links import (
    DEFAULT_STAGE_LATENCY_US,
    LinkSpec,
    load_links,
    resolve_link,
    stage_link,
)

SEND_RECV_CSV = DATA_DIR / "vidur" / "send_recv.csv"

# Datasheet/standard bandwidths (GB/s per direction) of the nominal entries; see links.yaml.
NOMINAL_GBPS = {
    "nvlink3": 300.0,  # A100: 600 GB/s bidirectional
    "nvlink4": 450.0,  # H100: 900 GB/s bidirectional
    "nvlink5": 900.0,  # B200/GB200: 1.8 TB/s bidirectional
    "infinity_fabric": 64.0,  # MI300X: 128 GB/s bidirectional per peer link
    "net100g": 12.5,
    "net200g": 25.0,
    "net400g": 50.0,
}
# Raw PCIe x16 bandwidth per direction after 128b/130b encoding, which the effective figure
# (after packet overhead) must stay below.
PCIE_RAW_GBPS = {"pcie4": 16 * 16 / 8 * 128 / 130, "pcie5": 32 * 16 / 8 * 128 / 130}
# Shipped measured entries -> the (gpu, topology) of the fit they come from.
MEASURED = {
    "a100-80gb-sxm-pp": ("a100-80gb-sxm", "dgx"),
    "h100-80gb-sxm-pp": ("h100-80gb-sxm", "dgx"),
}
# Largest MAPE a shipped send/recv fit may have. A latency + bandwidth line cannot follow NCCL's
# protocol switches with message size, and the residuals say so: on A100 DGX they are systematic
# (-18% at 64-256 KiB, +9% at 4-16 MiB, -16% above 40 MiB), not noise, so the best such line on
# relative error has MAPE 10.3% there (H100: 2.9%). 12% is that optimum plus room for a refit on
# a rounded or re-extracted CSV; it rejects the usual broken fit, least squares on ABSOLUTE
# error (16.3% on A100, whose 64 MiB points then decide alone).
MAPE_TOLERANCE_PCT = 12.0


# --------------------------------------------------------------------------- LinkSpec


def test_transfer_s_is_latency_plus_bytes_over_bandwidth() -> None:
    link = LinkSpec("x", bandwidth_gbps=100.0, latency_us=10.0, source="test")
    assert link.transfer_s(0) == pytest.approx(10e-6)
    assert link.transfer_s(1e9) == pytest.approx(10e-6 + 0.01)
    # 2 MiB at 450 GB/s + 7.59 us
    h100 = LinkSpec("y", bandwidth_gbps=450.0, latency_us=7.59, source="test")
    assert h100.transfer_s(2 * 2**20) == pytest.approx(7.59e-6 + 2 * 2**20 / 450e9, rel=1e-12)
    with pytest.raises(ValueError):
        link.transfer_s(-1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bandwidth_gbps": 0.0, "latency_us": 1.0}, "bandwidth_gbps"),
        ({"bandwidth_gbps": -5.0, "latency_us": 1.0}, "bandwidth_gbps"),
        ({"bandwidth_gbps": math.inf, "latency_us": 1.0}, "bandwidth_gbps"),
        ({"bandwidth_gbps": True, "latency_us": 1.0}, "bandwidth_gbps"),
        ({"bandwidth_gbps": 1.0, "latency_us": -1.0}, "latency_us"),
        ({"bandwidth_gbps": 1.0, "latency_us": "5"}, "latency_us"),
    ],
)
def test_linkspec_rejects_bad_numbers(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as err:
        LinkSpec("x", source="test", **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_linkspec_allows_zero_latency_and_is_frozen() -> None:
    link = LinkSpec("x", bandwidth_gbps=1, latency_us=0, source="test")
    assert link.transfer_s(1e9) == pytest.approx(1.0)
    assert isinstance(link.bandwidth_gbps, float)
    with pytest.raises(AttributeError):
        link.latency_us = 3.0  # type: ignore[misc]


# --------------------------------------------------------------------------- packaged catalog


def test_every_packaged_link_loads_with_a_citation() -> None:
    links = load_links()
    assert set(links) == {*NOMINAL_GBPS, *PCIE_RAW_GBPS, *MEASURED}
    for name, link in links.items():
        assert link.name == name
        assert link.bandwidth_gbps > 0 and link.latency_us >= 0
        assert len(link.source) > 20, name


def test_nominal_links_carry_datasheet_bandwidths() -> None:
    links = load_links()
    for name, gbps in NOMINAL_GBPS.items():
        assert links[name].bandwidth_gbps == gbps, name
    for name, raw in PCIE_RAW_GBPS.items():
        # Effective (after TLP/DLLP overhead): below the raw rate, above 85% of it.
        assert 0.85 * raw < links[name].bandwidth_gbps < raw, name
    assert links["pcie5"].bandwidth_gbps == 2 * links["pcie4"].bandwidth_gbps
    # In-node links cost more per transfer than an RDMA NIC's wire, but both are microseconds.
    assert all(1 <= link.latency_us <= 20 for link in links.values())


def test_nvlink_entries_match_the_gpu_catalog() -> None:
    catalog = load_catalog()
    links = load_links()
    for gpu_name in ("a100-80gb-sxm", "h100-80gb-sxm"):
        gpu = catalog.gpu(gpu_name)
        assert links[gpu.interconnect].bandwidth_gbps == gpu.interconnect_gbps


def test_every_catalog_gpu_names_a_link_of_the_catalog() -> None:
    # A disaggregated cluster without cluster.link transfers KV over the GPUs' interconnect.
    catalog = load_catalog()
    links = load_links()
    for gpu_name in catalog.gpus:
        gpu = catalog.gpu(gpu_name)
        assert gpu.interconnect in links, gpu_name
        # The catalog's bandwidth aggregates all of a GPU's links; one pair gets at most that.
        assert links[gpu.interconnect].bandwidth_gbps <= gpu.interconnect_gbps, gpu_name


def test_measured_links_are_below_the_datasheet_peak() -> None:
    links = load_links()
    assert links["a100-80gb-sxm-pp"].bandwidth_gbps < links["nvlink3"].bandwidth_gbps
    assert links["h100-80gb-sxm-pp"].bandwidth_gbps < links["nvlink4"].bandwidth_gbps


# --------------------------------------------------------------------------- resolve_link


def test_resolve_catalog_name_any_case() -> None:
    link = resolve_link("NVLink4")
    assert link == load_links()["nvlink4"]


def test_resolve_overrides_one_number_and_says_so() -> None:
    base = load_links()["nvlink4"]
    link = resolve_link("nvlink4", latency_us=2)
    assert (link.bandwidth_gbps, link.latency_us) == (base.bandwidth_gbps, 2.0)
    assert "overridden: latency_us=2" in link.source
    link = resolve_link("net200g", bandwidth_gbps=20.0, latency_us=0)
    assert (link.bandwidth_gbps, link.latency_us) == (20.0, 0.0)
    assert link.transfer_s(20e9) == pytest.approx(1.0)


def test_resolve_custom_link_needs_both_numbers() -> None:
    link = resolve_link(None, bandwidth_gbps=40, latency_us=3)
    assert (link.name, link.bandwidth_gbps, link.latency_us) == ("custom", 40.0, 3.0)
    with pytest.raises(InputError) as err:
        resolve_link(None, bandwidth_gbps=40)
    assert err.value.field == "cluster.link.latency_us"
    assert "needs both" in err.value.message and "nvlink4" in err.value.message
    with pytest.raises(InputError) as err:
        resolve_link(None)
    assert err.value.field == "cluster.link.bandwidth_gbps"


def test_resolve_unknown_name_lists_known_names() -> None:
    with pytest.raises(InputError) as err:
        resolve_link("nvlink9")
    assert err.value.field == "cluster.link"
    assert "nvlink9" in err.value.message
    for name in load_links():
        assert name in err.value.message
    with pytest.raises(InputError) as err:
        resolve_link("nvlink9", field="disagg.kv_link")
    assert err.value.field == "disagg.kv_link"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("nvlink3", 0), "cluster.link.bandwidth_gbps"),
        ((None, 0, 5), "cluster.link.bandwidth_gbps"),
        (("pcie4", None, -1), "cluster.link.latency_us"),
    ],
)
def test_resolve_bad_number_names_the_field(args: tuple[object, ...], field: str) -> None:
    with pytest.raises(InputError) as err:
        resolve_link(*args)  # type: ignore[arg-type]
    assert err.value.field == field
    assert field in str(err.value)


# --------------------------------------------------------------------------- user files


def test_load_links_from_a_user_file(tmp_path: Path) -> None:
    path = tmp_path / "links.yaml"
    path.write_text(
        "links:\n"
        "  rack-fabric:\n"
        "    bandwidth_gbps: 80\n"
        "    latency_us: 4\n"
        "    source: our measurement\n"
    )
    links = load_links(path)
    assert list(links) == ["rack-fabric"]
    assert links["rack-fabric"].transfer_s(80e9) == pytest.approx(1.0 + 4e-6)


@pytest.mark.parametrize(
    ("body", "field", "line"),
    [
        ("links:\n  bad:\n    bandwidth_gbps: 0\n    latency_us: 1\n    source: s\n",
         "links.bad.bandwidth_gbps", 3),
        ("links:\n  bad:\n    bandwidth_gbps: 1\n    source: s\n", "links.bad.latency_us", 2),
        ("links:\n  bad:\n    bandwidth_gbps: 1\n    latency_us: 1\n    source: s\n"
         "    gbps: 3\n", "links.bad.gbps", 6),
        ("links:\n  a:\n    bandwidth_gbps: 1\n    latency_us: 1\n    source: s\n"
         "stage_links:\n  h100: nope\n", "stage_links.h100", 7),
        ("linkz: {}\n", "linkz", 1),
    ],
)
def test_bad_user_file_names_field_file_and_line(
    tmp_path: Path, body: str, field: str, line: int
) -> None:
    path = tmp_path / "links.yaml"
    path.write_text(body)
    with pytest.raises(InputError) as err:
        load_links(path)
    assert (err.value.field, err.value.source, err.value.line) == (field, str(path), line)


def test_missing_user_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_links(tmp_path / "absent.yaml")


# --------------------------------------------------------------------------- stage links


@pytest.mark.parametrize(("gpu", "entry"), [("a100-80gb-sxm", "a100-80gb-sxm-pp"),
                                            ("H100-80GB-SXM", "h100-80gb-sxm-pp")])
def test_stage_link_is_the_measured_fit(gpu: str, entry: str) -> None:
    link = stage_link(gpu)
    assert link == load_links()[entry]
    assert "Vidur" in link.source and "MAPE" in link.source
    # The measured fit wins over a datasheet figure passed in.
    assert stage_link(gpu, interconnect_gbps=999.0) == link


def test_stage_link_fitted_values() -> None:
    a100, h100 = stage_link("a100-80gb-sxm"), stage_link("h100-80gb-sxm")
    assert (a100.bandwidth_gbps, a100.latency_us) == (285.8, 13.16)
    assert (h100.bandwidth_gbps, h100.latency_us) == (357.5, 7.59)
    # 4096 tokens x hidden 8192 x 2 bytes (a Llama-70B prefill handoff): ~0.2-0.25 ms.
    assert a100.transfer_s(4096 * 8192 * 2) == pytest.approx(13.16e-6 + 67108864 / 285.8e9)


def test_stage_link_falls_back_to_the_interconnect() -> None:
    l40s = load_catalog().gpu("l40s")
    link = stage_link(l40s.name, l40s.interconnect_gbps)
    assert link.bandwidth_gbps == l40s.interconnect_gbps
    assert link.latency_us == DEFAULT_STAGE_LATENCY_US
    assert "derived" in link.source and "default" in link.source
    with pytest.raises(InputError) as err:
        stage_link("tpu-v9")
    assert "interconnect_gbps" in err.value.message and "a100-80gb-sxm" in err.value.message
    with pytest.raises(InputError) as err:
        stage_link("tpu-v9", 0.0)
    assert err.value.field == "interconnect_gbps"


# --------------------------------------------------------------------------- the fit


def _stated_mape_pct(source: str) -> float:
    match = re.search(r"MAPE (\d+(?:\.\d+)?)%", source)
    assert match, f"no 'MAPE x.x%' in source: {source!r}"
    return float(match.group(1))


def test_shipped_fits_match_a_refit_within_one_percent() -> None:
    fits = fit_send_recv(SEND_RECV_CSV)
    links = load_links()
    for entry, key in MEASURED.items():
        fit, link = fits[key], links[entry]
        assert link.latency_us == pytest.approx(fit.latency_us, rel=0.01), entry
        assert link.bandwidth_gbps == pytest.approx(fit.bandwidth_gbps, rel=0.01), entry
        assert _stated_mape_pct(link.source) == pytest.approx(fit.mape_pct, abs=0.05), entry


def test_fitted_mape_is_below_tolerance_and_beats_the_datasheet_link() -> None:
    fits = fit_send_recv(SEND_RECV_CSV)
    links = load_links()
    nominal = {"a100-80gb-sxm": links["nvlink3"], "h100-80gb-sxm": links["nvlink4"]}
    rows = list(csv.DictReader(SEND_RECV_CSV.open(newline="")))
    for key in MEASURED.values():
        fit = fits[key]
        assert fit.mape_pct < MAPE_TOLERANCE_PCT, key
        # The fit must predict the same rows better than the datasheet link (peak + 10 us).
        sel = [r for r in rows if (r["gpu"], r["topology"]) == key
               and r["devices_per_node"] == r["num_workers"]]
        size = np.array([float(r["size_bytes"]) for r in sel])
        measured_s = np.array([float(r["median_ms"]) for r in sel]) * 1e-3
        peak = nominal[key[0]]
        nominal_pred = np.array([peak.transfer_s(s) for s in size])
        nominal_mape = float(np.mean(np.abs(nominal_pred / measured_s - 1.0)) * 100)
        assert fit.mape_pct < nominal_mape, key


def test_fit_uses_only_rows_with_both_gpus_in_one_node() -> None:
    rows = list(csv.DictReader(SEND_RECV_CSV.open(newline="")))
    cross_node = [r for r in rows if r["devices_per_node"] != r["num_workers"]]
    assert cross_node, "the extract keeps the cross-node rows; the fit must skip them"
    fits = fit_send_recv(SEND_RECV_CSV)
    for (gpu, topology), fit in fits.items():
        in_node = [r for r in rows if (r["gpu"], r["topology"]) == (gpu, topology)
                   and r["devices_per_node"] == r["num_workers"]]
        assert fit.num_points == len(in_node) == 994
        assert (fit.min_bytes, fit.max_bytes) == (2048, 64 * 2**20)


def test_fit_recovers_a_known_line(tmp_path: Path) -> None:
    # Exact latency + bytes/bandwidth data (in node) plus slow cross-node rows that must be
    # ignored: the fit returns the line and a zero MAPE.
    path = tmp_path / "send_recv.csv"
    sizes = [2048 * 4**k for k in range(9)]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["gpu", "topology", "size_bytes", "num_workers", "devices_per_node",
                         "median_ms"])
        for size in sizes:
            writer.writerow(["g", "t", size, 2, 2, (6e-6 + size / 200e9) * 1e3])
            writer.writerow(["g", "t", size, 2, 1, (50e-6 + size / 5e9) * 1e3])
    fit = fit_send_recv(path)[("g", "t")]
    assert fit.latency_us == pytest.approx(6.0, rel=1e-4)
    assert fit.bandwidth_gbps == pytest.approx(200.0, rel=1e-4)
    assert fit.mape_pct < 1e-3 and fit.num_points == len(sizes)


def test_fit_rejects_a_csv_without_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("size,time\n1,2\n")
    with pytest.raises(InputError) as err:
        fit_send_recv(path)
    assert err.value.source == str(path) and err.value.field == "gpu"
