"""Structured sparsity: the (weighted) group sparse envelope function and its prox.

Refael, Arbel, Huleihel, "Learning k-Level Structured Sparse Neural Networks
Using Group Envelope Regularization" (WGSEF, arXiv 2212.12921), building on
the sparse envelope function of Beck & Refael and the k-support norm of
Argyriou, Foygel & Srebro (arXiv 1204.5043).

**Sparse envelope.** ``S_k = (½‖·‖² + δ_{‖·‖₀ ≤ k})**``, the convex envelope of
the squared norm restricted to k-sparse vectors. It equals half the squared
k-support norm, ``S_k(x) = ½ (‖x‖^{sp}_k)²``, and has the variational form

.. math:: S_k(x) = ½ \\min_{θ ∈ Θ_k} \\sum_i x_i^2 / θ_i,\\qquad
   Θ_k = \\{θ : 0 < θ_i ≤ 1,\\ \\textstyle\\sum_i θ_i ≤ k\\},

so ``S_k(x) = ½‖x‖²`` when ``x`` has at most ``k`` non-zeros and grows faster
than that otherwise: it prefers ``k``-sparse points.

**Groups.** With groups ``G_1..G_M`` (the neurons, output channels or filters
of a layer: every weight feeding one output unit; or the input units, or the
attention heads) and group norms ``u_j = ‖x_{G_j}‖``, the WGSEF is

.. math:: Ψ_{k,d}(x) = S_k(\\sqrt{d} ⊙ u),

with positive group weights ``d`` (``d = 1``: the unweighted group SEF; a
group's penalty is ``½ d_j ‖x_{G_j}‖²`` while at most ``k`` groups are
active, so a heavier group — more weights, more FLOPs — costs more and is the
first to be switched off). It is ``(½ Σ_j d_j‖x_{G_j}‖² + δ_{≤k \\text{ groups}})**``.

**Prox** (:func:`sparse_envelope_prox`, per matrix): ``prox_{λΨ}(v)`` keeps each
group's direction and rescales its norm, ``x_{G_j} = (θ_j/(θ_j + λ d_j))
v_{G_j}``, where ``θ`` solves the water-filling problem

.. math:: θ_j = \\mathrm{clip}(\\sqrt{d_j}\\,u_j τ − λ d_j, 0, 1),
   \\qquad \\textstyle\\sum_j θ_j = k

(``τ = ∞``, i.e. ``θ_j = 1``, when at most ``k`` groups are non-zero). ``τ``
is found exactly: ``Σθ(τ)`` is piecewise linear with ``2M`` breakpoints,
sorted once (``O(M log M)`` per matrix). Groups with ``θ_j = 0`` become
exactly zero. For ``d = 1`` this is Argyriou et al.'s Algorithm 1 for the
prox of ``(1/2β)(‖·‖^{sp}_k)²`` with ``β = 1/λ`` (top groups shrunk by
``1/(1+λ)``, a middle band moved towards zero by a common amount, the rest
zeroed).

**Training** (proximal gradient, the paper's §4): after any base step ``u``,
``W ← prox_{ημΨ}(W + u)``, emitted as ``u' = prox(W + u) − W`` (DESIGN §3) by
:func:`group_sparse_envelope_prox`, with ``η`` the learning rate and ``μ`` the
regularization weight (:func:`optx.wgsef` multiplies them). ``k`` is the
target number of active groups per matrix (per layer of a scanned stack).

The weighting: §3 of the paper could not be consulted for this
implementation (no copy of the text in the project's sources); the weights
enter the envelope as above, the form that keeps the prox exact and reduces
to the published unweighted GSEF at ``d = 1`` (checked against a brute-force
minimization in the tests). No official code exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optx._src import base, hyperparams, layouts, sharding
from optx._src.layouts import LayoutSpec, ResolvedLayout

GROUPINGS = ("output", "input", "heads")

KSpec = int | float | Callable[[str, int], int]
WeightSpec = str | Callable[[str, ResolvedLayout, int], Any] | None


# ----------------------------------------------------------------------------
# Vectors: the sparse envelope and its prox
# ----------------------------------------------------------------------------


def _water_fill(c: jax.Array, e: jax.Array, k: int) -> jax.Array:
    """``θ = clip(c τ − e, 0, 1)`` with ``Σθ = k`` (last axis), or 1 on ``c > 0``.

    ``c, e >= 0``. ``Σ_j clip(c_j τ − e_j, 0, 1)`` is continuous, piecewise
    linear and non-decreasing in ``τ``; its breakpoints are ``e_j/c_j``
    (group j enters) and ``(1 + e_j)/c_j`` (group j saturates). Sorting them
    gives the slope and intercept on every piece by cumulative sums; ``τ`` is
    read off the first piece that reaches ``k``. When at most ``k`` groups
    have ``c_j > 0`` the constraint is inactive (``τ = ∞``).
    """
    pos = c > 0
    safe_c = jnp.where(pos, c, 1.0)
    enter = jnp.where(pos, e / safe_c, jnp.inf)
    leave = jnp.where(pos, (1.0 + e) / safe_c, jnp.inf)
    points = jnp.concatenate([enter, leave], axis=-1)
    d_slope = jnp.concatenate([jnp.where(pos, c, 0.0), jnp.where(pos, -c, 0.0)], axis=-1)
    d_inter = jnp.concatenate([jnp.where(pos, -e, 0.0), jnp.where(pos, 1.0 + e, 0.0)], axis=-1)
    order = jnp.argsort(points, axis=-1)
    points = jnp.take_along_axis(points, order, axis=-1)
    slope = jnp.cumsum(jnp.take_along_axis(d_slope, order, axis=-1), axis=-1)
    inter = jnp.cumsum(jnp.take_along_axis(d_inter, order, axis=-1), axis=-1)
    finite = jnp.isfinite(points)
    value = slope * jnp.where(finite, points, 0.0) + inter  # Σθ at each breakpoint
    hit = finite & (value >= k)
    any_hit = jnp.any(hit, axis=-1, keepdims=True)
    j = jnp.argmax(hit, axis=-1, keepdims=True)
    prev = jnp.maximum(j - 1, 0)
    s_prev = jnp.take_along_axis(slope, prev, axis=-1)
    i_prev = jnp.take_along_axis(inter, prev, axis=-1)
    at_j = jnp.take_along_axis(jnp.where(finite, points, 0.0), j, axis=-1)
    tau = jnp.where(s_prev > 0, (k - i_prev) / jnp.where(s_prev > 0, s_prev, 1.0), at_j)
    theta = jnp.clip(c * tau - e, 0.0, 1.0)
    return jnp.where(any_hit, theta, pos.astype(c.dtype))


def _check_k(k: Any, name: str = "k") -> None:
    if callable(k):
        return
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be an int, a fraction in (0, 1) or a callable, got {k!r}.")
    if isinstance(k, (int, np.integer)):
        base.check_positive_int(name, int(k))
    elif not 0.0 < float(k) < 1.0:
        raise ValueError(
            f"`{name}` must be a positive int (groups kept) or a fraction in (0, 1), got {k!r}."
        )


def sparse_envelope(x: jax.Array, k: int, *, axis: int = -1) -> jax.Array:
    """``S_k(x) = ½ (‖x‖^{sp}_k)²`` along ``axis`` (half the squared k-support norm).

    Equals ``½‖x‖²`` when ``x`` has at most ``k`` non-zeros. Computed from the
    variational form (``θ_i = min(1, |x_i| τ)``, ``Σθ = k``) in
    ``promote(x.dtype, float32)``.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> float(optx.sparsity.sparse_envelope(jnp.array([3.0, 0.0, 4.0]), 2))
      12.5
      >>> float(optx.sparsity.sparse_envelope(jnp.array([1.0, 1.0]), 1))  # ½ (1 + 1)²
      2.0
    """
    k = base.check_positive_int("k", k)
    z = jnp.abs(jnp.moveaxis(x, axis, -1)).astype(base.compute_dtype(x.dtype))
    theta = _water_fill(z, jnp.zeros_like(z), k)
    terms = jnp.where(theta > 0, z * z / jnp.where(theta > 0, theta, 1.0), 0.0)
    return 0.5 * jnp.sum(terms, axis=-1)


def sparse_envelope_prox(
    v: jax.Array,
    k: int,
    strength: Any,
    *,
    weights: Any = None,
    axis: int = -1,
) -> jax.Array:
    """``argmin_x ½‖x − v‖² + strength · S_k(√weights ⊙ |x|)`` along ``axis``.

    The prox of the (weighted) sparse envelope on vectors; applied to group
    norms it is the WGSEF prox (:func:`group_sparse_envelope_prox`). Exact (a
    sort of the ``2n`` breakpoints, no iteration); ``strength = 0`` is the
    identity. Computed in ``promote(v.dtype, float32)``, returned in
    ``v.dtype``.

    Args:
      v: the point (any shape; the envelope acts along ``axis``).
      k: the sparsity level (``1 <= k``; ``k >= n`` gives ``v/(1 + λ d)``).
      strength: ``λ >= 0`` (may be traced).
      weights: positive per-entry weights ``d`` broadcastable to ``v``'s
        ``axis`` (None: 1).
      axis: the axis holding the vector.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> optx.sparsity.sparse_envelope_prox(jnp.array([3.0, 1.0, 0.5]), 1, 1.0)
      Array([1.5, 0. , 0. ], dtype=float32)
    """
    k = base.check_positive_int("k", k)
    base.check_nonnegative("strength", strength)
    cdt = base.compute_dtype(v.dtype)
    x = jnp.moveaxis(v, axis, -1).astype(cdt)
    a = jnp.abs(x)
    d = jnp.ones((), cdt) if weights is None else jnp.asarray(weights, cdt)
    lam = jnp.asarray(strength, cdt)
    theta = _water_fill(jnp.sqrt(d) * a, jnp.broadcast_to(lam * d, a.shape), k)
    den = theta + lam * d
    factor = jnp.where(den > 0, theta / jnp.where(den > 0, den, 1.0), 1.0)
    return jnp.moveaxis(x * factor, -1, axis).astype(v.dtype)


# ----------------------------------------------------------------------------
# Groups of a layout
# ----------------------------------------------------------------------------


def group_axes(lay: ResolvedLayout, groups: str) -> tuple[int, ...]:
    """The axes that index the groups of a leaf with layout ``lay``.

    ``'output'``: the output axes (one group per neuron / output channel /
    filter: all weights feeding it); ``'input'``: the reduction axes (one
    group per input feature / channel); ``'heads'``: the first output axis
    (one group per head of a ``(d, heads, head_dim)`` projection; the same
    as ``'output'`` for single-output-axis layouts).
    """
    base.check_choice("groups", groups, GROUPINGS)
    if groups == "input":
        return lay.reduction_axes
    if groups == "heads":
        return lay.output_axes[:1]
    return lay.output_axes


def _group_permutation(lay: ResolvedLayout, groups: str) -> tuple[tuple[int, ...], int, int]:
    """(permutation to (batch, group axes, rest), number of groups M, group size R)."""
    gax = group_axes(lay, groups)
    rest = tuple(a for a in range(len(lay.shape)) if a not in lay.batch_axes and a not in gax)
    m = math.prod(lay.shape[a] for a in gax)
    r = math.prod(lay.shape[a] for a in rest)
    return lay.batch_axes + gax + rest, m, r


def to_groups(x: jax.Array, lay: ResolvedLayout, groups: str) -> jax.Array:
    """``x`` viewed as ``(batch, M groups, R weights per group)``."""
    perm, m, r = _group_permutation(lay, groups)
    return jnp.reshape(jnp.transpose(x, perm), (lay.batch_size, m, r))


def from_groups(y: jax.Array, lay: ResolvedLayout, groups: str) -> jax.Array:
    """Inverse of :func:`to_groups`."""
    perm, _, _ = _group_permutation(lay, groups)
    y = jnp.reshape(y, tuple(lay.shape[a] for a in perm))
    return jnp.transpose(y, np.argsort(perm))


def _resolve_k(k: KSpec, path: str, m: int) -> int:
    if callable(k):
        kk = k(path, m)
        base.check_positive_int(f"k (for leaf '{path}')", kk)
    elif isinstance(k, (int, np.integer)):
        kk = int(k)
    else:
        kk = max(1, math.ceil(float(k) * m))
    if kk > m:
        raise ValueError(
            f"k={kk} exceeds the number of groups ({m}) of leaf '{path}': a layer cannot keep "
            "more groups than it has. Lower k, pass a fraction in (0, 1), or a callable "
            "(path, num_groups) -> k."
        )
    return int(kk)


def _resolve_weights(
    weights: WeightSpec, path: str, lay: ResolvedLayout, groups: str, dtype: Any
) -> jax.Array:
    _, m, r = _group_permutation(lay, groups)
    if weights is None:
        return jnp.ones((m,), dtype)
    if weights == "size":
        return jnp.full((m,), float(r), dtype)
    if isinstance(weights, str):
        raise ValueError(f"`group_weights` must be None, 'size' or a callable, got {weights!r}.")
    w = np.broadcast_to(np.asarray(weights(path, lay, m), np.float64), (m,))
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"group weights of leaf '{path}' must be finite and > 0, got {w}.")
    return jnp.asarray(w, dtype)


def _check_groups(params: Any, k: KSpec, groups: str, layout: LayoutSpec) -> None:
    """Raises for a k larger than a layer's number of groups (at init)."""
    resolve = layouts.resolved_layout_fn(layout)
    for path, leaf in base.flatten_with_paths(params)[0]:
        lay = resolve(path, leaf)
        if lay is not None:
            _resolve_k(k, path, _group_permutation(lay, groups)[1])


