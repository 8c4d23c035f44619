"""Packaging: the wheel a user installs, its metadata, and the one repository URL.

The wheel test builds the wheel from this checkout (no editable install), installs it with
``--no-deps`` into a fresh virtual environment whose dependencies (jax, optax, flax) are made
visible from the test environment's site-packages by a path entry, imports every public name
of every namespace from the *installed* copy and runs the README Quick start there.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.test_readme import _quick_start_code

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REPO_URL = PYPROJECT["project"]["urls"]["Repository"]

_URL = re.compile(r"https://(?:github\.com|colab\.research\.google\.com/github)/[\w./@+-]+")


def _repository_urls(text: str) -> list[str]:
    """GitHub and Colab-from-GitHub URLs in ``text``, normalized to ``https://github.com/o/r``."""
    out = []
    for url in _URL.findall(text):
        path = url.split("github.com/", 1)[1] if "colab." not in url else url.split("/github/")[1]
        owner_repo = "/".join(path.split("/")[:2]).split("@")[0]
        out.append("https://github.com/" + owner_repo.removesuffix(".git"))
    return out


def test_distribution_name_and_license() -> None:
    project = PYPROJECT["project"]
    # `optx` on PyPI is an unrelated 2017 package; the import name stays `optx`.
    assert project["name"] == "optx-jax"
    assert project["license"] == "Apache-2.0"
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert (ROOT / "optx" / "py.typed").exists()
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")


def test_every_repository_url_agrees_with_project_urls() -> None:
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(ROOT.glob("notebooks/*.ipynb"))]
    docs = ROOT / "docs"
    if docs.exists():
        files += sorted(p for p in docs.rglob("*") if p.suffix in {".md", ".ipynb", ".py", ".rst"})
    seen = 0
    for path in files:
        text = path.read_text()
        if path.suffix == ".ipynb":
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
        for url in _repository_urls(text):
            seen += 1
            assert url == REPO_URL, f"{path.name}: {url} is not project.urls.Repository"
    assert seen, "no badge or install line found to check"


@pytest.mark.slow
def test_built_wheel_installs_and_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheel_dir.glob("optx_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "optx/py.typed" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "examples/")) for n in names)

    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    env_python = env / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env_python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    env_site = subprocess.run(
        [str(env_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Dependencies come from the test environment; a plain path entry does not run that
    # environment's .pth files, so its editable `optx` stays invisible.
    (Path(env_site) / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    script = (
        "import importlib, inspect, optx\n"
        f"assert optx.__file__.startswith({env_site!r}), optx.__file__\n"
        "namespaces = [optx] + [getattr(optx, n) for n in optx.__all__\n"
        "                       if inspect.ismodule(getattr(optx, n))]\n"
        "public = [f'{m.__name__}.{n}' for m in namespaces for n in m.__all__]\n"
        "missing = [p for p in public\n"
        "           if getattr(importlib.import_module(p.rsplit('.', 1)[0]), p.rsplit('.', 1)[1],\n"
        "                      None) is None]\n"
        "assert not missing, missing\n"
        "assert len(namespaces) > 10, namespaces\n"
        "print(len(public), 'public names')\n"
        "# The README Quick start, verbatim, from the installed wheel.\n"
        "exec(compile(open('quick_start.py').read(), 'README.md:quick-start', 'exec'))\n"
        "import math\n"
        "assert math.isfinite(float(loss)) and int(optimizer.step[...]) == 1\n"
    )
    (tmp_path / "quick_start.py").write_text(_quick_start_code())
    run = subprocess.run(
        [str(env_python), "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "public names" in run.stdout and "hidden/kernel" in run.stdout, run.stdout[-2000:]
