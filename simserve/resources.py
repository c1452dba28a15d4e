"""Where the files simserve carries live: the one module that locates them.

The package holds the repository's user-facing folders under `simserve/bundled/`, with the
repository's relative layout (`scenarios/`, `calibration/profiles/`, `calibration/data/`,
`calibration/kernels/`), so a scenario's relative trace path (`../calibration/data/traces/...`)
means the same file in a checkout and in an installed wheel. In a checkout those entries are
relative symbolic links to the repository folders (an editable install reads and writes the
folders users know); a built wheel carries copies. The GPU and model catalog is
`simserve/data/*.yaml`.

Every other module asks here (`bundled_path`, `catalog_file`) instead of walking up from its
own file, so nothing depends on where the package was installed.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = [
    "bundled_path",
    "catalog_file",
    "default_scenario",
    "kernels_dir",
    "measured_data_dir",
    "profiles_dir",
    "scenarios_dir",
]

_PACKAGE = "simserve"
_BUNDLE = "bundled"
_CATALOG = "data"


def _package_dir() -> Path:
    """The installed `simserve` package folder as a file-system path."""
    root = resources.files(_PACKAGE)
    if not isinstance(root, os.PathLike):
        # NOTE: traces, profiles and figures are opened by path (csv, numpy, matplotlib), and
        # scenario files name their traces relative to themselves: that needs real folders.
        raise RuntimeError(f"simserve must be installed as files on disk, not in {root!r}")
    return Path(os.fspath(root))


def bundled_path(*parts: str) -> Path:
    """A file or folder the package carries, by its repository-relative path, e.g.
    `bundled_path("scenarios", "bench.yaml")` or `bundled_path("calibration", "kernels")`.

    The path may not exist (a folder a release does not carry); callers check what they need.
    """
    if any(not part or part in (".", "..") or "/" in part or "\\" in part for part in parts):
        raise ValueError(f"bundled_path takes plain path components, got {parts!r}")
    return _package_dir().joinpath(_BUNDLE, *parts)


def scenarios_dir(*parts: str) -> Path:
    """`scenarios/` (or a file or folder under it): bench, default, presets, validation."""
    return bundled_path("scenarios", *parts)


def default_scenario() -> Path:
    """The scenario `simserve run` runs when given none."""
    return scenarios_dir("default.yaml")


def profiles_dir() -> Path:
    """`calibration/profiles/`: the shipped calibrated cost profiles."""
    return bundled_path("calibration", "profiles")


def measured_data_dir(*parts: str) -> Path:
    """`calibration/data/` (or a file under it): measured latencies and request traces."""
    return bundled_path("calibration", "data", *parts)


def kernels_dir(*parts: str) -> Path:
    """`calibration/kernels/` (or a file under it): compact measured kernel tables."""
    return bundled_path("calibration", "kernels", *parts)


def catalog_file(name: str) -> Path:
    """A packaged catalog file (`gpus.yaml`, `models.yaml`, `links.yaml`)."""
    return _package_dir().joinpath(_CATALOG, name)
