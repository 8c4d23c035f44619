"""Shared types, argument validation and key-path helpers.

Everything in optx follows the optax contract (DESIGN §1): transforms are
``optax.GradientTransformationExtraArgs``; hyper-parameters are Python numbers,
``jax.Array`` scalars or schedules; shapes, ranks and step counts are static
Python values.

Validation helpers here only inspect *concrete* values. Under
``optax.inject_hyperparams`` a factory is re-run inside a trace with
hyper-parameters as tracers, so a validator must never branch on a traced
value: it checks what it can see (Python numbers, concrete arrays) and lets
tracers through.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params: TypeAlias = optax.Params
Updates: TypeAlias = optax.Updates
OptState: TypeAlias = optax.OptState
ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule
KeyPath: TypeAlias = tuple[Any, ...]
DType: TypeAlias = Any
DTypeLike: TypeAlias = jax.typing.DTypeLike
# A weight-decay mask: a tree of bools like the params, or params -> such a tree.
Mask: TypeAlias = Any | Callable[[optax.Params], Any]

# Key-path entries that NNX (and other Variable-boxing libraries) append to
# the path of the boxed array. They carry no meaning for routing.
_BOX_ATTRS = frozenset({"value", "raw_value"})


def _concrete_float(value: Any) -> float | None:
    """Returns ``float(value)`` when it is a concrete scalar, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        return float(value)
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer) and value.ndim == 0:
        return float(value)
    return None


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Validates a static integer hyper-parameter (a rank, a step count...).

    Raises:
      TypeError: if ``value`` is not a Python/NumPy integer (bools and floats
        are rejected: ``steps=5.0`` is a bug, not a request).
      ValueError: if it is negative, or zero when ``allow_zero`` is False.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral,)):
        raise TypeError(
            f"`{name}` must be a static Python int, got {value!r} of type "
            f"{type(value).__name__}. Shapes, ranks and step counts are static in optx; "
            "if you wrap the optimizer in optax.inject_hyperparams, list it in static_args."
        )
    value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be {bound}, got {value}.")
    return value


def check_finite(name: str, value: Any) -> None:
    """Raises ValueError if a concrete scalar ``value`` is NaN or infinite."""
    v = _concrete_float(value)
    if v is not None and not math.isfinite(v):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")


def check_learning_rate(name: str, value: Any) -> None:
    """Validates a learning rate: a finite scalar, an array scalar or a schedule."""
    if value is None:
        raise ValueError(f"`{name}` must be a number or a schedule, got None.")
    if callable(value):
        return
    if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar, got an array of shape {np.shape(value)}.")
    if _concrete_float(value) is None and not isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(f"`{name}` must be a number or a schedule, got {type(value).__name__}.")
    check_finite(name, value)


def check_in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> None:
    """Checks ``low <(=) value <(=) high`` when ``value`` is concrete."""
    v = _concrete_float(value)
    if v is None:
        return
    ok_low = v >= low if low_inclusive else v > low
    ok_high = v <= high if high_inclusive else v < high
    if not (ok_low and ok_high and math.isfinite(v)):
        lb = "[" if low_inclusive else "("
        hb = "]" if high_inclusive else ")"
        raise ValueError(f"`{name}` must be in {lb}{low}, {high}{hb}, got {value!r}.")


def check_nonnegative(name: str, value: Any) -> None:
    """Checks ``value >= 0`` (and finite) when ``value`` is concrete."""
    v = _concrete_float(value)
    if v is None:
        return
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raises ValueError if ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


def canonicalize_dtype(dtype: DType | None) -> jnp.dtype | None:
    """``None`` stays None; anything else becomes a canonical ``jnp.dtype``."""
    if dtype is None:
        return None
    return jax.dtypes.canonicalize_dtype(dtype)


# ----------------------------------------------------------------------------
# Key paths
# ----------------------------------------------------------------------------


