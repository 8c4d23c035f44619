"""The notebooks run (quick mode) and are committed without outputs.

Equivalent to ``OPTX_NB_QUICK=1 python -m pytest --nbmake notebooks/``.
"""

from __future__ import annotations

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))


def test_there_is_a_quickstart_with_a_colab_badge() -> None:
    names = [p.name for p in NOTEBOOKS]
    assert "quickstart.ipynb" in names
    nb = json.loads((NOTEBOOKS[names.index("quickstart.ipynb")]).read_text())
    first = "".join(nb["cells"][0]["source"])
    assert "colab.research.google.com" in first and "colab-badge.svg" in first


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: pathlib.Path) -> None:
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_quick_mode(path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("OPTX_NB_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell (incl. its asserts)
