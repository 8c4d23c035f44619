"""The notebooks: committed without outputs, Colab-ready, and executed by CI in quick mode.

Running them is not part of this suite (it would cost minutes of kernel start-ups and
compilation): ``.ci/run`` executes every notebook after the suite with
``OPTX_NB_QUICK=1 python -m pytest --nbmake notebooks/`` (checked below). These tests only read
the files.
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest

import optx

ROOT = pathlib.Path(__file__).parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# One per family (issue 18 §3); a new notebook is added here and to README's list.
EXPECTED = {
    "quickstart",
    "routing",
    "comparing_optimizers",
    "memory_efficient",
    "second_order",
    "sharding",
    "lora_finetuning",
    "evolution_strategies",
}


def _cells(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _code(path: pathlib.Path) -> str:
    return "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")


def test_every_family_has_a_notebook_listed_in_the_readme() -> None:
    assert {p.stem for p in NOTEBOOKS} == EXPECTED
    readme = (ROOT / "README.md").read_text()
    for name in EXPECTED:
        assert f"(notebooks/{name}.ipynb)" in readme, name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: pathlib.Path) -> None:
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name}: a code cell has outputs"
            assert cell.get("execution_count") is None, f"{path.name}: an execution count"
        assert "attachments" not in cell


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_colab_ready(path: pathlib.Path) -> None:
    cells = _cells(path)
    first = "".join(cells[0]["source"])
    badge = f"colab.research.google.com/github/optx-dev/optx/blob/main/notebooks/{path.name}"
    assert cells[0]["cell_type"] == "markdown" and "colab-badge.svg" in first
    assert badge in first, f"{path.name}: the Colab badge must open this notebook"
    install = "".join(cells[1]["source"])
    # Installs only on Colab (skipped under the CI run, where optx is installed), from the
    # release tag of this version, without upgrading Colab's preinstalled jax/CUDA stack.
    assert 'if "google.colab" in sys.modules:' in install
    assert f'RELEASE = "v{optx.__version__}"' in install
    assert '"--branch={RELEASE}"' in install
    # Only optx itself: an extra would pull a newer ipykernel/Jupyter stack into Colab's runtime.
    assert '"install", "-q", "./optx-src"]' in install and "optx-src[" not in install
    readme = (ROOT / "README.md").read_text()
    assert f"@v{optx.__version__}" in readme, "README's install line pins another release"
    code = _code(path)
    assert not re.search(r"(?m)^\s*[!%]", code), f"{path.name}: shell/magic lines do not run in CI"
    statements = re.sub(r"#.*", "", code)
    assert not re.search(r"--upgrade\b|\s-U\b|\"-U\"", statements), "upgrades Colab's stack"
    assert 'os.environ.get("OPTX_NB_QUICK") == "1"' in code, f"{path.name}: no quick mode"
    assert "plt." in code, f"{path.name}: no plot"


def test_ci_executes_every_notebook_in_quick_mode_after_the_suite() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    suite = next(i for i, line in enumerate(ci) if "pytest -n 2 -q" in line)
    nb = next(i for i, line in enumerate(ci) if "--nbmake" in line)
    assert nb > suite
    assert "OPTX_NB_QUICK=1" in ci[nb] and "notebooks/" in ci[nb] and '".[notebooks]"' in ci[nb]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_optx_name_in_a_notebook_exists(path: pathlib.Path) -> None:
    """Catches a renamed or moved public name here, not minutes later in the CI notebook run."""
    text = "\n".join("".join(c["source"]) for c in _cells(path))
    missing = []
    for dotted in sorted(set(re.findall(r"\boptx((?:\.[A-Za-z_]\w*)+)", text))):
        obj = optx
        for attr in dotted.lstrip(".").split("."):
            if not hasattr(obj, attr):
                missing.append("optx" + dotted)
                break
            obj = getattr(obj, attr)
    assert not missing, f"{path.name}: {missing}"
