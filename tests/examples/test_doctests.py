"""The docstring examples of examples/ and benchmarks/_trees.py run (pytest's
testpaths cover optx/ and tests/ only)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "examples.models",
    "examples.data",
    "examples.checkpointing",
    "examples.pretrain",
    "benchmarks.comm_budget",
    "benchmarks._trees",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
