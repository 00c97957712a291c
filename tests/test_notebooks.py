"""Every notebook under notebooks/ runs top to bottom in a fresh kernel, offline, as a user runs it.

The kernel starts in ``notebooks/`` (relative paths resolve as for someone who opened the notebook
there) and inherits this process's environment: offline Hub, the session's demo-asset folder and
the import path, so the notebooks import the hf_lightning under test. Cells assert their own results
(accuracy above chance, reloaded outputs equal), so a notebook that runs but computes nonsense fails.
Notebooks are committed without outputs; a test keeps it that way.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import REPO

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TIMEOUT_PER_CELL = 300


def test_notebooks_are_found() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"01_quickstart_lightning.ipynb", "02_hf_trainer_api.ipynb",
                                          "04_peft_and_export.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs. Fix: clear outputs before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, demo_assets: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # figures render to files; no display needed
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the test process (conftest): no thread oversubscription
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=TIMEOUT_PER_CELL, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
