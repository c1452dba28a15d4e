"""Fit a latency + bandwidth line to Vidur's measured stage-to-stage send/recv times.

A pipeline-parallel stage hands its activations to the next stage with one NCCL send/recv
between two GPUs. Vidur profiles exactly that (`torch.distributed.send`/`recv` of an fp16 buffer
between ranks 0 and 1, NCCL kernel time from the PyTorch profiler, median over repeated launches;
github.com/microsoft/vidur, `vidur/profiling/collectives/`). `calibration/extract_vidur.py`
reduces the profiles to `calibration/data/vidur/send_recv.csv`; `fit_send_recv` fits

    time = latency + bytes / bandwidth

per (GPU, topology) to the rows with both GPUs in ONE node (`devices_per_node == num_workers`):
the placement of a PP stage boundary inside a node, and the rows Vidur's own predictor uses for
single-node PP. Rows with one GPU per node cross the network and are not fitted here.

The fit minimises the RELATIVE error prediction / measured - 1 with
`scipy.optimize.least_squares`, so a 5 us message weighs as much as a 200 us one; an absolute
fit would let the 64 MiB messages decide alone and drive the latency negative. The shipped
`*-pp` entries of `simserve/data/links.yaml` are this function's output, rounded; a test refits
and compares.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from simserve.errors import InputError

__all__ = ["SEND_RECV_COLUMNS", "SendRecvFit", "fit_send_recv"]

SEND_RECV_COLUMNS: tuple[str, ...] = (
    "gpu",
    "topology",
    "size_bytes",
    "num_workers",
    "devices_per_node",
    "median_ms",
)


@dataclass(frozen=True)
class SendRecvFit:
    """One (GPU, topology) fit: `latency_us` + bytes / (`bandwidth_gbps` x 1e9) seconds.

    `mape_pct` and `max_err_pct` are the mean and largest |prediction / measured - 1| in percent
    over the `num_points` fitted rows, whose message sizes span `min_bytes`..`max_bytes`.
    """

    gpu: str
    topology: str
    latency_us: float
    bandwidth_gbps: float
    mape_pct: float
    max_err_pct: float
    num_points: int
    min_bytes: int
    max_bytes: int


def _read_rows(path: Path) -> list[dict[str, str]]:
    source = str(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in SEND_RECV_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise InputError(
                    f"missing column(s) {', '.join(missing)}; expected "
                    f"{', '.join(SEND_RECV_COLUMNS)} (calibration/extract_vidur.py writes them)",
                    field=missing[0],
                    source=source,
                    line=1,
                )
            return list(reader)
    except FileNotFoundError:
        raise InputError("send/recv CSV not found", source=source) from None


def _fit_one(size_bytes: np.ndarray, time_s: np.ndarray) -> tuple[float, float]:
    """(latency_us, bandwidth_gbps) minimising the relative error of latency + bytes / bw."""

    # Variables: latency in us and inverse bandwidth in us per MB (1e6 bytes), both O(1-100)
    # for these links, so the optimiser sees a well-scaled problem. The model is linear in
    # them, so the relative-error least-squares minimum is unique and the refit reproducible.
    def residuals(p: np.ndarray) -> np.ndarray:
        return (p[0] * 1e-6 + size_bytes * p[1] * 1e-12) / time_s - 1.0

    fit = least_squares(residuals, x0=[5.0, 5.0], bounds=([0.0, 1e-6], [np.inf, np.inf]))
    latency_us, us_per_mb = (float(v) for v in fit.x)
    return latency_us, 1e3 / us_per_mb  # 1e6 bytes / (us_per_mb x 1e-6 s) / 1e9 -> GB/s


def fit_send_recv(csv_path: str | Path) -> dict[tuple[str, str], SendRecvFit]:
    """Intra-node send/recv fits of a `send_recv.csv` extract, keyed by (gpu, topology).

    Only rows with `devices_per_node == num_workers` (both GPUs in one node) are fitted; a
    (gpu, topology) with no such row is absent from the result.
    """
    path = Path(csv_path)
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row_number, rec in enumerate(_read_rows(path), start=2):
        try:
            num_workers = int(rec["num_workers"])
            devices_per_node = int(rec["devices_per_node"])
            size = float(rec["size_bytes"])
            time_s = float(rec["median_ms"]) * 1e-3
        except ValueError as exc:
            raise InputError(f"bad number: {exc}", source=str(path), line=row_number) from None
        if devices_per_node != num_workers:
            continue  # one GPU per node: the network, not an in-node stage boundary
        if size <= 0 or time_s <= 0:
            raise InputError(
                "size_bytes and median_ms must be > 0", source=str(path), line=row_number
            )
        groups.setdefault((rec["gpu"], rec["topology"]), []).append((size, time_s))
    return {key: _summarise(key, points) for key, points in sorted(groups.items())}


def _summarise(key: tuple[str, str], points: Sequence[tuple[float, float]]) -> SendRecvFit:
    size_bytes = np.array([p[0] for p in points])
    time_s = np.array([p[1] for p in points])
    latency_us, bandwidth_gbps = _fit_one(size_bytes, time_s)
    predicted = latency_us * 1e-6 + size_bytes / (bandwidth_gbps * 1e9)
    rel_pct = np.abs(predicted / time_s - 1.0) * 100.0
    return SendRecvFit(
        gpu=key[0],
        topology=key[1],
        latency_us=latency_us,
        bandwidth_gbps=bandwidth_gbps,
        mape_pct=float(rel_pct.mean()),
        max_err_pct=float(rel_pct.max()),
        num_points=int(size_bytes.size),
        min_bytes=int(size_bytes.min()),
        max_bytes=int(size_bytes.max()),
    )