def group_norms(
    params: Any, *, groups: str = "output", layout: LayoutSpec = None
) -> dict[str, jax.Array]:
    """Per matrix leaf, the group norms ``(batch, M)`` (f32 or wider), by path."""
    base.check_choice("groups", groups, GROUPINGS)
    resolve = layouts.resolved_layout_fn(layout)
    out = {}
    for path, leaf in base.flatten_with_paths(params)[0]:
        lay = resolve(path, leaf)
        if lay is not None:
            x = to_groups(jnp.asarray(leaf).astype(base.compute_dtype(leaf.dtype)), lay, groups)
            out[path] = jnp.sqrt(jnp.sum(jnp.real(x * jnp.conj(x)), axis=-1))
    return out


def group_sparsity(
    params: Any, *, groups: str = "output", layout: LayoutSpec = None, tol: float = 0.0
) -> dict[str, tuple[tuple[int, ...], int]]:
    """Per matrix leaf: (active groups of each matrix, groups per matrix).

    A group is active when its norm exceeds ``tol``.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> w = {'dense': {'kernel': jnp.array([[1.0, 0.0, 2.0], [1.0, 0.0, 0.0]])}}
      >>> optx.sparsity.group_sparsity(w)
      {'dense/kernel': ((2,), 3)}
    """
    return {
        path: (tuple(int(a) for a in np.asarray(jnp.sum(n > tol, axis=-1))), int(n.shape[-1]))
        for path, n in group_norms(params, groups=groups, layout=layout).items()
    }


