"""Run the validation and write calibration/REPORT.md with its figures (`simserve validate`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from simserve.calibration.kernel_report import kernel_figures, kernel_markdown
from simserve.calibration.paths import DEFAULT_REPORT_DIR
from simserve.calibration.pipeline_report import pipeline_markdown, run_pipeline_validation
from simserve.calibration.report_figures import validation_figures
from simserve.calibration.report_markdown import report_markdown
from simserve.calibration.validate import run_validation
from simserve.experiments.atomic import check_writable_dir, write_file_atomically

__all__ = ["write_report"]


def write_report(
    out_dir: str | Path = DEFAULT_REPORT_DIR,
    *,
    replay: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Run the validation and write REPORT.md and figures/ under `out_dir` (each phase is
    told to `progress`)."""
    out_dir = Path(out_dir)
    check_writable_dir(out_dir / "figures", "--out-dir")  # before minutes of validation
    rep = run_validation(replay=replay, progress=progress)
    figures = validation_figures(rep, out_dir / "figures")  # creates out_dir/figures
    text = report_markdown(rep, figures)
    if rep.kernels is not None:
        kernel_figures(rep.kernels, out_dir / "figures")
        text += "\n" + "\n".join(kernel_markdown(rep.kernels)) + "\n"
    if replay:
        if progress is not None:
            progress("pipeline parallelism: DistServe replays with a pp=2 decode instance")
        text += "\n" + "\n".join(pipeline_markdown(run_pipeline_validation())) + "\n"
    return write_file_atomically(out_dir / "REPORT.md", text)
