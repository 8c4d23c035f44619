"""The public API is pinned: a change to it is deliberate.

``tests/data/public_api.txt`` lists every public name per namespace (``optx`` and
each submodule ``optx.<concern>``). A name added to or removed from a namespace's
``__all__`` without updating that list (and the API reference) fails here.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from pathlib import Path

import optx
from tools.rewrite_public_api_names import pinned_api

ROOT = Path(__file__).parent.parent
PINNED = ROOT / "tests" / "data" / "public_api.txt"

_HOW = (
    "update tests/data/public_api.txt (its header says how) and list the name once in the "
    "API reference (docs/api/*.md)"
)


PUBLIC = pinned_api(PINNED)


def _submodules() -> list[str]:
    return [f"optx.{n}" for n in optx.__all__ if inspect.ismodule(getattr(optx, n))]


def test_namespaces_are_pinned() -> None:
    assert sorted(PUBLIC) == sorted(["optx", *_submodules()]), (
        f"the submodules of optx changed: {_submodules()}; " + _HOW
    )


def test_every_namespace_matches_its_pinned_list() -> None:
    for namespace, names in PUBLIC.items():
        module = importlib.import_module(namespace)
        exported = list(module.__all__)
        assert len(set(exported)) == len(exported), f"{namespace}.__all__ has duplicates"
        assert len(set(names)) == len(names), f"{PINNED.name} [{namespace}] has duplicates"
        added = sorted(set(exported) - set(names))
        removed = sorted(set(names) - set(exported))
        assert not added and not removed, (
            f"public API of {namespace} changed: added {added}, removed {removed}; " + _HOW
        )


def test_nothing_private_is_exported() -> None:
    for namespace in PUBLIC:
        module = importlib.import_module(namespace)
        # Every public attribute is in __all__ (no stray imports leak), and every name
        # in __all__ resolves (including lazily loaded ones).
        visible = {n for n in dir(module) if not n.startswith("_")}
        assert visible <= set(module.__all__), (namespace, sorted(visible - set(module.__all__)))
        for name in module.__all__:
            assert not name.startswith("_"), (namespace, name)
            value = getattr(module, name)
            if isinstance(value, types.ModuleType):
                # Only optx's own concern submodules, each a real file optx/<name>.py.
                assert namespace == "optx", (namespace, name)
                assert value.__name__ == f"optx.{name}"
                assert Path(value.__file__) == ROOT / "optx" / f"{name}.py"


def test_each_public_object_has_one_home() -> None:
    """A function or class is exported from one namespace only (listed once)."""
    homes: dict[int, str] = {}
    for namespace, names in PUBLIC.items():
        module = importlib.import_module(namespace)
        for name in names:
            value = getattr(module, name)
            if not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            where = f"{namespace}.{name}"
            assert id(value) not in homes, f"{where} is also {homes[id(value)]}"
            homes[id(value)] = where


def test_api_reference_lists_every_public_name_once() -> None:
    """docs/api/*.md documents each pinned name exactly once (autodoc directives)."""
    directive = re.compile(r"^\.\. auto(?:function|class|data|module):: (\S+)", re.MULTILINE)
    documented: list[str] = []
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        documented += directive.findall(page.read_text())
    expected = {f"{ns}.{name}" for ns, names in PUBLIC.items() for name in names}
    twice = sorted({n for n in documented if documented.count(n) > 1})
    assert not twice, f"documented more than once in docs/api: {twice}"
    missing = sorted(expected - set(documented))
    extra = sorted(set(documented) - expected)
    assert not missing and not extra, (
        f"API reference out of date: missing {missing}, not public {extra}; " + _HOW
    )
