"""Names in a sweep directory (files and folders shared by the spec, worker, store and driver
modules) and the format version of sweep.json and the spec hash.
"""

from __future__ import annotations

SPEC_FILE = "sweep.yaml"
STATE_FILE = "sweep.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
BY_POINT_CSV = "summary_by_point.csv"
BY_POINT_PARQUET = "summary_by_point.parquet"
ERRORS_FILE = "errors.json"
POINTS_DIR = "points"
CAPACITY_FILE = "capacity.json"
RUN_MARKER = "summary.json"
FORMAT_VERSION = 1
