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


def _adamw_program(params: Any) -> FloorProgram:
    import optax

    tx = optax.adamw(1e-3)
    state = jax.eval_shape(tx.init, params)
    return FloorProgram("adamw step", lambda g, s, p: tx.update(g, s, p), (params, state, params))


def _square_shapes(tree: Any) -> list[tuple[int, Any]]:
    """Distinct ``(d, dtype)`` of the ``(…, d, d)`` leaves of ``tree``."""
    found = {(x.shape[-1], x.dtype) for x in jax.tree.leaves(tree) if len(x.shape) >= 2}
    return sorted(found, key=lambda t: t[0])


@register("soap")
def _soap(params: Any) -> list[FloorProgram]:
    """AdamW, plus one eigh and one QR per distinct Kronecker-factor size (the
    first call's eigenbasis and the refresh's power-QR)."""
    import jax.numpy as jnp

    import optx
    from optx._src import linalg

    state = jax.eval_shape(optx.soap().init, params)[0]
    programs = [_adamw_program(params)]
    for d, dtype in _square_shapes(state.factors):
        f = jax.ShapeDtypeStruct((1, d, d), dtype)
        programs.append(FloorProgram(f"eigh {d}", lambda x: jnp.linalg.eigh(x)[1], (f,)))
        programs.append(FloorProgram(f"qr {d}", lambda x: linalg.qr(x)[0], (f,)))
    return programs


@register("cosmos")
def _cosmos(params: Any) -> list[FloorProgram]:
    """AdamW, plus per distinct matrix shape ``n × m`` (rank ``r``): one eigh
    ``n × n`` (first step), one QR ``n × r`` (the subspace power step) and one
    Newton–Schulz of ``n × m`` (the residual)."""
    import jax.numpy as jnp

    import optx
    from optx._src import linalg

    found = jax.tree.leaves(
        jax.eval_shape(optx.cosmos().init, params),
        is_leaf=lambda x: isinstance(x, optx.ScaleByCosmosState),
    )
    state = next(x for x in found if isinstance(x, optx.ScaleByCosmosState))
    shapes = {
        (p.shape[-2], v.shape[-1], p.shape[-1], p.dtype)
        for p, v in zip(jax.tree.leaves(state.basis), jax.tree.leaves(state.nu), strict=True)
    }
    programs = [_adamw_program(params)]
    for n, m, r, dtype in sorted(shapes):
        programs.append(
            FloorProgram(
                f"eigh {n}",
                lambda x: jnp.linalg.eigh(x)[1],
                (jax.ShapeDtypeStruct((1, n, n), dtype),),
            )
        )
        programs.append(
            FloorProgram(
                f"qr {n}x{r}", lambda x: linalg.qr(x)[0], (jax.ShapeDtypeStruct((1, n, r), dtype),)
            )
        )
        programs.append(
            FloorProgram(
                f"newton-schulz {n}x{m}",
                lambda x: optx.linalg.newton_schulz(x, "keller", 5),
                (jax.ShapeDtypeStruct((1, n, m), dtype),),
            )
        )
    return programs
