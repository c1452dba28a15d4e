"""The teaching notebooks (notebooks/*.ipynb) run top to bottom and are committed without outputs.

Each notebook is executed in a fresh Jupyter kernel (nbclient) from `notebooks/`, as Jupyter
starts it; a cell that raises fails the test with the cell's traceback. Notebooks that read
files find them from the repository root, so their first cells are also run from the root.
Outputs are never committed (diffs stay readable): a notebook with outputs or execution
counts fails `test_notebook_is_committed_without_outputs`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# Generous: each notebook takes 3-25 s on a laptop; CI runs them on 2 cores.
CELL_TIMEOUT_S = 300


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _execute(nb: object, cwd: Path) -> None:
    """Run every cell of `nb` in a new kernel of THIS interpreter, with `cwd` as working dir."""
    # NOTE: with no kernel directories the spec manager falls back to ipykernel's native
    # kernel for sys.executable, so a stray user-level "python3" kernelspec pointing at another
    # Python (without simserve) cannot be picked up.
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()


def test_the_seven_teaching_notebooks_exist():
    assert _ids(NOTEBOOKS) == [
        "01_batching",
        "02_stalls_and_metrics",
        "03_speculative_decoding",
        "04_antipatterns",
        "05_calibrate_your_gpu",
        "06_disaggregated_serving",
        "07_write_your_own_scheduler",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path: Path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} have outputs or execution counts; clear them before "
        f"committing (e.g. `jupyter nbconvert --clear-output --inplace {path.name}`)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(path: Path):
    nb = nbformat.read(path, as_version=4)
    _execute(nb, NOTEBOOK_DIR)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    # Every notebook ends by printing a takeaway computed from its own results.
    assert "Takeaway:" in text, f"{path.name} printed no takeaway"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} drew no figure"


@pytest.mark.parametrize(
    "path",
    [p for p in NOTEBOOKS if "repo_root()" in p.read_text(encoding="utf-8")],
    ids=lambda p: p.stem,
)
def test_notebook_finds_the_repository_from_its_root(path: Path):
    """Notebooks that read repository files also work when started from the repository root."""
    nb = nbformat.read(path, as_version=4)
    last = max(i for i, c in enumerate(nb.cells) if "repo_root()" in c.source)
    nb.cells = nb.cells[: last + 1]
    nb.cells.append(nbformat.v4.new_code_cell(
        f"import pathlib\nassert ROOT.resolve() == pathlib.Path({str(ROOT)!r}).resolve(), ROOT"
    ))
    _execute(nb, ROOT)


def test_kernel_is_this_interpreter():
    """The kernel the notebooks run in is the test's own Python (so it sees this simserve)."""
    spec = KernelSpecManager(kernel_dirs=[]).get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable
