"""Measured compile-time floors: the programs a method cannot avoid compiling.

A compile-time target (issue 17: ≤ 3× ``optax.adamw`` unscanned, ≤ 1.5×
scanned) that a method misses must be explained by a *measured* floor: the
compile time of the irreducible programs its math needs on the same tree
(e.g. SOAP: one ``eigh`` and one QR per distinct factor shape; APOLLO: one
random projection per distinct matrix shape), plus AdamW's element-wise step.

:data:`FLOORS` maps a registry name to a builder ``params -> [FloorProgram]``;
:func:`floor_seconds` jits and compiles each program once, from fresh, and sums
trace+lower+compile seconds. ``benchmarks/compile_time.py`` prints the floor
next to the optimizer's own time. Add a floor with::

    @register("soap")
    def _soap(params):
        return [FloorProgram("eigh 64x64", jnp.linalg.eigh, (jnp.eye(64),)), ...]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class FloorProgram:
    """One program the method cannot avoid: ``fn(*args)`` is jitted and compiled."""

    label: str
    fn: Callable[..., Any]
    args: Sequence[Any]


FloorBuilder = Callable[[Any], list[FloorProgram]]
FLOORS: dict[str, FloorBuilder] = {}


def register(name: str) -> Callable[[FloorBuilder], FloorBuilder]:
    """Declare the floor programs of registry optimizer ``name``."""

    def deco(builder: FloorBuilder) -> FloorBuilder:
        FLOORS[name] = builder
        return builder

    return deco


def floor_seconds(name: str, params: Any) -> float | None:
    """Trace+lower+compile seconds of ``name``'s floor programs, or ``None``."""
    if name not in FLOORS:
        return None
    total = 0.0
    for prog in FLOORS[name](params):
        t0 = time.perf_counter()
        jax.jit(prog.fn).trace(*prog.args).lower().compile()
        total += time.perf_counter() - t0
    jax.clear_caches()
    return total
