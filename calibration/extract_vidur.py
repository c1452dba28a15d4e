"""Reduce Vidur's per-layer profiles to the columns simserve fits (run once; output is shipped).

Reads `<vidur>/profiling/compute/{a100,h100}/<org>/<model>/mlp.csv` (per-layer operator times in
ms, measured by Vidur) and writes one CSV with, per (GPU, model, TP, num_tokens), the model's
architecture columns and the MEDIAN time of the four linear projections (attn_pre_proj = fused
QKV, attn_post_proj = O, mlp_up_proj = fused gate+up, mlp_down_proj). Norms, rotary, activation
and residual-add columns are dropped: simserve models the linear layers only from this data.

Also reduces `profiling/network/{a100,h100}_dgx/all_reduce.csv` to rank-0 medians, and the
two-GPU `send_recv.csv` profiles of `{a100,h100}_dgx` and `a100_pairwise_nvlink` to medians per
(GPU, topology, message size, placement). `h100_pairwise_nvlink/send_recv.csv` is skipped: it is
byte-for-byte the A100 file (same md5 at the pinned commit), not an H100 measurement.

Usage: python calibration/extract_vidur.py /path/to/vidur calibration/data/vidur
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ARCH = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")
GPUS = {"a100": "a100-80gb-sxm", "h100": "h100-80gb-sxm"}


def extract_linear(vidur: Path, out: Path) -> int:
    """Write linear_ops.csv; returns the number of rows."""
    rows = []
    for path in sorted((vidur / "profiling" / "compute").glob("*/*/*/mlp.csv")):
        gpu = GPUS[path.parts[-4]]
        model = path.parts[-2]
        with path.open(newline="") as fh:
            for rec in csv.DictReader(fh):
                rows.append(
                    [gpu, model, *(rec[a] for a in ARCH), rec["num_tokens"],
                     rec["num_tensor_parallel_workers"]]
                    + [f"{float(rec[f'time_stats.{op}.median']):.5g}" for op in OPS]
                )
    header = ["gpu", "model", *ARCH, "num_tokens", "tp", *(f"{op}_ms" for op in OPS)]
    with (out / "linear_ops.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)


def extract_allreduce(vidur: Path, out: Path) -> int:
    """Write all_reduce.csv (rank 0, median ms, message size in bytes); returns rows."""
    rows = []
    for net in ("a100_dgx", "h100_dgx"):
        path = vidur / "profiling" / "network" / net / "all_reduce.csv"
        with path.open(newline="") as fh:
            for rec in csv.DictReader(fh):
                if rec["rank"] != "0" or rec["devices_per_node"] != rec["num_workers"]:
                    continue  # one node only: the TP setting simserve models
                rows.append([GPUS[net.split("_")[0]], rec["num_workers"], rec["size"],
                             f"{float(rec['time_stats.all_reduce.median']):.5g}"])
    with (out / "all_reduce.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["gpu", "num_workers", "size_bytes", "time_ms"])
        writer.writerows(rows)
    return len(rows)


# (Vidur network folder, catalog GPU, topology) of the send/recv profiles kept; see the docstring
# for why h100_pairwise_nvlink is not among them.
SEND_RECV = (
    ("a100_dgx", "a100-80gb-sxm", "dgx"),
    ("h100_dgx", "h100-80gb-sxm", "dgx"),
    ("a100_pairwise_nvlink", "a100-80gb-sxm", "pairwise_nvlink"),
)


def extract_send_recv(vidur: Path, out: Path) -> int:
    """Write send_recv.csv (rank 0, median ms, size in bytes, both placements); returns rows.

    Vidur's `size` column is already bytes (its profiler writes 2 x the fp16 element count).
    Both placements are kept: devices_per_node == num_workers (both GPUs in one node, the
    intra-node PP stage boundary simserve fits) and devices_per_node == 1 (one GPU per node,
    across the network).
    """
    rows = []
    for net, gpu, topology in SEND_RECV:
        path = vidur / "profiling" / "network" / net / "send_recv.csv"
        with path.open(newline="") as fh:
            for rec in csv.DictReader(fh):
                if rec["rank"] != "0":
                    continue
                rows.append([gpu, topology, rec["size"], rec["num_workers"],
                             rec["devices_per_node"],
                             f"{float(rec['time_stats.send_recv.median']):.5g}"])
    with (out / "send_recv.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["gpu", "topology", "size_bytes", "num_workers", "devices_per_node",
                         "median_ms"])
        writer.writerows(rows)
    return len(rows)


if __name__ == "__main__":
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    print(f"linear_ops.csv: {extract_linear(src, dst)} rows")
    print(f"all_reduce.csv: {extract_allreduce(src, dst)} rows")
    print(f"send_recv.csv: {extract_send_recv(src, dst)} rows")
