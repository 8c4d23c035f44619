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


# ----------------------------------------------------------------------------
# Element-wise and Muon-family floors (helper "elem", issue 17 §2)
# ----------------------------------------------------------------------------
#
# XLA:CPU compiles one kernel per fusion and reuses a kernel whose fused
# computation is identical, so compile time grows with the *distinct* kernels:
# same-shape leaves (``blocks/0/…``, ``blocks/1/…``) share theirs, while
# slicing per-leaf results out of a concatenated/stacked group makes every
# consumer kernel distinct (a static slice offset is a constant in it). The
# floors are therefore: AdamW's element-wise step on the whole tree (the
# baseline's own program) plus the method's per-matrix program once per
# distinct matrix shape of the tree under the default router.


def _spec(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def _adamw_step(params: Any) -> FloorProgram:
    """``optax.adamw``'s jitted step (update + apply) on the whole tree."""
    import optax

    tx = optax.adamw(1e-3, weight_decay=1e-4)
    abstract = jax.tree.map(lambda p: _spec(p.shape, p.dtype), params)
    state = jax.eval_shape(tx.init, abstract)

    def step(g: Any, s: Any, p: Any) -> Any:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return FloorProgram("optax.adamw step", step, (abstract, state, abstract))


def _distinct_layouts(params: Any) -> list[tuple[Any, Any]]:
    """``(resolved layout, dtype)`` of the default router's matrix leaves, one per shape."""
    import optx
    from optx._src import base, layouts

    resolve = layouts.resolved_layout_fn(optx.default_router())
    seen: dict[tuple[Any, ...], tuple[Any, Any]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        lay = resolve(base.path_to_str(path), leaf)
        if lay is not None:
            seen.setdefault((lay, jax.numpy.dtype(leaf.dtype)), (lay, leaf.dtype))
    return list(seen.values())


def _per_matrix_shape(
    params: Any, label: str, fn: Callable[..., Any], n_args: int = 1
) -> list[FloorProgram]:
    """``fn`` once per distinct ``(batch, fan_in, fan_out)`` matrix shape and dtype."""
    shapes = {(lay.matrix_shape, dtype) for lay, dtype in _distinct_layouts(params)}
    return [
        FloorProgram(f"{label} {shape}", fn, (_spec(shape, dtype),) * n_args)
        for shape, dtype in sorted(shapes, key=str)
    ]


def _newton_schulz_programs(params: Any, steps: int = 5) -> list[FloorProgram]:
    """One Newton–Schulz program (5 Keller steps) per distinct matrix shape."""
    from optx._src import orthogonalization

    return _per_matrix_shape(
        params,
        "newton_schulz",
        lambda x: orthogonalization.newton_schulz(x, "keller", steps),
    )


def _muon_family(params: Any) -> list[FloorProgram]:
    return [_adamw_step(params), *_newton_schulz_programs(params)]


for _name in ("muon", "normuon", "hybrid_auon"):
    register(_name)(_muon_family)


@register("lipschitz_muon")
def _lipschitz_muon(params: Any) -> list[FloorProgram]:
    """Newton–Schulz plus the soft cap's two odd-polynomial steps per matrix shape."""
    from optx._src import constraints

    caps = _per_matrix_shape(
        params,
        "soft cap",
        lambda x: constraints.odd_polynomial_steps(x, ((1.0, -0.1, 0), (1.0, 0.1, 0))),
    )
    return [_adamw_step(params), *_newton_schulz_programs(params), *caps]


def _radial_programs(params: Any) -> list[FloorProgram]:
    """AdamP's cosine test and projection once per distinct matrix shape.

    ``project_out_radial`` runs the test on the ``(batch, fan_in, fan_out)``
    view (a free reshape for the router's layouts), so that is its granularity.
    """
    from optx._src import layouts, radial

    def test(g: Any, w: Any, d: Any) -> Any:
        return radial.radial_projection(g, w, d, layouts.DENSE.resolve(g.shape))

    return _per_matrix_shape(params, "radial projection", test, n_args=3)


def _radial_family(params: Any) -> list[FloorProgram]:
    return [_adamw_step(params), *_radial_programs(params)]


for _name in ("adamp", "sgdp"):
    register(_name)(_radial_family)
