"""Per-matrix robust clipping of updates (ROOT's outlier suppression).

ROOT (He et al., "ROOT: Robust Orthogonalized Optimizer for Neural Network
Training", arXiv 2511.20626) separates the momentum ``M`` of every matrix into
outliers and a robust base before orthogonalizing it. The official code picks
the threshold as a per-matrix quantile of ``|M|`` and applies a soft threshold:

.. math::

  ε = \\mathrm{quantile}_q(|M|) + 10^{-9}, \\qquad
  O = \\mathrm{sign}(M) \\max(|M| - ε, 0), \\qquad B = M - O,

so ``B`` is ``M`` clipped elementwise to ``[−ε, ε]``. The quantile uses
linear interpolation between order statistics, as ``torch.quantile`` (and
``jnp.quantile``'s default ``method='linear'``): with ``N`` entries sorted
``x₍₀₎ ≤ … ≤ x₍N−1₎`` and ``h = q (N − 1)``,
``quantile_q = x₍⌊h⌋₎ + (h − ⌊h⌋)(x₍⌈h⌉₎ − x₍⌊h⌋₎)``.

The two order statistics are found by **exact selection, not a sort**
(:func:`matrix_quantile`): floats are mapped to unsigned integer keys
whose order is the float order, and the ``k``-th smallest key is built bit by
bit, most significant first, each bit decided by one count
``#{x : key(x) ≤ t}`` — 32 counting passes for f32 (64 for f64), each a
fused compare-and-sum over the matrix, ``O(N)`` work per pass and no data
movement. For a leaf on a mesh every pass is a reduction over the matrix axes
of the parameter itself (no transpose, no reshape), so sharded leaves need no
gather and no mesh context. Leaves off any mesh are laid out as rows of one
stack per distinct number of entries per matrix, so that all such matrices share
one selection loop (one compiled program, whatever their shapes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams, layouts, sharding
from optx._src.layouts import LayoutSpec, ResolvedLayout

QUANTILE_METHODS = ("linear", "lower", "higher")


def _key_type(dtype: Any) -> jnp.dtype:
    return jnp.dtype(f"uint{8 * jnp.dtype(dtype).itemsize}")


def _sortable_key(x: Any, dtype: Any) -> jax.Array:
    """The unsigned integer key of the float ``x``: key order is float order."""
    utype = _key_type(dtype)
    sign = jnp.asarray(1 << (8 * utype.itemsize - 1), utype)
    bits = jax.lax.bitcast_convert_type(jnp.asarray(x, dtype), utype)
    # Negative floats: every bit flipped (larger magnitude -> smaller key);
    # non-negative floats: the sign bit set (above every negative float).
    return jnp.where(bits >= sign, ~bits, bits | sign)


def _float_from_key(keys: jax.Array, dtype: Any) -> jax.Array:
    """Inverse of :func:`_sortable_key` (the key of −0 gives −0)."""
    sign = jnp.asarray(1 << (8 * keys.dtype.itemsize - 1), keys.dtype)
    return jax.lax.bitcast_convert_type(jnp.where(keys >= sign, keys ^ sign, ~keys), dtype)


def _counter(
    x: jax.Array, axes: tuple[int, ...], n: int
) -> Callable[[list[jax.Array]], list[jax.Array]]:
    """``[t₁, …, t_K] ↦ [#{x ≤ t₁}, …]`` per matrix, as one fused pass over ``x``.

    The ``K`` counts are one reduction with ``K`` results (a variadic reduce: ``x`` is
    read once, whatever ``K``). Summed in ``x``'s float dtype while every partial sum
    is exact (``n`` up to 2**24 entries in f32), which XLA's CPU backend reduces about
    twice as fast as int32; int32 beyond.
    """
    exact = n <= 2 ** (jnp.finfo(x.dtype).nmant + 1)
    count_dtype = x.dtype if exact else jnp.int32
    zero = jnp.zeros((), count_dtype)

    def add(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        return tuple(u + v for u, v in zip(a, b, strict=True))

    def count(ts: list[jax.Array]) -> list[jax.Array]:
        if len(ts) == 1:  # a plain sum (the sharding rules of a one-result reduce)
            return [jnp.sum((x <= ts[0]).astype(count_dtype), axis=axes, keepdims=True)]
        hits = tuple((x <= t).astype(count_dtype) for t in ts)
        sums = jax.lax.reduce(hits, (zero,) * len(ts), add, axes)
        return [jnp.expand_dims(c, axes) for c in sums]

    return count


def bits_per_pass() -> int:
    """Key bits decided per counting pass of the exact selection: 1.

    A pass that decides ``r`` bits (1, 2 or 4: ``r`` divides the key width) counts
    ``2ʳ − 1`` thresholds in one variadic reduction, so ``r = 2`` halves the passes
    (and, on a mesh, the all-reduces) for 1.5× the compares; the selected values are
    the same for every ``r``. On XLA:CPU ``r = 2`` ran ROOT's selection 1.07–1.66× slower and
    ``r = 4`` 2.6–3.9× (5.2 M-param tree, six runs of ``python
    benchmarks/quantile_selection.py --preset small``, three of them on a loaded machine). On an H200 ROOT's 34 one-bit passes cost
    about what their bytes predict (13.72 vs Muon's 10.02 ms, GPT-2 small): ``r = 2``
    should save half of that there, but it is not measured yet (the same script, in
    ``benchmarks/gpu_figures.sh``), so every backend keeps one bit per pass.
    """
    return 1


def _order_statistic_pair(
    x: jax.Array, lo: jax.Array, hi: jax.Array, axes: tuple[int, ...], n: int, r: int
) -> tuple[jax.Array, jax.Array]:
    """The ``lo``-th and ``hi``-th smallest entries (0-based, ``hi ∈ {lo, lo+1}``)
    over ``axes``, per remaining index.

    ``x_lo``: in key space (:func:`_sortable_key`), the smallest key ``v`` with
    ``#{key(x) ≤ v} ≥ lo + 1`` is built from the most significant bits down, ``r``
    bits (:func:`bits_per_pass`) per counting pass: the next ``r`` bits of ``v`` are
    the number of digits ``c < 2ʳ − 1`` for which fewer than ``lo + 1`` entries are
    ``≤`` the float whose key has the bits decided so far, then ``c``, then all lower
    bits one (the counts grow with ``c``; ``r = 1`` is plain bisection). The compare
    runs on the floats themselves (the key map is monotone; keys above ``+inf``'s are
    clamped to it, keys below ``−inf``'s are NaNs that count nothing, as they should).
    NaN entries are never counted. ``x_hi`` is ``x_lo`` again if it repeats, else the
    smallest entry above it: two more passes, taken in the loop's last iteration so
    that every pass reads the loop's own copy of ``x`` (outside the loop XLA may
    recompute a cheap producer such as a complex ``|x|``, which can round differently
    in another fusion).
    """
    utype = _key_type(x.dtype)
    nbits = 8 * utype.itemsize
    passes = nbits // r
    one = jnp.asarray(1, utype)
    key_of_inf = _sortable_key(jnp.inf, x.dtype)
    count = _counter(x, axes, n)
    count_dtype = count([jnp.zeros((), x.dtype)])[0].dtype
    need_lo = (lo + 1).astype(count_dtype)
    need_hi = (hi + 1).astype(count_dtype)
    # Reduction results, so the carry has the reduced values' sharding type.
    reduced = jnp.zeros_like(jnp.min(x, axis=axes, keepdims=True))
    carry = (reduced.astype(utype), reduced, x)

    def digit_step(i: jax.Array, ans: jax.Array, x_hi: jax.Array, x: jax.Array) -> Any:
        shift = (nbits - r * (i + 1)).astype(utype)
        below = (one << shift) - one
        trials = [
            _float_from_key(
                jnp.minimum(ans | (jnp.asarray(c, utype) << shift) | below, key_of_inf), x.dtype
            )
            for c in range(2**r - 1)
        ]
        digit = sum((k < need_lo).astype(utype) for k in _counter(x, axes, n)(trials))
        return ans | (digit << shift), x_hi, x

    def next_statistic(i: jax.Array, ans: jax.Array, x_hi: jax.Array, x: jax.Array) -> Any:
        del i, x_hi
        x_lo = _float_from_key(ans, x.dtype)
        repeats = _counter(x, axes, n)([x_lo])[0] >= need_hi
        above = jnp.min(jnp.where(x > x_lo, x, jnp.inf), axis=axes, keepdims=True)
        return ans, jnp.where(repeats, x_lo, above), x

    def body(i: jax.Array, carry: Any) -> Any:
        return base.cond(i < passes, digit_step, next_statistic, i, *carry)

    ans, x_hi, _ = base.fori_loop(0, passes + 1, body, carry)
    x_lo = _float_from_key(ans, x.dtype)
    zero = jnp.zeros((), x.dtype)
    return jnp.where(x_lo == 0, zero, x_lo), jnp.where(x_hi == 0, zero, x_hi)  # +0, not −0


def _reduction_axes(layout: ResolvedLayout) -> tuple[int, ...]:
    return tuple(sorted(layout.reduction_axes + layout.output_axes))


def matrix_quantile(
    x: jax.Array, q: Any, layout: ResolvedLayout, method: str = "linear"
) -> jax.Array:
    """The ``q``-quantile of each matrix of ``x``, by exact selection.

    ``method`` is ``jnp.quantile``'s: ``'linear'`` (``torch.quantile``'s and
    ROOT's rule) interpolates ``x₍⌊h⌋₎(1 − w) + x₍⌈h⌉₎ w`` with ``h = q(N − 1)``,
    ``w = h − ⌊h⌋``, computed in the compute dtype (f32, or f64 for f64 ``x``)
    as ``jnp.quantile`` does; ``'lower'`` / ``'higher'`` return the order
    statistic ``x₍⌊h⌋₎`` / ``x₍⌈h⌉₎`` itself. The order statistics are exact
    (bit-identical to a sort; −0 counts as +0); a matrix holding a NaN gets
    NaN, as ``jnp.quantile``. Cost: ``8·itemsize + 2`` fused counting passes
    over ``x`` (34 for f32) instead of a sort.

    Returns an array of :meth:`ResolvedLayout.matrix_norm_shape` (reduction and
    output axes kept as size 1). Batch axes (stacked layers, ...) get one
    quantile each. Works on sharded ``x`` with or without a mesh context (only
    elementwise ops and reductions over the matrix axes).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> x = jnp.array([[4.0, 1.0], [3.0, 2.0]])
      >>> lay = optx.MatrixLayout().resolve(x.shape)
      >>> optx.linalg.matrix_quantile(x, 0.5, lay)   # h = 1.5: 2 (1 - 0.5) + 3 (0.5)
      Array([[2.5]], dtype=float32)
      >>> optx.linalg.matrix_quantile(x, 0.9, lay, method="lower")   # h = 2.7: x₍₂₎
      Array([[3.]], dtype=float32)
    """
    base.check_choice("method", method, QUANTILE_METHODS)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError("matrix_quantile needs real input; pass jnp.abs(x) for complex x.")
    return _matrix_quantile(x, q, layout, method)


def _matrix_quantile(x: jax.Array, q: Any, layout: ResolvedLayout, method: str) -> jax.Array:
    """:func:`_select_quantile` with this device's :func:`bits_per_pass`."""
    return _select_quantile(x, q, layout, method, bits_per_pass())


@functools.partial(jax.jit, static_argnames=("layout", "method", "bits"))
def _select_quantile(
    x: jax.Array, q: Any, layout: ResolvedLayout, method: str, bits: int
) -> jax.Array:
    """:func:`matrix_quantile`, jitted: eager calls compile one program per
    shape instead of dispatching the counting loop op by op."""
    cdt = base.compute_dtype(x.dtype)
    xc = x.astype(cdt)
    axes = _reduction_axes(layout)
    n = math.prod(layout.shape[a] for a in axes)
    h = jnp.asarray(q, cdt) * (jnp.asarray(n, cdt) - 1)
    floor, ceil = jnp.floor(h), jnp.ceil(h)
    w = h - floor
    lo = jnp.clip(floor, 0, n - 1).astype(jnp.int32)
    hi = jnp.clip(ceil, 0, n - 1).astype(jnp.int32)
    x_lo, x_hi = _order_statistic_pair(xc, lo, hi, axes, n, bits)
    if method == "lower":
        out = x_lo
    elif method == "higher":
        out = x_hi
    else:
        out = x_lo * (1 - w) + x_hi * w
    has_nan = jnp.any(jnp.isnan(xc), axis=axes, keepdims=True)
    return jnp.where(has_nan, jnp.asarray(jnp.nan, cdt), out)


@functools.partial(jax.jit, static_argnames=("layout",))
def _soft_threshold(v: jax.Array, quantile: Any, eps: Any, layout: ResolvedLayout) -> jax.Array:
    """``v − sign(v)·max(|v| − ε, 0)`` with ``ε = quantile_q(|v|) + eps`` per matrix.

    Jitted so that eager calls compile one program per leaf shape instead of
    dispatching the counting loop op by op.
    """
    magnitude = jnp.abs(v.astype(base.compute_dtype(v.dtype)))  # real, also for complex v
    return _apply_threshold(v, _matrix_quantile(magnitude, quantile, layout, "linear") + eps)


def _apply_threshold(v: jax.Array, threshold: jax.Array) -> jax.Array:
    """``v − sign(v)·max(|v| − threshold, 0)`` in the compute dtype, cast back."""
    vc = v.astype(base.compute_dtype(v.dtype))
    outliers = jnp.sign(vc) * jax.nn.relu(jnp.abs(vc) - threshold)
    return (vc - outliers).astype(v.dtype)


def _matrix_rows(x: jax.Array, layout: ResolvedLayout) -> jax.Array:
    """``|x|`` in the real compute dtype as ``(B, n)``: one row per matrix."""
    batch = tuple(sorted(layout.batch_axes))
    magnitude = jnp.abs(x.astype(base.compute_dtype(x.dtype)))
    magnitude = jnp.moveaxis(magnitude, batch, tuple(range(len(batch))))
    return magnitude.reshape(layout.batch_size, -1)


def _grouped_thresholds(
    items: list[tuple[jax.Array, ResolvedLayout]], quantile: Any, eps: Any
) -> list[jax.Array]:
    """``quantile_q(|M|) + eps`` of every matrix ``M`` of every ``(x, layout)``.

    Each result has its leaf's :meth:`ResolvedLayout.matrix_norm_shape`. The
    selection runs once per distinct (entries per matrix, compute dtype): the
    matrices' magnitudes are laid out as rows of one ``(ΣB, 1, n)`` stack
    whatever their layouts (the quantile ignores the order of a matrix's
    entries, and the selection is exact, so the values are those of one
    selection per leaf), and the thresholds are cut out at runtime offsets
    (:func:`layouts.split_rows`), so same-shape leaves share their kernels.
    """
    groups: dict[tuple[int, Any], list[int]] = {}
    for j, (x, lay) in enumerate(items):
        n = math.prod(d for a, d in enumerate(lay.shape) if a not in lay.batch_axes)
        dtype = base.real_dtype(base.compute_dtype(x.dtype))
        groups.setdefault((n, dtype), []).append(j)
    out: list[Any] = [None] * len(items)
    for (n, _), members in groups.items():
        rows = [_matrix_rows(*items[j]) for j in members]
        stack = rows[0] if len(rows) == 1 else jnp.concatenate(rows)
        total = stack.shape[0]
        lay = ResolvedLayout((total, 1, n), (1,), (2,), (0,))
        threshold = _matrix_quantile(stack.reshape(total, 1, n), quantile, lay, "linear") + eps
        sizes = [items[j][1].batch_size for j in members]
        indices = (
            None if len(sizes) == 1 else layouts.runtime_indices(total, layouts.data_anchor(stack))
        )
        parts = layouts.split_rows(threshold.reshape(total), sizes, indices)
        for j, part in zip(members, parts, strict=True):
            out[j] = part.reshape(items[j][1].matrix_norm_shape())
    return out


@hyperparams.validated()
def clip_by_quantile(
    quantile: float = 0.9,
    eps: float = 1e-9,
    *,
    layout: LayoutSpec = None,
    strategy: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    """Soft-thresholds each matrix at a quantile of its magnitudes (ROOT).

    Per matrix ``M`` of the layout (arXiv 2511.20626: the proximal
    soft-thresholding steps ``O_t = T_ε[M_t]``, ``B_t = M_t − O_t`` of the ROOT
    algorithm, with the official code's threshold rule):

    .. math::

      ε = \\mathrm{quantile}_q(|M|) + \\mathrm{eps}, \\qquad
      B = M - \\mathrm{sign}(M)\\,\\max(|M| - ε, 0)

    which equals ``clip(M, −ε, ε)``; the official form is evaluated as written.
    The quantile is taken over all entries of the matrix (linear interpolation,
    ``torch.quantile``'s rule), in f32 like the official ``g.abs().float()``
    (f64 for f64 updates); the result is returned in the update's dtype.
    Complex updates are thresholded on ``|M|`` and keep their phase
    (``sign(M) = M/|M|``). Cost: 34 fused counting passes per matrix (exact
    selection, :func:`matrix_quantile`), ``O(N)`` each, instead of an
    ``O(N log N)`` sort; the matrices of all leaves off a mesh with the same
    number of entries (whatever their shapes and layouts) are rows of one
    stack and share one selection, so compile time grows with the distinct
    matrix sizes; leaves on a mesh of equal shape share one
    (:func:`optx._src.layouts.map_matrix_groups`). Leaves without a layout
    pass through. Stateless.

    Args:
      quantile: q in [0, 1] (0.9 official; injectable).
      eps: added to the quantile (1e-9 official).
      layout: a :data:`~optx.LayoutSpec` (default: the default router's).
      strategy: sharding strategy for sharded leaves (see
        :func:`optx.sharding.apply_matrix_fn`).

    References:
      He, Han, Zhou, Chen, Liu, Chen, Wang, "ROOT: Robust Orthogonalized
      Optimizer for Neural Network Training", arXiv 2511.20626 (code:
      github.com/huawei-noah/noah-research/tree/master/ROOT).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.clip_by_quantile(0.5, eps=0.0)
      >>> g = {'w': jnp.array([[1.0, -2.0], [3.0, -4.0]])}
      >>> u, _ = tx.update(g, optax.EmptyState())
      >>> u['w']   # median of |g| is 2.5
      Array([[ 1. , -2. ],
             [ 2.5, -2.5]], dtype=float32)
    """
    base.check_in_range("quantile", quantile, 0.0, 1.0, high_inclusive=True)
    base.check_nonnegative("eps", eps)
    base.check_choice("strategy", strategy, sharding.STRATEGIES)

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        del params, extra

        flat, treedef, lays = layouts.leaves_with_layouts(updates, layout)
        local: dict[int, ResolvedLayout] = {}
        for i, ((_, x), lay) in enumerate(zip(flat, lays)):
            if lay is not None and sharding.spec_of(x) is None:
                local[i] = lay
        # Leaves off any mesh: one selection per distinct matrix size (see
        # _grouped_thresholds), so compile time grows with the distinct sizes.
        items = [(flat[i][1], lay) for i, lay in local.items()]
        thresholds = dict(zip(local, _grouped_thresholds(items, quantile, eps), strict=True))

        def leaf(x: jax.Array, lay: ResolvedLayout) -> jax.Array:
            def fn(v: jax.Array) -> jax.Array:
                return _soft_threshold(v, quantile, eps, lay)

            return sharding.apply_matrix_fn(fn, x, strategy)

        # Leaves on a mesh: same-shape leaves stacked, each stack thresholded
        # under the sharding strategy.
        rest = [None if i in local else x for i, (_, x) in enumerate(flat)]
        rest = treedef.flatten_up_to(
            layouts.map_matrix_groups(leaf, layout, treedef.unflatten(rest))
        )
        out = [
            _apply_threshold(x, thresholds[i]) if i in local else rest[i]
            for i, (_, x) in enumerate(flat)
        ]
        return treedef.unflatten(out), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