def group_sparse_envelope(
    params: Any,
    k: KSpec,
    *,
    groups: str = "output",
    group_weights: WeightSpec = None,
    layout: LayoutSpec = None,
) -> jax.Array:
    """The regularizer ``Σ_matrices Ψ_{k,d}(W)`` (for logging or a penalty check)."""
    resolve = layouts.resolved_layout_fn(layout)
    total = jnp.zeros((), jnp.float32)
    for path, leaf in base.flatten_with_paths(params)[0]:
        lay = resolve(path, leaf)
        if lay is None:
            continue
        cdt = base.compute_dtype(leaf.dtype)
        _, m, _ = _group_permutation(lay, groups)
        kk = _resolve_k(k, path, m)
        d = _resolve_weights(group_weights, path, lay, groups, cdt)
        norms = jnp.linalg.norm(to_groups(leaf.astype(cdt), lay, groups), axis=-1)
        total = total + jnp.sum(sparse_envelope(jnp.sqrt(d) * norms, kk))
    return total


# ----------------------------------------------------------------------------
# The post-step transform
# ----------------------------------------------------------------------------


class GroupSparseEnvelopeState(NamedTuple):
    """State of :func:`group_sparse_envelope_prox`: an int32 step counter (schedules)."""

    count: jax.Array


