"""A fused Pallas kernel for :func:`optx.quantization.quantize_moments` (``kernel='pallas'``).

The XLA path of ``quantize_moments`` runs the inner step three times so that
XLA recomputes dequantize → update in each loop instead of writing moments
out: per coded parameter of 8-bit AdamW it reads 26 bytes and writes 6 (the
codes of both moments three times, the gradient three times and the
parameter once; the two codes and the update out). This kernel does the whole
step of one parameter leaf in one pass, per tile of ``R`` blocks of
``block_size`` entries:

.. math::

  s_i = \\mathrm{map}[q_i]\\, a_b, \\quad
  (u_i, s'_i) = \\mathrm{inner}(g_i, s_i, w_i), \\quad
  a'_b = \\max_{i \\in b} |s'_i|, \\quad
  q'_i = \\mathrm{code}\\big(\\mathrm{clip}(s'_i \\cdot \\mathrm{fl}(1 / a'_b))\\big)

with the block maximum reduced in registers and the code found by the XLA
path's own rule (:func:`optx._src.quantization._nearest_code`: float32
distances, ties to the lower code, one bucket-table lookup), so codes and
block scales are those of the XLA path. Traffic per parameter of 8-bit AdamW
(f32 gradient, no parameter read): the two codes and the gradient once
(6 bytes in) and the two codes and the update once (6 bytes out), plus
``2·4/B`` bytes of block scales each way. With the alias's decay, learning
rate and ``apply_updates`` (one XLA loop after the kernel: update and
parameter in, parameter out) a step moves 14 B in / 10 B out per parameter,
against 26 / 6 for the XLA structure and 16 / 12 for ``optax.adamw``.
Gradients and parameters of float16/bfloat16 leaves are read as stored and
widened to float32 in registers (the XLA path's ``base.compute_dtype``), and
the update is written in the gradient's dtype: no widening pass before the
kernel, no narrowing pass after it.

The inner update runs **inside** the kernel on the tile's values, so the
inner must be element-wise: the update and new state of an entry depend only
on that entry's gradient, state and parameter and on scalar state (the step
count). ``optax.scale_by_adam``, ``optax.scale_by_lion``, ``optax.trace`` and
optx's :func:`optx.scale_by_adam` are; anything that reduces, reshapes or
mixes entries (normalizations, matrix methods, projections) is not.
:func:`check_elementwise` traces the inner's per-leaf update and refuses any
primitive outside an element-wise allow-list (and extra arguments the inner
reads), so such an inner raises instead of computing wrong numbers.

Lowering: the Triton backend of Pallas
(``jax.experimental.pallas.triton``), whose loads take array indexers (the
code tables are gathered from global memory, where they stay in cache); on
other platforms (CPU in the tests, TPU) the same kernel runs in Pallas'
interpret mode (correct, slow: a reference, never a timing). Triton lowers
``/`` to the approximate ``div.full.f32`` and ``sqrt`` to libdevice's, whose
precision depends on NVVM reflection; XLA's are IEEE. So on CUDA the kernel
computes the reciprocal ``fl(1/a'_b)`` with ``div.rn.f32`` and evaluates the
inner's jaxpr with every float32 division and square root of a tile as
``div.rn.f32`` / ``sqrt.rn.f32`` (inline PTX, :func:`_eval_jaxpr`); what remains
between the two paths is multiply-add contraction (and the scalar bias
corrections' ``pow``, libdevice's ``powif`` here), which moves an update or a
moment by an ulp, hence rarely a code or a block scale. On CPU (interpret mode)
codes and block scales are bit-identical to the XLA path's without FMA
(``tests/test_quantization_kernels.py``). Non-finite moments differ on CUDA:
Triton's ``max``/``min`` are IEEE ``maxNum``/``minNum`` (a NaN operand yields
the other), so a NaN moment neither makes its block's scale NaN nor gets the
XLA path's code.

GPU timing is pending a GPU lease (``PARTS=pallas_8bit bash
benchmarks/gpu_figures.sh``); the tile (``TILE`` entries, ``NUM_WARPS`` warps
per program) is untuned.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from optx._src import base

TILE = 2048  # entries per program (a power of two; untuned, pending a GPU lease)
NUM_WARPS = 4


# Primitives whose outputs depend on their inputs entry by entry (plus calls,
# whose bodies are checked). Shape changes are allowed on size-1 values only
# (scalars broadcast against a tile), so no entry of a tile can move.
_ELEMENTWISE = frozenset(
    [
        "abs",
        "add",
        "and",
        "atan2",
        "cbrt",
        "ceil",
        "clamp",
        "convert_element_type",
        "copy",
        "copy_p",
        "cos",
        "div",
        "eq",
        "erf",
        "erf_inv",
        "exp",
        "exp2",
        "expm1",
        "floor",
        "ge",
        "gt",
        "integer_pow",
        "is_finite",
        "le",
        "log",
        "log1p",
        "logistic",
        "lt",
        "max",
        "min",
        "mul",
        "ne",
        "neg",
        "nextafter",
        "not",
        "or",
        "pow",
        "rem",
        "round",
        "rsqrt",
        "select_n",
        "shift_left",
        "shift_right_arithmetic",
        "shift_right_logical",
        "sign",
        "sin",
        "sqrt",
        "square",
        "stop_gradient",
        "sub",
        "tan",
        "tanh",
        "xor",
    ]
)
_SCALAR_SHAPE_OPS = frozenset({"broadcast_in_dim", "reshape", "squeeze", "expand_dims"})


def _subjaxprs(params: dict[str, Any]) -> list[Any]:
    out = []
    for value in params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            jaxpr = getattr(v, "jaxpr", v)
            if hasattr(jaxpr, "eqns"):
                out.append(jaxpr)
    return out


def _non_elementwise(jaxpr: Any) -> list[str]:
    """Names of the primitives of ``jaxpr`` (and its calls) outside the allow-list."""
    bad = []
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        subs = _subjaxprs(eqn.params)
        if subs:
            for sub in subs:
                bad += _non_elementwise(sub)
        elif name in _SCALAR_SHAPE_OPS:
            if any(math.prod(getattr(v.aval, "shape", ())) != 1 for v in eqn.invars):
                bad.append(name)
        elif name not in _ELEMENTWISE:
            bad.append(name)
    return bad


class LeafPlan(NamedTuple):
    """How one parameter leaf's state is fed to the kernel (static).

    Attributes:
      treedef: structure of the inner state of this leaf alone.
      slots: per leaf of that structure, ``('q', k)`` (the ``k``-th quantized
        moment) or ``('s', k)`` (the ``k``-th scalar leaf, e.g. the count).
      quantized: full-state indices of the quantized moments, in slot order.
      signed: the map of each quantized moment.
      scalars: full-state indices of the scalar leaves, in slot order.
    """

    treedef: Any
    slots: tuple[tuple[str, int], ...]
    quantized: tuple[int, ...]
    signed: tuple[bool, ...]
    scalars: tuple[int, ...]


def plan_leaf(
    inner_init: Callable[[Any], Any],
    param: Any,
    param_path: tuple[Any, ...],
    state_index: dict[tuple[Any, ...], int],
    state_leaves: Sequence[Any],
    quantized: frozenset[int],
    is_signed: Callable[[int], bool],
) -> LeafPlan | None:
    """The kernel plan of one parameter leaf, or None (the XLA path takes it).

    The inner's state for this leaf alone (``inner_init`` on a one-leaf tree)
    names where each of its leaves sits in the full state: at the same path
    followed by the parameter's path (a parameter-shaped moment), or at the
    same path (a shared scalar such as the count). The kernel takes the leaf
    when every moment is quantized and every shared leaf is a scalar.
    """
    shape = jax.ShapeDtypeStruct(jnp.shape(param), jnp.result_type(param))
    flat, treedef = jax.tree_util.tree_flatten_with_path(jax.eval_shape(inner_init, shape))
    slots, moments, scalars = [], [], []
    for path, _ in flat:
        full = state_index.get(tuple(path) + tuple(param_path))
        if full is not None and full in quantized:
            slots.append(("q", len(moments)))
            moments.append(full)
            continue
        shared = state_index.get(tuple(path))
        if shared is None or shared in quantized or math.prod(jnp.shape(state_leaves[shared])) != 1:
            return None  # a full-precision moment or an unknown leaf: XLA path
        slots.append(("s", len(scalars)))
        scalars.append(shared)
    if not moments:
        return None
    return LeafPlan(
        treedef,
        tuple(slots),
        tuple(moments),
        tuple(is_signed(i) for i in moments),
        tuple(scalars),
    )


def leaf_update(
    update: Callable[..., Any],
    plan: LeafPlan,
    g: jax.Array,
    moments: Sequence[jax.Array],
    scalars: Sequence[jax.Array],
    p: jax.Array | None,
    extra: dict[str, Any],
) -> tuple[jax.Array, list[jax.Array]]:
    """The inner's update of one leaf's values: ``(update, new moments)``."""
    leaves = [moments[k] if kind == "q" else scalars[k] for kind, k in plan.slots]
    state = jax.tree_util.tree_unflatten(plan.treedef, leaves)
    u, new = update(g, state, p, **extra)
    new_leaves = plan.treedef.flatten_up_to(new)
    return u, [new_leaves[i] for i, (kind, _) in enumerate(plan.slots) if kind == "q"]


def check_elementwise(
    update: Callable[..., Any],
    plan: LeafPlan,
    block_size: int,
    g: jax.Array,
    scalars: Sequence[jax.Array],
    p: jax.Array | None,
    extra: dict[str, Any],
) -> tuple[bool, list[Any] | None]:
    """Raises unless the inner's update is element-wise; returns ``(reads p,
    captured values)``.

    Traces :func:`leaf_update` on the kernel's tile and refuses primitives
    outside the element-wise allow-list and extra arguments the update reads
    (the kernel gets none). Captured values are the arrays the update closes
    over (the traced hyper-parameters of ``optax.inject_hyperparams``), in the
    order of that trace: the kernel takes them as inputs (:func:`_inner_step`
    substitutes them in the same trace made inside the kernel). ``None`` when
    one of them has more than one entry: the kernel has no tile of it, and
    the leaf stays on the XLA path.
    """
    scalar_specs = [jax.ShapeDtypeStruct(jnp.shape(s), jnp.result_type(s)) for s in scalars]
    arrays = {k: v for k, v in extra.items() if isinstance(v, jax.Array | np.ndarray)}
    statics = {k: v for k, v in extra.items() if k not in arrays}

    def trace(shape: tuple[int, int]) -> Any:
        tile = jax.ShapeDtypeStruct(shape, jnp.float32)
        g_tile = jax.ShapeDtypeStruct(shape, base.compute_dtype(jnp.result_type(g)))
        p_tile = (
            None
            if p is None
            else jax.ShapeDtypeStruct(shape, base.compute_dtype(jnp.result_type(p)))
        )
        moments = [tile] * len(plan.quantized)
        return jax.make_jaxpr(
            lambda g, m, s, p, a: leaf_update(update, plan, g, m, s, p, {**statics, **a})
        )(g_tile, moments, scalar_specs, p_tile, arrays)

    # First on one entry, which broadcasts against any array the update closes over.
    if any(math.prod(jnp.shape(c)) != 1 for c in trace((1, 1)).consts):
        return False, None
    closed = trace((_rows(block_size), block_size))
    jaxpr = closed.jaxpr
    bad = sorted(set(_non_elementwise(jaxpr)))
    if bad:
        raise ValueError(
            "quantize_moments(kernel='pallas') runs the inner update inside a kernel, one tile "
            f"of blocks at a time, so the inner must be element-wise; its update uses {bad}. "
            "Use kernel='xla' for this transform."
        )
    used = {
        v for eqn in jaxpr.eqns for v in eqn.invars if not isinstance(v, jax.extend.core.Literal)
    }
    used |= {v for v in jaxpr.outvars if not isinstance(v, jax.extend.core.Literal)}
    n_arrays = len(jax.tree.leaves(arrays))
    n_p = 0 if p is None else 1
    array_vars = jaxpr.invars[len(jaxpr.invars) - n_arrays :]
    if any(v in used for v in array_vars) or statics:
        raise ValueError(
            "quantize_moments(kernel='pallas'): the inner update reads the extra arguments "
            f"{sorted(extra)}, which the kernel does not take. Use kernel='xla'."
        )
    consts = list(closed.consts)
    if not n_p:
        return False, consts
    p_var = jaxpr.invars[len(jaxpr.invars) - n_arrays - 1]
    return p_var in used, consts


def _rows(block_size: int) -> int:
    """Blocks per kernel tile."""
    return max(1, TILE // block_size)


# Correctly rounded float32 division and square root in PTX: Triton lowers ``/``
# to the approximate ``div.full.f32`` and ``sqrt`` goes through libdevice, whose
# precision depends on NVVM reflection; XLA's are IEEE.
_PTX = {"div": ("div.rn.f32 $0, $1, $2;", "=r,r,r"), "sqrt": ("sqrt.rn.f32 $0, $1;", "=r,r")}


def _ptx(name: str, args: Sequence[jax.Array], shape: tuple[int, ...]) -> jax.Array:
    from jax.experimental.pallas import triton as plt

    asm, constraints = _PTX[name]
    (out,) = plt.elementwise_inline_asm(
        asm,
        args=[jnp.broadcast_to(jnp.asarray(a, jnp.float32), shape) for a in args],
        constraints=constraints,
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(shape, jnp.float32)],
    )
    return out


def _reciprocal(x: jax.Array, precise: bool) -> jax.Array:
    """``fl(1/x)``, correctly rounded (PTX ``div.rn.f32`` when ``precise``)."""
    return _ptx("div", [jnp.ones_like(x), x], x.shape) if precise else 1.0 / x


def _eval_jaxpr(jaxpr: Any, consts: Sequence[Any], *args: Any, precise: bool = True) -> list[Any]:
    """Evaluates ``jaxpr`` (calls inlined) with, when ``precise``, every float32
    ``div`` and ``sqrt`` of a tile replaced by its correctly rounded PTX
    instruction."""
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        name, out_aval = eqn.primitive.name, eqn.outvars[0].aval
        sub = eqn.params.get("jaxpr") if name in ("pjit", "jit", "closed_call") else None
        if precise and name in _PTX and out_aval.dtype == jnp.float32 and out_aval.shape:
            outs = [_ptx(name, values, out_aval.shape)]
        elif sub is not None and hasattr(sub, "consts"):
            outs = _eval_jaxpr(sub.jaxpr, sub.consts, *values, precise=precise)
        else:
            outs = eqn.primitive.bind(*values, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _inner_step(
    update: Callable[..., Any],
    plan: LeafPlan,
    captured: Sequence[jax.Array],
    precise: bool,
    g: jax.Array,
    moments: Sequence[jax.Array],
    scalars: Sequence[jax.Array],
    p: jax.Array | None,
) -> tuple[jax.Array, list[jax.Array]]:
    """:func:`leaf_update` on a tile inside the kernel, through its jaxpr: the
    values the update closes over (traced outside the kernel, which a kernel
    cannot capture) are replaced by ``captured``, the kernel's inputs, in the
    order of the same trace made by :func:`check_elementwise`."""
    args = (g, list(moments), list(scalars), p)
    closed, out_shape = jax.make_jaxpr(
        lambda *a: leaf_update(update, plan, *a, {}), return_shape=True
    )(*args)
    if len(closed.consts) != len(captured):
        raise RuntimeError(  # the two traces of one function on one tile shape differ
            f"quantize_moments(kernel='pallas'): the inner update captured {len(closed.consts)} "
            f"values inside the kernel and {len(captured)} outside it."
        )
    consts = [
        jnp.reshape(v, jnp.shape(c)).astype(jnp.result_type(c))
        for v, c in zip(captured, closed.consts)
    ]
    outs = _eval_jaxpr(closed.jaxpr, consts, *jax.tree.leaves(args), precise=precise)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)


def _kernel(
    *refs: Any,
    update: Callable[..., Any],
    plan: LeafPlan,
    n_captured: int,
    n: int,
    blocks: int,
    rows: int,
    block_size: int,
    reads_params: bool,
    update_dtype: jnp.dtype,
    precise_div: bool,
) -> None:
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plt

    from optx._src import quantization

    m = len(plan.quantized)
    refs = list(refs)
    maps = refs[:m]
    carries, refs = refs[m : 2 * m], refs[2 * m :]
    codes_in, absmax_in, refs = refs[:m], refs[m : 2 * m], refs[2 * m :]
    scalar_refs, refs = refs[: len(plan.scalars)], refs[len(plan.scalars) :]
    captured_refs, refs = refs[:n_captured], refs[n_captured:]
    g_ref, refs = refs[0], refs[1:]
    if reads_params:
        p_ref, refs = refs[0], refs[1:]
    u_ref, codes_out, absmax_out = refs[0], refs[1 : 1 + m], refs[1 + m :]

    tile = rows * block_size
    i = pl.program_id(0)
    entries = i * tile + jax.lax.broadcasted_iota(jnp.int32, (tile,), 0)
    valid = entries < n
    block_ids = i * rows + jax.lax.broadcasted_iota(jnp.int32, (rows,), 0)
    valid_blocks = block_ids < blocks

    def as_blocks(x: jax.Array) -> jax.Array:
        return jnp.reshape(x, (rows, block_size))

    def widen(x: jax.Array) -> jax.Array:
        # float16/bfloat16 leaves are read as stored and computed in float32.
        return x.astype(base.compute_dtype(x.dtype))

    moments = []
    for k in range(m):
        c = plt.load(codes_in[k], mask=valid, other=0).astype(jnp.int32)
        a = plt.load(absmax_in[k], mask=valid_blocks, other=0.0)
        moments.append(as_blocks(maps[k][c]) * a[:, None])
    scalars = [r[0] for r in scalar_refs]
    g = widen(as_blocks(plt.load(g_ref, mask=valid, other=0)))
    p = widen(as_blocks(plt.load(p_ref, mask=valid, other=0))) if reads_params else None
    # With precise_div, the inner's division and square root as XLA computes them.
    captured = [r[0] for r in captured_refs]
    u, new = _inner_step(update, plan, captured, precise_div, g, moments, scalars, p)
    plt.store(u_ref, jnp.reshape(u.astype(update_dtype), (tile,)), mask=valid)
    valid_entries = as_blocks(valid)
    for k, signed in enumerate(plan.signed):
        x = new[k].astype(jnp.float32)
        absmax = jnp.max(jnp.where(valid_entries, jnp.abs(x), 0.0), axis=1)
        inverse = _reciprocal(jnp.where(absmax > 0, absmax, 1.0), precise_div)
        y = jnp.clip(x * inverse[:, None], -1.0 if signed else 0.0, 1.0)
        table = carries[k]
        code = quantization._nearest_code(y, signed, lookup=lambda idx, t=table: t[idx])
        plt.store(codes_out[k], jnp.reshape(code.astype(jnp.uint8), (tile,)), mask=valid)
        plt.store(absmax_out[k], absmax, mask=valid_blocks)


def fused_leaf_step(
    update: Callable[..., Any],
    plan: LeafPlan,
    codes: Sequence[jax.Array],
    absmax: Sequence[jax.Array],
    scalars: Sequence[jax.Array],
    captured: Sequence[jax.Array],
    g: jax.Array,
    p: jax.Array | None,
    block_size: int,
    update_dtype: jnp.dtype,
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """One kernel call for one parameter leaf: ``(update, new codes, new absmax)``.

    ``captured`` are the one-entry values the update closes over, as
    :func:`check_elementwise` returns them (kernel inputs; booleans travel as
    int32). ``p`` is None unless the inner reads the parameter. The grid runs over
    tiles of ``TILE`` entries (whole blocks); the last tile's tail (a leaf
    whose size is not a multiple of the tile or of ``block_size``) is masked:
    padding entries are excluded from the block maximum, as the XLA path's
    zero padding is. Lowers with Pallas' Triton backend on CUDA and runs in
    interpret mode elsewhere.
    """
    from optx._src import quantization

    shape = jnp.shape(g)
    n = math.prod(shape)
    maps = [jnp.asarray(quantization._dynamic_map_np(s)) for s in plan.signed]
    carries = [jnp.asarray(quantization._carry_table(s)) for s in plan.signed]
    flat = lambda x: jnp.reshape(x, (-1,))  # noqa: E731
    args = [*maps, *carries, *map(flat, codes), *absmax]
    args += [jnp.reshape(s, (1,)) for s in scalars]
    args += [jnp.reshape(_as_kernel_scalar(c), (1,)) for c in captured] + [flat(g)]
    if p is not None:
        args.append(flat(p))
    # The kernel needs the plan's structure, not where the leaf sits in the state:
    # same-size leaves share one traced and lowered call.
    kind = plan._replace(
        quantized=tuple(range(len(plan.quantized))), scalars=tuple(range(len(plan.scalars)))
    )
    call = _leaf_call(
        update, kind, len(captured), n, block_size, jnp.dtype(update_dtype), p is not None
    )
    out = call(*args)
    m = len(plan.quantized)
    u, new_codes, new_absmax = out[0], out[1 : 1 + m], out[1 + m :]
    return (
        jnp.reshape(u, shape),
        [jnp.reshape(c, shape) for c in new_codes],
        list(new_absmax),
    )


def _as_kernel_scalar(x: Any) -> jax.Array:
    """A captured value as a kernel input (Triton loads no booleans)."""
    x = jnp.asarray(x)
    return x.astype(jnp.int32) if x.dtype == jnp.bool_ else x


@functools.lru_cache(maxsize=256)
def _leaf_call(
    update: Callable[..., Any],
    plan: LeafPlan,
    n_captured: int,
    n: int,
    block_size: int,
    update_dtype: jnp.dtype,
    reads_params: bool,
) -> Callable[..., Any]:
    """The jitted kernel call for leaves of ``n`` entries (one trace and one
    lowering per kind of leaf, shared by same-size leaves): the Triton kernel
    on CUDA, the interpreted one elsewhere."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plt

    from optx._src import quantization

    blocks = quantization.num_blocks(n, block_size)
    rows = _rows(block_size)
    tile = rows * block_size
    m = len(plan.quantized)
    whole = lambda size: pl.BlockSpec((size,), lambda i: (0,))  # noqa: E731
    entries = pl.BlockSpec((tile,), lambda i: (i,))
    block_spec = pl.BlockSpec((rows,), lambda i: (i,))
    tables = [whole(256)] * m + [whole(len(quantization._carry_table(s))) for s in plan.signed]
    in_specs = [
        *tables,
        *[entries] * m,
        *[block_spec] * m,
        *[whole(1)] * (len(plan.scalars) + n_captured),
        entries,
        *([entries] if reads_params else []),
    ]
    out_shape = (
        jax.ShapeDtypeStruct((n,), update_dtype),
        *[jax.ShapeDtypeStruct((n,), jnp.uint8)] * m,
        *[jax.ShapeDtypeStruct((blocks,), jnp.float32)] * m,
    )
    out_specs = (entries, *[entries] * m, *[block_spec] * m)

    def call(*args: jax.Array, interpret: bool) -> tuple[jax.Array, ...]:
        kernel = functools.partial(
            _kernel,
            update=update,
            plan=plan,
            n_captured=n_captured,
            n=n,
            blocks=blocks,
            rows=rows,
            block_size=block_size,
            reads_params=reads_params,
            update_dtype=update_dtype,
            precise_div=not interpret,
        )
        return pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=(pl.cdiv(n, tile),),
            in_specs=in_specs,
            out_specs=out_specs,
            interpret=interpret,
            compiler_params=None if interpret else plt.CompilerParams(num_warps=NUM_WARPS),
            name="quantized_moments_step",
        )(*args)

    def run(*args: jax.Array) -> tuple[jax.Array, ...]:
        return jax.lax.platform_dependent(
            *args,
            cuda=functools.partial(call, interpret=False),
            default=functools.partial(call, interpret=True),
        )

    return jax.jit(run)
