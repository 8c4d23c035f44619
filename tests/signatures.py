"""A factory's signature defaults, for the tests that pin them to official values."""

from __future__ import annotations

import inspect
from collections.abc import Callable


def defaults(fn: Callable[..., object], *names: str) -> dict[str, object]:
    """``{name: default}`` of ``fn``'s parameters ``names`` (every parameter with a
    default when no name is given)."""
    params = inspect.signature(fn).parameters
    if names:
        return {n: params[n].default for n in names}
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