@hyperparams.validated()
def group_sparse_envelope_prox(
    strength: base.ScalarOrSchedule,
    k: KSpec,
    *,
    groups: str = "output",
    group_weights: WeightSpec = None,
    layout: LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    """The WGSEF proximal step after any base step: ``u' = prox_{λΨ}(W + u) − W``.

    For every leaf with a layout, ``W + u`` is split into groups
    (:func:`group_axes`) per matrix (per layer of a stacked leaf) and each
    group is rescaled by ``θ_j/(θ_j + λ d_j)`` (module docstring), so groups
    outside the kept set become exactly zero. Leaves without a layout pass
    through. Chain it after an optimizer whose updates already include the
    learning rate, with ``strength = η·μ`` (:func:`optx.wgsef` does this).

    Args:
      strength: ``λ`` per step (scalar or schedule of the step count), usually
        the learning rate times the regularization weight μ.
      k: target active groups per matrix: an int, a fraction in (0, 1) of the
        matrix's groups (rounded up), or ``(path, num_groups) -> int``.
      groups: ``'output'`` (neurons, output channels, filters), ``'input'``
        or ``'heads'`` (:func:`group_axes`).
      group_weights: ``d``: None (all 1, the unweighted GSEF), ``'size'``
        (the number of weights in the group) or ``(path, layout, M) -> (M,)``.
      layout: a :data:`~optx.LayoutSpec` (default: the default router's, so
        hidden kernels and conv filters are grouped, heads and embeddings are
        not).

    Raises:
      ValueError: at ``init`` when ``k`` exceeds a matrix's number of groups;
        at ``update`` without ``params``.

    References:
      Refael, Arbel, Huleihel, "Learning k-Level Structured Sparse Neural
      Networks Using Group Envelope Regularization", arXiv 2212.12921;
      Argyriou, Foygel, Srebro, "Sparse Prediction with the k-Support Norm",
      arXiv 1204.5043.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> w = {'dense': {'kernel': jnp.array([[3.0, 1.0, 0.2], [4.0, 1.0, 0.1]])}}
      >>> tx = optx.sparsity.group_sparse_envelope_prox(0.5, k=1)
      >>> u, _ = tx.update(jax.tree.map(jnp.zeros_like, w), tx.init(w), w)
      >>> optx.sparsity.group_sparsity(optax.apply_updates(w, u))
      {'dense/kernel': ((1,), 3)}
    """
    _check_k(k)
    base.check_choice("groups", groups, GROUPINGS)
    if not callable(strength):
        base.check_nonnegative("strength", strength)
    if isinstance(group_weights, str) and group_weights != "size":
        raise ValueError(
            f"`group_weights` must be None, 'size' or a callable, got {group_weights!r}."
        )
    resolve = layouts.resolved_layout_fn(layout)

    def init_fn(params: base.Params) -> GroupSparseEnvelopeState:
        base.check_real_params(params, "optx.sparsity.group_sparse_envelope_prox")
        _check_groups(params, k, groups, layout)
        return GroupSparseEnvelopeState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: base.Updates,
        state: GroupSparseEnvelopeState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, GroupSparseEnvelopeState]:
        del extra
        if params is None:
            raise ValueError(
                "The WGSEF prox emits prox(W + u) - W and needs the parameters: call "
                "update(updates, state, params)."
            )
        lam = strength(state.count) if callable(strength) else strength
        new = _prox_tree(updates, params, lam, k, groups, group_weights, resolve)
        return new, GroupSparseEnvelopeState(optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _prox_tree(
    updates: Any,
    params: Any,
    lam: Any,
    k: KSpec,
    groups: str,
    group_weights: WeightSpec,
    resolve: Callable[[str, Any], ResolvedLayout | None],
) -> Any:
    """``prox(W + u) − W`` for every leaf with a layout; other leaves pass through.

    The group norms of every matrix are computed leaf by leaf; the water-filling
    (a sort per matrix) runs once per distinct ``(M, k, dtype)`` on the rows of
    all leaves that share it, so the compiled program grows with the number of
    distinct group counts, not of leaves (compile time). Every row is solved
    independently, so the numbers are those of a per-leaf prox. Leaves carrying
    an Explicit sharding keep their own prox (under ``auto_axes``).
    """
    flat_u, treedef = jax.tree_util.tree_flatten_with_path(updates, is_leaf=base.is_leaf_or_none)
    flat_w = treedef.flatten_up_to(params)
    out: list[Any] = [u for _, u in flat_u]
    buckets: dict[tuple[Any, ...], list[tuple[int, Any, jax.Array, jax.Array, jax.Array]]] = {}
    for i, ((path, u), w) in enumerate(zip(flat_u, flat_w, strict=True)):
        if u is None:
            continue
        name = base.path_to_str(path)
        lay = resolve(name, u)
        if lay is None:
            continue
        _, m, _ = _group_permutation(lay, groups)
        kk = _resolve_k(k, name, m)
        cdt = base.compute_dtype(u.dtype, w.dtype)
        w_c = w.astype(cdt)
        x = w_c + u.astype(cdt)
        if sharding.spec_of(x) is not None:
            out[i] = _sharded_leaf_prox(x, w_c, u.dtype, lam, kk, name, lay, groups, group_weights)
            continue
        g = to_groups(x, lay, groups)
        norms = _group_norms(g)
        d = jnp.broadcast_to(_resolve_weights(group_weights, name, lay, groups, cdt), norms.shape)
        buckets.setdefault((m, kk, jnp.dtype(cdt)), []).append((i, lay, g, norms, d))
    for (_, kk, cdt), members in buckets.items():
        norms = jnp.concatenate([mb[3] for mb in members])
        d = jnp.concatenate([mb[4] for mb in members])
        scaled = sparse_envelope_prox(norms, kk, jnp.asarray(lam, cdt), weights=d)
        start = 0
        for i, lay, g, n, _ in members:
            s = scaled[start : start + n.shape[0]]
            start += n.shape[0]
            projected = _rescale_groups(g, n, s, lay, groups)
            out[i] = (projected - flat_w[i].astype(cdt)).astype(out[i].dtype)
    return jax.tree_util.tree_unflatten(treedef, out)


def _group_norms(g: jax.Array) -> jax.Array:
    """Euclidean norm of each group (the last axis of :func:`to_groups`)."""
    return jnp.sqrt(jnp.sum(g * g, axis=-1))


def _rescale_groups(
    g: jax.Array, norms: jax.Array, scaled: jax.Array, lay: ResolvedLayout, groups: str
) -> jax.Array:
    """Groups rescaled from norm ``norms`` to ``scaled`` (zero groups stay zero),
    back in the leaf's layout."""
    factor = jnp.where(norms > 0, scaled / jnp.where(norms > 0, norms, 1.0), 0.0)
    return from_groups(g * factor[..., None], lay, groups)


def _sharded_leaf_prox(
    x: jax.Array,
    w_c: jax.Array,
    dtype: Any,
    lam: Any,
    kk: int,
    name: str,
    lay: ResolvedLayout,
    groups: str,
    group_weights: WeightSpec,
) -> jax.Array:
    """The prox of one leaf with an Explicit sharding, under ``auto_axes``."""
    cdt = x.dtype

    def prox(x: jax.Array) -> jax.Array:
        # Weights are built here: under an Explicit mesh this runs inside
        # auto_axes, where arrays created outside would not match.
        d = _resolve_weights(group_weights, name, lay, groups, cdt)
        g = to_groups(x, lay, groups)
        norms = _group_norms(g)
        scaled = sparse_envelope_prox(norms, kk, jnp.asarray(lam, cdt), weights=d)
        return _rescale_groups(g, norms, scaled, lay, groups)

    return (sharding.apply_matrix_fn(prox, x) - w_c).astype(dtype)