def path_entry_name(entry: Any) -> str:
    """The human-readable name of one ``jax.tree_util`` key-path entry."""
    if isinstance(entry, jax.tree_util.DictKey):
        return str(entry.key)
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return str(entry.name)
    if isinstance(entry, jax.tree_util.SequenceKey):
        return str(entry.idx)
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return str(entry.key)
    return str(entry)


def strip_box_entries(path: KeyPath) -> KeyPath:
    """Drops trailing ``.value`` attribute entries added by NNX Variables.

    Only *attribute* entries are dropped: a dict key named ``"value"`` (an
    attention value projection, say) is kept.
    """
    path = tuple(path)
    while path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name in _BOX_ATTRS:
        path = path[:-1]
    return path


def path_to_str(path: KeyPath) -> str:
    """``('blocks', 0, 'attn', 'kernel', .value)`` -> ``'blocks/0/attn/kernel'``."""
    return "/".join(path_entry_name(e) for e in strip_box_entries(path))


def is_leaf_or_none(x: Any) -> bool:
    """``is_leaf`` for trees that may hold ``None`` leaves (optax convention)."""
    return x is None


def flatten_with_paths(tree: Any) -> tuple[list[tuple[str, Any]], Any]:
    """Flattens ``tree`` into ``[(path_str, leaf)]`` and its treedef.

    ``optax.MaskedNode`` subtrees contribute no leaves (they have no children),
    so a tree masked by ``optax.masked``/``optax.partition`` flattens to the
    unmasked leaves with their full, original paths.
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_to_str(p), leaf) for p, leaf in leaves_with_path], treedef


def tree_map_with_path_str(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """``jax.tree.map`` where ``fn`` receives the '/'-joined path string first."""
    return jax.tree_util.tree_map_with_path(lambda p, x, *r: fn(path_to_str(p), x, *r), tree, *rest)


def check_same_structure(name_a: str, tree_a: Any, name_b: str, tree_b: Any) -> None:
    """Raises a clear ValueError when two trees do not have the same structure."""
    sa = jax.tree_util.tree_structure(tree_a)
    sb = jax.tree_util.tree_structure(tree_b)
    if sa != sb:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same tree structure.\n"
            f"  {name_a}: {sa}\n  {name_b}: {sb}"
        )


def masked_like(tree: Any, like: Any) -> Any:
    """``tree`` with an ``optax.MaskedNode`` wherever ``like`` has one.

    ``optax.masked`` and ``optax.partition`` hand their inner transform the
    updates with masked leaves replaced by ``MaskedNode`` but pass extra
    arguments through whole; a full tree given as an extra argument (AGVM's
    ``grads_a``/``grads_b``) is cut to the inner's leaves with this. Trees of
    another structure come back unchanged (the caller's structure check names
    them).
    """

    def is_node(x: Any) -> bool:
        return x is None or isinstance(x, optax.MaskedNode)

    try:
        return jax.tree.map(
            lambda m, x: m if isinstance(m, optax.MaskedNode) else x, like, tree, is_leaf=is_node
        )
    except (ValueError, TypeError):
        return tree


def expand_mask(mask: Any, params: Any) -> Any:
    """optax's mask as a tree of bools with ``params``' structure.

    ``mask`` is None (everything), a bool, a tree of bools that is a prefix of
    ``params`` (``{'embed': False, 'blocks': True}``), or a callable of the
    params returning one of those, as ``optax.masked`` and
    ``optax.add_decayed_weights`` take it.
    """
    tree = True if mask is None else mask(params) if callable(mask) else mask
    return jax.tree.map(lambda keep, sub: jax.tree.map(lambda _: keep, sub), tree, params)


def unzip_tree(prefix: Any, tree_of_tuples: Any, n: int = 2) -> tuple[Any, ...]:
    """Splits a tree whose leaves (at ``prefix``'s leaf positions) are n-tuples.

    ``prefix`` fixes where the tuples sit, so tuples that are part of the
    parameter structure itself are never confused with per-leaf results.
    """
    return tuple(
        jax.tree.map(
            lambda _, t, i=i: None if t is None else t[i],
            prefix,
            tree_of_tuples,
            is_leaf=is_leaf_or_none,
        )
        for i in range(n)
    )


# ----------------------------------------------------------------------------
# Control flow inside jax.shard_map
# ----------------------------------------------------------------------------
#
# Inside ``jax.shard_map`` (``check_vma=True``, its default) every value has a
# type that says over which manual mesh axes it varies. ``lax.cond`` needs both
# branches to return the same types and ``lax.scan``/``while_loop``/``fori_loop``
# a carry whose type the body keeps; an optimizer's state is made by ``init``
# from constants (device-invariant) and refreshed from the local gradients
# (varying), so a "keep" branch and a "refresh" branch differ, and a carry that
# starts as ``zeros``/``eye`` becomes varying in the body. These wrappers are
# ``jax.lax``'s own outside ``shard_map``; inside it they mark each output or
# carry leaf varying (``jax.lax.pcast(..., to='varying')``: a type, not a
# value, change) over the union of the axes its alternatives vary over.


def _manual_axes() -> frozenset[str]:
    """The manual mesh axes of the current trace (inside ``jax.shard_map``)."""
    mesh = jax.sharding.get_abstract_mesh()
    return frozenset() if mesh.empty else frozenset(mesh.manual_axes)


def _varying(x: Any) -> frozenset[str]:
    """The manual axes ``x`` (an array or a ``ShapeDtypeStruct``) varies over."""
    aval = x if isinstance(x, jax.ShapeDtypeStruct) else jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    return frozenset() if manual is None else frozenset(manual.varying)


def _vary_to(tree: Any, axes: Any) -> Any:
    """``tree`` with each leaf marked varying over its entry of ``axes`` too."""

    def leaf(x: Any, want: frozenset[str]) -> Any:
        missing = tuple(sorted(want - _varying(x)))
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(leaf, tree, axes)


def vary_like(tree: Any, like: Any) -> Any:
    """``tree`` (e.g. random probes made from a key) marked varying over the
    manual axes of the matching leaves of ``like`` (the parameters), so that it
    can be a tangent of them inside ``jax.shard_map``; ``tree`` elsewhere."""
    if not _manual_axes():
        return tree
    return _vary_to(tree, jax.tree.map(_varying, like))


def _carry_fixed_point(body: Callable[[Any], Any], carry: Any) -> Any:
    """``carry`` marked varying wherever ``body`` (carry → carry) makes it vary."""
    for _ in range(16):  # the axes only grow; a few rounds at most
        out = jax.eval_shape(body, carry)
        axes = jax.tree.map(lambda o, c: _varying(o) | _varying(c), out, carry)
        grown = _vary_to(carry, axes)
        if all(a == _varying(c) for a, c in zip(jax.tree.leaves(axes), jax.tree.leaves(carry))):
            return grown
        carry = grown
    return carry


def cond(
    pred: Any, true_fun: Callable[..., Any], false_fun: Callable[..., Any], *operands: Any
) -> Any:
    """``jax.lax.cond`` whose branches may differ in the manual axes they vary over."""
    if not _manual_axes():
        return jax.lax.cond(pred, true_fun, false_fun, *operands)
    outs = [jax.eval_shape(fn, *operands) for fn in (true_fun, false_fun)]
    by_pred = _varying(pred)
    axes = jax.tree.map(lambda a, b: _varying(a) | _varying(b) | by_pred, *outs)
    return jax.lax.cond(
        pred,
        lambda *o: _vary_to(true_fun(*o), axes),
        lambda *o: _vary_to(false_fun(*o), axes),
        *operands,
    )


def scan(
    f: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any = None,
    length: int | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """``jax.lax.scan`` whose body may make an invariant carry varying."""
    leaves = jax.tree.leaves(xs)
    if _manual_axes() and all(jnp.shape(x)[0] for x in leaves):
        first = jax.tree.map(lambda x: x[0], xs)
        init = _carry_fixed_point(lambda c: f(c, first)[0], init)
    return jax.lax.scan(f, init, xs, length=length, **kwargs)


def while_loop(cond_fun: Callable[[Any], Any], body_fun: Callable[[Any], Any], init: Any) -> Any:
    """``jax.lax.while_loop`` whose body may make an invariant carry varying."""
    if _manual_axes():
        init = _carry_fixed_point(body_fun, init)
    return jax.lax.while_loop(cond_fun, body_fun, init)


def fori_loop(
    lower: Any, upper: Any, body_fun: Callable[[Any, Any], Any], init: Any, **kwargs: Any
) -> Any:
    """``jax.lax.fori_loop`` whose body may make an invariant carry varying."""
    if _manual_axes():
        index = jnp.asarray(lower, jnp.int32)
        init = _carry_fixed_point(lambda c: body_fun(index, c), init)
    return jax.lax.fori_loop(lower, upper, body_fun, init, **kwargs)


def materialized(fn: Callable[[jax.Array], Any], anchor: jax.Array) -> Any:
    """``fn(anchor)`` computed in its own region, which XLA neither fuses nor folds.

    A conditional is a fusion boundary, so ``fn`` sits under a ``lax.cond``
    whose predicate is always true but that XLA does not fold (``word | 1 != 0``,
    ``word`` the first element of ``anchor``: a PRNG key's data or an integer
    array such as a step counter; an ``optimization_barrier`` is removed before
    fusion on XLA:CPU); the other branch is zeros of ``fn``'s output tree. Same
    values as ``fn(anchor)``; under ``vmap`` the cond is a select. Used where
    XLA would otherwise copy a cheap producer into every consumer (a random
    draw: ``curvature.random_probes``) or make every consumer distinct by a
    constant (slice offsets: ``layouts.runtime_indices``).
    """
    is_key = jnp.issubdtype(anchor.dtype, jax.dtypes.prng_key)
    data = jax.random.key_data(anchor) if is_key else anchor
    if not jnp.issubdtype(data.dtype, jnp.integer):
        raise TypeError(f"materialized: anchor must be a PRNG key or integers, got {data.dtype}.")
    out = jax.eval_shape(fn, anchor)

    def zeros(_: jax.Array) -> Any:
        return jax.tree.map(lambda o: jnp.zeros(o.shape, o.dtype), out)

    return cond((jnp.ravel(data)[0] | 1) != 0, fn, zeros, anchor)


def runtime_offsets(offsets: Sequence[int], anchor: jax.Array) -> tuple[jax.Array, ...]:
    """``offsets`` as int32 scalars XLA cannot constant-fold (one :func:`materialized`
    region from ``anchor``).

    A slice at a static offset is a constant of every fusion that consumes it, so
    ``k`` same-shape pieces sliced out of one array compile as ``k`` distinct
    kernels; sliced at these offsets (``lax.dynamic_slice``) their consumers are
    one kernel. Same values; the region costs one predicate per step.
    """
    return materialized(lambda _: tuple(jnp.asarray(o, jnp.int32) for o in offsets), anchor)


def split_consecutive(
    x: jax.Array, sizes: Sequence[int], anchor: jax.Array, axis: int = 0
) -> list[jax.Array]:
    """``x`` cut along ``axis`` into consecutive pieces of ``sizes`` entries, at
    :func:`runtime_offsets` (from ``anchor``), so that the consumers of same-shape
    pieces compile as one kernel. One piece, or offsets past int32, are plain slices.
    Same values.
    """
    sizes = [int(n) for n in sizes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    if len(sizes) <= 1 or sum(sizes) >= 2**31:
        return [
            jax.lax.slice_in_dim(x, s, s + n, axis=axis) for s, n in zip(starts, sizes, strict=True)
        ]
    offsets = runtime_offsets(starts, anchor)
    return [
        jax.lax.dynamic_slice_in_dim(x, o, n, axis=axis)
        for o, n in zip(offsets, sizes, strict=True)
    ]


def merge_leading(x: jax.Array, tail: int) -> jax.Array:
    """``x`` as ``(prod(leading), *last tail axes)``: the leading axes merged into one.

    The merged size is spelled out, not ``-1``, which is ambiguous for zero-size
    arrays (an empty leaf ``(0,)`` or ``(3, 0)``).
    """
    lead = x.ndim - tail
    return jnp.reshape(x, (math.prod(x.shape[:lead]), *x.shape[lead:]))


def safe_divide(x: jax.Array, den: jax.Array) -> jax.Array:
    """``x / den`` with 0 where ``den`` is 0; elsewhere the plain quotient (a NaN
    ``den`` gives NaN, for the non-finite policy to see).

    For a norm at 0 (∇ of a norm at 0: 0 is a sub-gradient) and for Adam's
    ``m / (√v + ε)`` at ``ε = 0`` in a coordinate no gradient has reached (a rotated
    basis' exact zeros): no information, no step.
    """
    zero = den == 0
    return jnp.where(zero, 0.0, x / jnp.where(zero, 1.0, den))


def compute_dtype(*dtypes: Any) -> jnp.dtype:
    """The dtype internal arithmetic runs in: ``promote(*dtypes, float32)``.

    The library-wide rule (DESIGN §1, issue 14): bf16/f16 parameters compute in
    f32, f32 stays f32, f64 (with ``jax_enable_x64``) stays f64, and complex
    parameters keep their complex dtype (c64/c128). Never hard-code
    ``jnp.float32`` for arithmetic on parameter-derived values; use this.
    """
    return functools.reduce(jnp.promote_types, dtypes, jnp.dtype(jnp.float32))


def real_dtype(dtype: Any) -> jnp.dtype:
    """The real counterpart of ``dtype`` (c64 -> f32, c128 -> f64; reals unchanged)."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.finfo(dtype).dtype
    return dtype


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|²`` element-wise, real: ``x²`` for real ``x``, ``Re(x·x̄)`` for complex ``x``.

    The complex policy's squared magnitude (``jnp.square`` of a complex number
    is not its squared modulus and is not invariant to a phase).
    """
    if jnp.iscomplexobj(x):
        return jnp.real(x * jnp.conj(x))
    return jnp.square(x)


def at_least_f32(x: Any) -> jax.Array:
    """``x`` as an array of at least f32 precision (f64 stays f64).

    For scalar math on hyper-parameters that may arrive as bf16 tracers under
    ``inject_hyperparams``.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.promote_types(jnp.float32, jnp.result_type(float)))
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def scalar_dtype(dtype: Any = None) -> jnp.dtype:
    """The real dtype scalar corrections are computed in.

    ``dtype`` given: the real counterpart of ``compute_dtype(dtype)`` (f32 for
    bf16/f32 leaves, f64 for f64 leaves). ``None``: the widest enabled float
    (f64 under ``jax_enable_x64``, else f32), for scalars shared by leaves of
    several dtypes; cast the result to each leaf's compute dtype at use.
    """
    if dtype is None:
        return jnp.dtype(jnp.result_type(float))
    return real_dtype(compute_dtype(dtype))


