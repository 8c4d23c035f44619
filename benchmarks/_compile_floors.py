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
# 8-bit states (quant): the element-wise step plus ONE coding program for the
# whole quantized state (its leaves concatenated), i.e. what a per-leaf coder
# could at best shrink to. The excess of total over this floor is the per-leaf
# coding (one dequantize + block-max + code fusion chain per quantized leaf).
# ----------------------------------------------------------------------------


def _quantized_sizes(params: Any, min_size: int = 4096) -> int:
    """Entries of the leaves whose moments the 8-bit variants quantize."""
    import math

    return sum(
        math.prod(x.shape) for x in jax.tree.leaves(params) if math.prod(x.shape) >= min_size
    )


def _eight_bit_floor(params: Any, tx: Any, label: str, unsigned: bool) -> list[FloorProgram]:
    import jax.numpy as jnp
    import optax

    from optx._src import quantization as q

    state = jax.eval_shape(tx.init, params)

    def step(g: Any, s: Any, p: Any) -> Any:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    n = _quantized_sizes(params)
    blocks = q.num_blocks(n, q.REFERENCE_BLOCK_SIZE)
    codes = jax.ShapeDtypeStruct((n,), jnp.uint8)
    scales = jax.ShapeDtypeStruct((blocks,), jnp.float32)
    kinds = (True, False) if unsigned else (True,)

    def coding(*args: Any) -> Any:
        out = []
        for signed, (c, a) in zip(kinds, zip(args[::2], args[1::2])):
            x = q.dequantize_blockwise(q.QuantizedArray(c, a), signed=signed)
            out.append(q.quantize_blockwise(x * 0.5, signed=signed))
        return out

    return [
        FloorProgram(f"{label} step (f32 states)", step, (params, state, params)),
        FloorProgram(
            "8-bit coding of the concatenated state", coding, (codes, scales) * len(kinds)
        ),
    ]


@register("adamw_8bit")
def _adamw_8bit(params: Any) -> list[FloorProgram]:
    import optax

    return _eight_bit_floor(params, optax.adamw(1e-3, weight_decay=1e-4), "optax.adamw", True)


@register("lion_8bit")
def _lion_8bit(params: Any) -> list[FloorProgram]:
    import optax

    return _eight_bit_floor(params, optax.lion(1e-4), "optax.lion", False)


@register("sgd_momentum_8bit")
def _sgd_momentum_8bit(params: Any) -> list[FloorProgram]:
    import optax

    return _eight_bit_floor(params, optax.sgd(1e-2, momentum=0.9), "optax.sgd", False)


# ----------------------------------------------------------------------------
# APOLLO (quant): optax.adamw's step plus the per-leaf Gaussian projector
# draws its documented key chain requires (one key per matrix leaf,
# ``split(k)[0]`` per refresh), in one program. A single threefry draw compiles
# in ~0.4 s here and 24 per-leaf draws in ~2.2 s; a vmapped draw over the 24
# keys took ~1.5 s plus the per-leaf slices (~0.9 s), which is why grouping
# same-shape leaves did not cut APOLLO's compile time (README).
# ----------------------------------------------------------------------------


@register("apollo")
def _apollo(params: Any) -> list[FloorProgram]:
    import math

    import jax.numpy as jnp
    import optax

    import optx

    state = jax.eval_shape(optx.get_optimizer("apollo").build().init, params)
    shapes = [
        x.shape
        for path, x in jax.tree_util.tree_leaves_with_path(state)
        if "projector" in jax.tree_util.keystr(path) and getattr(x, "ndim", 0) == 3
    ]
    adamw = optax.adamw(1e-3, weight_decay=1e-4)
    adamw_state = jax.eval_shape(adamw.init, params)

    def step(g: Any, s: Any, p: Any) -> Any:
        u, s = adamw.update(g, s, p)
        return optax.apply_updates(p, u), s

    def draws(keys: Any) -> Any:
        out = []
        for k, shape in zip(keys, shapes):
            use = jax.random.split(jax.random.wrap_key_data(k))[0]
            out.append(jax.random.normal(use, shape) / math.sqrt(shape[-1]))
        return out

    keys = [jax.ShapeDtypeStruct((2,), jnp.uint32) for _ in shapes]
    return [
        FloorProgram("optax.adamw step", step, (params, adamw_state, params)),
        FloorProgram(f"{len(shapes)} per-leaf projector draws", draws, (keys,)),
    ]
