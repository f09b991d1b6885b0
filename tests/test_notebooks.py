"""The notebooks, executed headlessly as CI runs them: a fresh ``python3`` kernel (this interpreter)
runs every cell from ``notebooks/`` and any error fails the test. Temporary folders go to pytest's
``tmp_path`` and the stored notebooks are neither written nor left with outputs.

The exploring-fits notebook reads ``$SCALING_RUN_DIR``; unless it is set, it is pointed at a folder
that does not exist, so it fabricates a synthetic sweep and the test does not depend on ``make demo``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ("01_flops_and_memory", "02_planning_a_sweep", "03_exploring_fits", "04_xladder_cot")
CELL_TIMEOUT_S = 300  # a hung kernel fails; each notebook takes well under a minute


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


def test_kernel_is_this_interpreter():
    """``python3`` resolves to the interpreter running the tests (the venv's), which has the package."""
    from jupyter_client.manager import KernelManager

    cmd = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert Path(cmd[0]).resolve() == Path(sys.executable).resolve()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs(name):
    import nbformat

    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), (
        f"{name}.ipynb has outputs: clear them before committing (notebooks/README.md)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    path = NOTEBOOK_DIR / f"{name}.ipynb"
    stored = path.read_bytes()
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # The kernel inherits this environment: its tempfile folders land in tmp_path.
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real_runs = bool(os.environ.get("SCALING_RUN_DIR"))
    if not real_runs:
        monkeypatch.setenv("SCALING_RUN_DIR", str(tmp_path / "no-sweep-here"))
    nb = nbformat.reads(stored.decode(), as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # where Jupyter would start it
    )
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback
    finally:
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, to inspect a failure
    assert path.read_bytes() == stored
    assert sorted(p.name for p in NOTEBOOK_DIR.iterdir()) == before
    if not (real_runs and name == "03_exploring_fits"):  # which only reads a real run directory
        assert any(scratch.glob("scaling-*")), "the notebook's temporary folders were not in TMPDIR"
