"""Sphinx configuration of the optx documentation (Sphinx + MyST-NB, like optax and Flax).

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (README "Documentation").
The notebooks under ``notebooks/`` are copied into ``docs/_notebooks/`` at build time and
rendered as they are stored (outputs stripped in git): they are never executed here.
"""

from __future__ import annotations

import re
import shutil
import sys
import tomllib
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import optx  # noqa: E402

# project.urls in pyproject.toml is the one place the repository URL is written.
_URLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]

project = "optx"
author = "optx developers"
copyright = "optx developers, Apache-2.0"
release = optx.__version__
version = optx.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Notebooks are rendered from their stored (stripped) form, never executed at build time:
# the test suite executes them (nbmake) in quick mode.
nb_execution_mode = "off"

autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "sphinx_book_theme"
html_title = f"optx {release}"
html_theme_options = {
    "repository_url": _URLS["Repository"],
    "use_repository_button": True,
    "show_toc_level": 2,
}


def _copy_notebooks() -> None:
    """Mirror ``notebooks/*.ipynb`` into ``docs/_notebooks`` (git-ignored)."""
    target = DOCS / "_notebooks"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(notebook, target / notebook.name)


_copy_notebooks()

# A relative link in an included repository file (README.md: `results/...`, CONTRIBUTING.md)
# points outside the docs; it becomes a link to the file in the repository. Images keep
# their relative path (`:relative-images:` copies them into the site).
_RELATIVE_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\((?!https?:|#|mailto:)([^)\s]+)\)")


def _link_repository_files(app, relative_path, parent_docname, content) -> None:
    if (DOCS / relative_path).resolve().parent != ROOT:
        return
    blob = _URLS["Repository"] + "/blob/main/"
    content[0] = _RELATIVE_LINK.sub(lambda m: f"[{m[1]}]({blob}{m[2]})", content[0])


# Google-style "Args:" entries may name several arguments, wrapped over lines
# ("adam_b1, adam_b2,\n    adam_eps: the fallback AdamW"); napoleon reads one line, so the
# wrapped name list is joined before napoleon runs.
_NAME_LIST_CONTINUES = re.compile(r"^\s+[\w*]+(,\s*[\w*]+)*,\s*$")


def _join_wrapped_argument_names(app, what, name, obj, options, lines) -> None:
    i = 0
    while i < len(lines) - 1:
        if _NAME_LIST_CONTINUES.match(lines[i]):
            lines[i : i + 2] = [lines[i].rstrip() + " " + lines[i + 1].strip()]
        else:
            i += 1


def _drop_inherited_container_docs(app, what, name, obj, options, lines) -> None:
    """A module constant (a dict, a tuple) has no docstring of its own: not the dict's."""
    inherited = (type(obj).__doc__ or "").strip()
    if what in {"data", "attribute"} and inherited and "\n".join(lines).strip() == inherited:
        lines.clear()


def setup(app) -> None:
    app.connect("include-read", _link_repository_files)
    app.connect("autodoc-process-docstring", _join_wrapped_argument_names, priority=100)
    app.connect("autodoc-process-docstring", _drop_inherited_container_docs, priority=100)