def one_minus(decay: Any, dtype: Any = None) -> jax.Array:
    """``1 − decay`` in :func:`scalar_dtype`, formed exactly in Python for a Python number.

    ``1 − 0.999`` is formed in double precision and rounded once, so a Python
    ``β₂ = 0.999`` keeps ``1 − β₂ = 10⁻³`` to the last bit of the target dtype
    (``1 − float32(0.999)`` is off by 1.3e-5 relative). A traced ``decay``
    (``inject_hyperparams``) is subtracted in its own dtype, promoted.
    """
    dt = scalar_dtype(dtype)
    if isinstance(decay, numbers.Real) and not isinstance(decay, bool):
        return jnp.asarray(1.0 - float(decay), dt)
    d = jnp.asarray(decay)
    return 1.0 - d.astype(jnp.promote_types(d.dtype, dt))


def power(decay: Any, count: jax.Array, dtype: Any = None) -> jax.Array:
    """``decayᵗ`` as ``exp(t·log1p(−(1 − decay)))`` in :func:`scalar_dtype`."""
    omd = one_minus(decay, dtype)
    return jnp.exp(jnp.asarray(count).astype(omd.dtype) * jnp.log1p(-omd))


def bias_correction(decay: Any, count: jax.Array, dtype: Any = None) -> jax.Array:
    """``1 − decayᵗ`` in :func:`scalar_dtype` (f64 for f64 leaves), without a detour via f32.

    Evaluated as ``−expm1(t·log1p(−(1 − decay)))`` with ``1 − decay`` from
    :func:`one_minus`: relative error of a few ulps of the target dtype for any
    ``t`` (``1 − float32(0.999)¹`` is off by 1.3e-5), matching the reference
    codes, which form ``1 − β**t`` in Python doubles.
    """
    omd = one_minus(decay, dtype)
    return -jnp.expm1(jnp.asarray(count).astype(omd.dtype) * jnp.log1p(-omd))


