"""Run the validation and write calibration/REPORT.md with its figures (`simserve validate`)."""

from __future__ import annotations

from pathlib import Path

from simserve.calibration.paths import DEFAULT_REPORT_DIR
from simserve.calibration.report_figures import validation_figures
from simserve.calibration.report_markdown import report_markdown
from simserve.calibration.validate import run_validation

__all__ = ["write_report"]


def write_report(out_dir: str | Path = DEFAULT_REPORT_DIR, *, replay: bool = True) -> Path:
    """Run the validation and write REPORT.md and figures/ under `out_dir`."""
    out_dir = Path(out_dir)
    rep = run_validation(replay=replay)
    figures = validation_figures(rep, out_dir / "figures")
    path = out_dir / "REPORT.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(report_markdown(rep, figures), encoding="utf-8")
    tmp.replace(path)
    return path