def clip_grad_norm_like_torch(tree: Any, max_norm: Any) -> Any:
    """``torch.nn.utils.clip_grad_norm_(…, max_norm)`` on a tree (global 2-norm).

    Every leaf is multiplied by ``min(1, max_norm / (‖g‖₂ + 1e-6))`` with
    ``‖g‖₂`` over all leaves, computed in the compute dtype (float32, float64
    for f64 leaves) — PyTorch's form, used by the official Sophia-G and AGVM
    training code (``optax.clip_by_global_norm`` uses ``max_norm/max(‖g‖,
    max_norm)`` instead, which differs by the 1e-6).
    """
    leaves = [x for x in jax.tree.leaves(tree) if x is not None]
    if not leaves:
        return tree
    dt = real_dtype(compute_dtype(*[x.dtype for x in leaves]))
    total = sum(
        jnp.sum(jnp.square(jnp.abs(x.astype(compute_dtype(x.dtype))))).astype(dt) for x in leaves
    )
    norm = jnp.sqrt(total)
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(
        lambda x: None if x is None else (x * scale.astype(x.dtype)).astype(x.dtype),
        tree,
        is_leaf=is_leaf_or_none,
    )


def moment_dtype(dtype: DType | None, leaf_dtype: DType) -> jnp.dtype:
    """The dtype of a signed moment (``mu``) of a leaf, given ``mu_dtype``.

    ``None`` keeps the leaf's dtype. A real ``mu_dtype`` on a complex leaf sets
    the precision of a complex moment (float32, bfloat16, float16 → complex64;
    float64 → complex128): a real moment would drop the imaginary part of
    every gradient (``optax.tree.zeros_like(params, dtype=jnp.float32)``
    does, with a JAX ComplexWarning), against the complex policy.
    """
    if dtype is None:
        return jnp.dtype(leaf_dtype)
    if jnp.issubdtype(leaf_dtype, jnp.complexfloating) and not jnp.issubdtype(
        dtype, jnp.complexfloating
    ):
        return jnp.promote_types(dtype, jnp.complex64)
    return jnp.dtype(dtype)


def moment_zeros(params: Any, dtype: DType | None) -> Any:
    """Zeros like ``params`` for a signed moment: :func:`moment_dtype` per leaf."""
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=moment_dtype(dtype, p.dtype)), params)


def check_real_params(params: Any, method: str) -> None:
    """Raises a TypeError naming the first complex leaf of ``params``.

    The complex policy (issues 13 and 20): an optimizer either supports complex
    leaves correctly (phase-equivariant: ``|g|²``, conjugate transposes,
    Hermitian bases, no casts to a real dtype) or calls this in ``init`` so that
    complex parameters are refused before any step, with the leaf named. Works
    on arrays and ``jax.ShapeDtypeStruct`` leaves.
    """
    flat, _ = flatten_with_paths(params)
    for path, leaf in flat:
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"{method} does not support complex parameters; leaf '{path or '<root>'}' has "
                f"dtype {jnp.dtype(dtype).name}. Route complex leaves to an optimizer that supports "
                "them (e.g. optx.adamw) or split them into real and imaginary parts."
            )
